"""An audio track muxed into a written video: the input recording under the frames it drove.

Any family whose video follows a recording (speech-to-video) saves the frames as usual and then
calls ``add_audio_track``: ffmpeg (imageio-ffmpeg's binary) copies the video stream as it is,
encodes the file's first audio track as AAC and stops at the shorter of the two, so the mp4 plays
the recording in sync from its first frame. The container's metadata (the run's ``comment``) is
kept, and the bitexact flags leave no version-bearing tags, so the bytes depend only on the video
and the recording.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from wanflow.errors import ModelInputError

#: AAC at this bit rate: transparent for speech, small beside the video.
AUDIO_BITRATE = "192k"
#: The encoder settings that make the muxed file a function of its inputs alone.
BITEXACT = ("-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact")


def add_audio_track(video: str | os.PathLike, audio: str | os.PathLike) -> None:
    """Rewrite ``video`` (an mp4) with the first audio track of ``audio`` under it, cut to the video."""
    import imageio_ffmpeg

    video, audio = Path(video), Path(audio)
    tmp = video.with_name(f".{video.stem}.{os.getpid()}.audio{video.suffix}")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-i", str(video), "-i", str(audio),
           "-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "0", "-c:v", "copy", "-c:a", "aac",
           "-b:a", AUDIO_BITRATE, "-shortest", "-movflags", "+faststart", *BITEXACT, str(tmp)]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, errors="replace", timeout=600)
        if done.returncode != 0:
            raise ModelInputError(f"{audio}: ffmpeg could not add it as the audio track of {video.name} "
                                  f"({done.stderr.strip()[-300:]}); use a wav, mp3, m4a or flac recording")
        os.replace(tmp, video)
    finally:
        tmp.unlink(missing_ok=True)

