"""Speech-to-video's input files, checked at validation so that a bad one is refused before any
model loads, and the clip plan the recording asks for (read at planning, without torch).

- ``[inputs].audio``: decodable, not empty, not silent, long enough for one feature
  (``wanflow.audio.probe.check_audio``, which also refuses a rate wav2vec2 cannot take);
- ``[inputs].num_clip``: at most the clips the recording needs (the release would make fewer
  than asked without saying so);
- ``[inputs].s2v_pose_video``: readable, at least as many frames at ``[video].fps`` as the clips
  made (all the recording needs, or the first ``num_clip``) (the release would pad a short one with blank frames, and the speaker
  would stand still after it ends), and of the reference image's aspect ratio (both are resized
  on the shorter side and centre-cropped, so another aspect would put the pose beside the face);
- ``[inputs].motion_video``: readable, at least 73 frames at ``[video].fps`` (its last 73 are the
  motion context);
- ``[inputs].audio_embeds``: a safetensors file whose ``audio_embeds`` is (1, 25, features, frames)
  with at least the frames of the clips the recording needs (read from its header alone).
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanflow.errors import ModelInputError, display_path
from wanflow.media_size import pixel_size
from wanflow.steps.input_checks import format_value

Where = Callable[[str], str]
MOTION_FRAMES = 73
#: wav2vec2-large's hidden states that the S2V DiT mixes (the input of each of 24 layers, the last).
SPEECH_STATES = 25
#: Aspect ratios further apart than this (relative) put the pose elsewhere than the face.
ASPECT_TOLERANCE = 0.01


def clip_plan(values: Any) -> Any:
    """The recording's ``ClipPlan`` (clips, frames) for this job (``covering_clips``); None when
    the file cannot be probed (validation says why)."""
    from wanflow.audio.probe import probe_audio

    path = Path(values["inputs.audio"])
    if not path.is_file():
        return None
    rate = int(values["inputs.audio_sample_rate"])
    st = path.stat()
    found = probe_audio(path, rate, st.st_size, st.st_mtime_ns)
    if found.complaint or found.samples == 0:
        return None
    return covering_clips(found.samples, rate, int(values["video.fps"]), int(values["video.frames"]) - 1)


def made_clips(needed: int, values: Any) -> int:
    """The clips the loop makes of the ``needed`` ones: all, or the first ``[inputs].num_clip``
    (the release's ``--num_clip``; validation refuses more than the recording needs)."""
    wanted = values["inputs.num_clip"]
    return needed if wanted is None else min(needed, int(wanted))


def covering_clips(samples: int, rate: int, fps: int, frames_per_clip: int) -> Any:
    """The official clip count (``wanflow.audio.plan_clips``), or one more clip where those end
    within the first clip's 3 dropped frames of the recording's end: the video covers the whole
    recording, ``ceil(seconds · fps)`` frames."""
    import math

    from wanflow.audio.clips import S2V_FIRST_CLIP_DROP, ClipPlan, plan_clips

    plan = plan_clips(samples, fps, frames_per_clip)
    if plan.video_frames >= math.ceil(samples * fps / rate):
        return plan
    clips = plan.clips + 1
    return ClipPlan(clips, frames_per_clip, clips * frames_per_clip - S2V_FIRST_CLIP_DROP, plan.feature_frames)


def s2v_input_problems(resolved: Any, where: Where) -> list[str]:
    """Every problem of the audio, pose video and motion video of a speech-to-video job."""
    from wanflow.audio.probe import check_audio

    v = resolved.values
    audio = Path(v["inputs.audio"]) if v.get("inputs.audio") else None
    found = []
    if audio is not None:
        found += [f"{where('inputs.audio')}: {_label('audio', audio)}: {why}"
                  for why in check_audio(audio, int(v["inputs.audio_sample_rate"]))]
    plan = clip_plan(v) if audio is not None and not found else None
    found += _num_clip_problems(v, plan, where)
    pose = v.get("inputs.s2v_pose_video")
    if pose is not None and Path(pose).is_file():
        found += _pose_problems(Path(pose), v, plan, where)
    embeds = v.get("inputs.audio_embeds")
    if embeds is not None and Path(embeds).is_file():
        found += _embeds_problems(Path(embeds), plan, where)
    motion = v.get("inputs.motion_video")
    if motion is not None and Path(motion).is_file():
        count, error = frames_at(Path(motion), v["video.fps"], MOTION_FRAMES)
        found += _short(where, "motion_video", Path(motion), count, error, MOTION_FRAMES, v["video.fps"],
                        "its last 73 frames are the motion context the first clip continues")
    return found


def _num_clip_problems(v: Any, plan: Any, where: Where) -> list[str]:
    """More clips than the recording needs would be clips of silence: the release silently makes
    fewer, so the value is refused rather than not honoured."""
    wanted = v["inputs.num_clip"]
    if wanted is None or plan is None or wanted <= plan.clips:
        return []
    return [(f"{where('inputs.num_clip')}: [inputs].num_clip = {wanted}: the recording needs only {plan.clips} "
             f"clip{'s' * (plan.clips > 1)} of {plan.frames_per_clip} frames; use at most {plan.clips}, or "
             "remove num_clip to make every clip the recording needs")]


def _pose_problems(path: Path, v: Any, plan: Any, where: Where) -> list[str]:
    found = []
    if plan is not None:
        clips = made_clips(plan.clips, v)
        needed = clips * plan.frames_per_clip
        asks = "[inputs].num_clip asks" if clips < plan.clips else "the recording asks"
        count, error = frames_at(path, v["video.fps"], needed)
        found += _short(where, "s2v_pose_video", path, count, error, needed, v["video.fps"],
                        f"{asks} for {clips} clip{'s' * (clips > 1)} of "
                        f"{plan.frames_per_clip} frames, each following its own stretch of the pose video")
    image = Path(v["inputs.image"]) if v.get("inputs.image") else None
    if found or image is None or not image.is_file():
        return found
    mine, theirs = _size(path), _size(image)
    if mine is None or theirs is None:
        return found
    if abs(mine[0] / mine[1] - theirs[0] / theirs[1]) > ASPECT_TOLERANCE * theirs[0] / theirs[1]:
        found.append(f"{where('inputs.s2v_pose_video')}: {_label('s2v_pose_video', path)}: the pose video is "
                     f"{mine[0]}x{mine[1]} pixels and [inputs].image is {theirs[0]}x{theirs[1]}, another aspect "
                     "ratio: both are resized and centre-cropped to [video].width x height, so the pose would "
                     "not sit on the speaker; crop the pose video to the image's aspect ratio")
    return found


def _embeds_problems(path: Path, plan: Any, where: Where) -> list[str]:
    """A safetensors file holding (1, 25, features, frames) buckets, at least the clips' frames."""
    from wanflow.errors import ModelLoadError
    from wanflow.memory.sizes import read_header
    from wanflow.steps.s2v_encode import EMBEDS_TENSOR

    stated = f"{where('inputs.audio_embeds')}: {_label('audio_embeds', path)}"
    try:
        tensors = read_header(path)
    except (ModelLoadError, OSError) as exc:
        return [(f"{stated}: not a safetensors file ({str(exc).split(': ', 1)[-1][:120]}); save the buckets "
                 f"with safetensors as \"{EMBEDS_TENSOR}\"")]
    info = tensors.get(EMBEDS_TENSOR)
    if info is None:
        return [(f"{stated}: holds no tensor \"{EMBEDS_TENSOR}\" (it holds {sorted(tensors)[:4]}); save the "
                 "buckets under that name")]
    shape = info.shape
    if len(shape) != 4 or shape[0] != 1 or shape[1] != SPEECH_STATES:
        return [(f"{stated}: \"{EMBEDS_TENSOR}\" is {list(shape)}; speech-to-video reads (1, {SPEECH_STATES}, "
                 "features, frames): wav2vec2's 25 hidden states, one bucket per video frame")]
    needed = plan.clips * plan.frames_per_clip if plan is not None else 0
    if shape[3] < needed:
        return [(f"{stated}: \"{EMBEDS_TENSOR}\" holds {shape[3]} frames of buckets, fewer than the {needed} of "
                 f"the {plan.clips} clip{'s' * (plan.clips > 1)} of {plan.frames_per_clip} frames the recording "
                 "needs; compute them for the whole recording")]
    return []


def _short(where: Where, name: str, path: Path, count: int, error: str, needed: int, fps: int, why: str) -> list[str]:
    stated = f"{where(f'inputs.{name}')}: {_label(name, path)}"
    if error and count < needed:
        from wanflow.output.media import describe_file

        return [(f"{stated}: not a readable video ({error}); it looks like {describe_file(path)}; "
                 "use an mp4, mov, mkv or webm file")]
    if count < needed:
        return [(f"{stated}: the video has {count} frames at {fps} fps, fewer than the {needed} needed ({why}); "
                 "use a longer video")]
    return []


def _label(name: str, path: Path) -> str:
    return f"[inputs].{name} = {format_value(display_path(path))}"


def _size(path: Path) -> tuple[int, int] | None:
    st = path.stat()
    return pixel_size(path, st.st_size, st.st_mtime_ns)


def frames_at(path: Path, fps: int, wanted: int) -> tuple[int, str]:
    """(frames of the video resampled to ``fps``, up to ``wanted``; ffmpeg's complaint or "")."""
    st = path.stat()
    return _frames_at(path, int(fps), int(wanted), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _frames_at(path: Path, fps: int, wanted: int, size: int, mtime_ns: int) -> tuple[int, str]:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-nostats", "-i", str(path), "-map", "0:v:0",
           "-vf", f"fps={fps}", "-frames:v", str(wanted), "-f", "null", "-", "-progress", "pipe:1"]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, errors="replace", timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"ffmpeg could not read it: {exc}"
    counts = re.findall(r"^frame=(\d+)$", done.stdout, flags=re.MULTILINE)
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    complaint = (lines[0] if lines else "ffmpeg failed")[:200] if done.returncode else ""
    return (int(counts[-1]) if counts else 0), complaint


def read_motion_video(path: Path, width: int, height: int, fps: int) -> Any:
    """The last 73 frames of ``path`` at ``fps`` as (3, 73, H, W) fp32 in [-1, 1]."""
    import torch

    from wanflow.output import load_video, to_model_video

    count, _ = frames_at(path, fps, 10**7)
    if count < MOTION_FRAMES:
        raise ModelInputError(f"{display_path(path)}: [inputs].motion_video has {count} frames at {fps} fps, "
                              f"fewer than the {MOTION_FRAMES} of the motion context; use a longer video")
    frames = load_video(path, count, width, height, fps=fps)[-MOTION_FRAMES:]
    return torch.from_numpy(to_model_video(frames))
