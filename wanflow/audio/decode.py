"""Decode any audio file (wav, mp3, m4a, flac, the audio track of a video) to mono float32.

The official speech-to-video code reads audio with ``librosa.load(path, sr=16000)``: the channels
averaged, then resampled with soxr at its "HQ" quality. wanflow asks the ffmpeg binary that
imageio-ffmpeg ships for the same thing: the first audio track, downmixed to mono (for stereo
exactly the mean of the two channels), resampled by soxr at 20-bit precision (soxr's HQ) where the
binary has it, as 32-bit float PCM on a pipe. No torch here: validation uses the same command.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wanflow.audio.errors import (
    EmptyAudioError,
    SilentAudioError,
    UndecodableAudioError,
)
from wanflow.file_kinds import describe_file
from wanflow.errors import display_path

#: Loudest sample (full scale 1.0) below which a recording counts as silence: -80 dBFS, three
#: steps of 16-bit audio, well under any microphone's noise floor and any speech.
SILENCE_PEAK = 1e-4
FFMPEG_TIMEOUT_S = 600
FIX = "use a wav, mp3, m4a or flac recording, or a video with an audio track"


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """A mono recording: float32 samples in [-1, 1] at ``sample_rate`` per second."""

    samples: np.ndarray  # (N,) float32
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Seconds of audio (samples / rate)."""
        return len(self.samples) / self.sample_rate


def decode_audio(path: str | Path, sample_rate: int) -> DecodedAudio:
    """The file's first audio track as mono float32 at ``sample_rate``; refuses empty or silent audio."""
    path = Path(path)
    if sample_rate < 1:
        raise ValueError(f"sample_rate = {sample_rate}: must be a positive number of samples per second")
    if not path.is_file():
        raise UndecodableAudioError(f"{display_path(path)}: no such audio file; check the path")
    cmd = ffmpeg_command(path, sample_rate) + ["-f", "f32le", "-"]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UndecodableAudioError(undecodable(path, f"ffmpeg could not read it: {exc}")) from None
    if done.returncode != 0:
        raise UndecodableAudioError(undecodable(path, ffmpeg_complaint(done.stderr.decode(errors="replace"))))
    samples = np.frombuffer(done.stdout, dtype="<f4").astype(np.float32)  # a writable copy
    if samples.size == 0:
        raise EmptyAudioError(empty(path))
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK:
        raise SilentAudioError(silent(path, peak))
    return DecodedAudio(samples, sample_rate)


def ffmpeg_command(path: Path, sample_rate: int, then: str = "", verbosity: str = "error") -> list[str]:
    """ffmpeg reading ``path``'s first audio track as mono float at ``sample_rate``, then the
    filters ``then`` (no output named yet). Each log line carries its level (``[error]``)."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    filters = resample_filter(exe, sample_rate) + (f",{then}" if then else "")
    return [exe, "-v", f"level+{verbosity}", "-nostdin", "-nostats", "-hide_banner", "-i", str(path),
            "-map", "0:a:0", "-af", filters]


def resample_filter(exe: str, sample_rate: int) -> str:
    """ffmpeg's ``aresample`` to mono float at ``sample_rate``.

    ``rematrix_maxval=1`` normalises the downmix so that stereo becomes (left + right) / 2, as
    librosa's mean; without it ffmpeg's float downmix weighs each channel by 1/sqrt(2).
    """
    soxr = ":resampler=soxr:precision=20" if _has_soxr(exe) else ""
    return f"aresample=osr={sample_rate}:ochl=mono:rematrix_maxval=1:osf=flt{soxr}"


@functools.lru_cache(maxsize=4)
def _has_soxr(exe: str) -> bool:
    """Whether this ffmpeg was built with libsoxr (imageio-ffmpeg's builds are)."""
    try:
        done = subprocess.run([exe, "-hide_banner", "-buildconf"], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--enable-libsoxr" in done.stdout


def ffmpeg_complaint(stderr: str) -> str:
    """ffmpeg's first error line, without its ``[demuxer @ 0x…] [error]`` prefixes."""
    errors = [line for line in stderr.splitlines() if re.search(r"\[(error|fatal|panic)\]", line)]
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in errors or stderr.splitlines()]
    lines = [line for line in lines if line]
    if any("matches no streams" in line for line in lines):
        return "it holds no audio track"
    return (lines[0] if lines else "ffmpeg failed")[:200]


# ----------------------------------------------------------------------------- reasons
# One wording per cause, shared by decoding (which raises) and validation (which collects).


def undecodable_reason(path: Path, complaint: str) -> str:
    """Why ffmpeg could not give audio, and what the file looks like instead."""
    if complaint == "it holds no audio track":
        return f"holds no audio track (it looks like {describe_file(path)}); {FIX}"
    return f"not a readable audio file ({complaint}); it looks like {describe_file(path)}; {FIX}"


def empty_reason(path: Path) -> str:
    """The audio track decodes to nothing."""
    return (f"the audio track is empty (0 samples decoded from {describe_file(path)}); "
            "speech-to-video makes a video as long as the audio; use a recording with speech in it")


def silent_reason(peak: float) -> str:
    """Every sample is below ``SILENCE_PEAK``."""
    level = f"{20 * math.log10(peak):.1f} dBFS" if peak > 0 else "-inf dBFS (digital silence)"
    return (f"the audio is silent: its loudest sample is {level}, below the "
            f"{20 * math.log10(SILENCE_PEAK):.0f} dBFS that counts as sound, so there is no speech "
            "for the video to follow; use the recording with the speech in it")


def undecodable(path: Path, complaint: str) -> str:
    """The file, then why ffmpeg could not decode it (for raising)."""
    return f"{display_path(path)}: {undecodable_reason(path, complaint)}"


def empty(path: Path) -> str:
    """The file, then that it holds no samples (for raising)."""
    return f"{display_path(path)}: {empty_reason(path)}"


def silent(path: Path, peak: float) -> str:
    """The file, then that it is silent (for raising)."""
    return f"{display_path(path)}: {silent_reason(peak)}"
