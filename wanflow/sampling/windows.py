"""Sliding windows over latent frames: a long clip denoised as overlapping windows, then blended.

DiffSynth-Studio's ``sliding_window_size`` / ``sliding_window_stride``, both counted in latent
frames (81 video frames are 21 latent frames). Windows start every ``stride`` frames from 0, the
last one cut at the clip's end; a window is not run once the one before it reached the end.
Overlaps blend with linear ramps over ``size − stride`` frames: weight (i + ½)/(size − stride)
rising into a window and falling out of it, each frame divided by the sum of its weights.

Each window is a separate model call on its frames alone, so the DiT's RoPE restarts at frame 0
in every window, as in DiffSynth: no window sees positions beyond the clip lengths the model was
trained on. A window covering the whole clip is the full pass itself, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from wanflow.sampling.guidance import SettingProblem, key_name, refuse
from wanflow.sampling.state import ModelFn

#: (x of the window (B, C, n, H, W), t, the frames of the clip it covers) → its velocity (B, C, n, H, W).
#: The slice lets the function cut the per-frame parts of the model call (extra channels, per-token
#: timesteps, the DiT extras' frames) to match.
WindowFn = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]

#: Video frames per latent frame after the first (both Wan VAEs): latent = (frames − 1) / 4 + 1.
LATENT_FRAME_STRIDE = 4
SIZE_KEY = "sampler.sliding_window_size"
STRIDE_KEY = "sampler.sliding_window_stride"


def window_spans(frames: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) of every window over ``frames`` latent frames, in DiffSynth's order and rule."""
    spans: list[tuple[int, int]] = []
    for start in range(0, frames, stride):
        if spans and spans[-1][1] >= frames:  # the previous window already reached the end
            break
        spans.append((start, min(start + size, frames)))
    return spans


def window_ramp(start: int, stop: int, frames: int, border: int) -> torch.Tensor:
    """Blend weights (stop − start,) fp32: ramps of ``border`` frames on each inner edge."""
    weights = torch.ones(stop - start)
    if border > 0:
        rise = (torch.arange(border, dtype=torch.float32) + 0.5) / border
        if start > 0:
            weights[:border] = rise
        if stop < frames:
            weights[-border:] = rise.flip(0)
    return weights


def blend_weights(frames: int, size: int, stride: int) -> list[tuple[slice, torch.Tensor]]:
    """Every window's frames and normalised weights; per frame, the weights sum to 1."""
    spans = window_spans(frames, size, stride)
    ramps = [window_ramp(a, b, frames, size - stride) for a, b in spans]
    total = torch.zeros(frames)
    for (a, b), ramp in zip(spans, ramps):
        total[a:b] += ramp
    return [(slice(a, b), ramp / total[a:b]) for (a, b), ramp in zip(spans, ramps)]


def windowed_model(window_fn: WindowFn, size: int, stride: int) -> ModelFn:
    """A model function that runs ``window_fn`` on overlapping windows and blends them (fp32)."""
    refuse(check_windows(size, stride, None))

    def windowed(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        spans = window_spans(frames, size, stride)
        if len(spans) == 1:  # one window covers the clip: the full pass, nothing to blend
            return window_fn(x, t, slice(0, frames))
        total: torch.Tensor | None = None
        weight = torch.zeros(frames, device=x.device)
        for a, b in spans:
            ramp = window_ramp(a, b, frames, size - stride).to(x.device)
            out = window_fn(x[:, :, a:b], t, slice(a, b)).float()  # (B, C, b − a, H, W)
            if total is None:
                total = out.new_zeros(*out.shape[:2], frames, *out.shape[3:])
            total[:, :, a:b] += out * ramp.view(1, 1, -1, 1, 1)
            weight[a:b] += ramp
        return total / weight.view(1, 1, -1, 1, 1)

    return windowed


def latent_frames(video_frames: int) -> int:
    """Latent frames of a ``4n + 1``-frame video (the first frame alone, then groups of 4)."""
    return (video_frames - 1) // LATENT_FRAME_STRIDE + 1


def check_windows(size: int | None, stride: int | None,
                  video_frames: int | None) -> list[SettingProblem]:
    """Both or neither set; integers ≥ 1; no gaps (stride ≤ size); no window beyond the clip (pure).

    ``video_frames`` None skips the clip check (the frames are known only with the recipe).
    """
    if size is None and stride is None:
        return []
    if size is None or stride is None:
        unset, other = (SIZE_KEY, STRIDE_KEY) if size is None else (STRIDE_KEY, SIZE_KEY)
        return [SettingProblem(unset, None, f"sliding windows need both settings: set it too (in latent "
                               f"frames), or remove {key_name(other)}")]
    problems = [SettingProblem(key, value, "must be an integer ≥ 1, in latent frames (81 video frames "
                               "are 21 latent frames)")
                for key, value in ((SIZE_KEY, size), (STRIDE_KEY, stride)) if not _positive(value)]
    if problems:
        return problems
    if stride > size:
        problems.append(SettingProblem(STRIDE_KEY, stride, f"larger than the window ({size}) leaves "
                                       f"frames no window covers: use at most {size} (less overlaps "
                                       f"and blends the windows)"))
    if video_frames is not None and size > latent_frames(video_frames):
        n = latent_frames(video_frames)
        problems.append(SettingProblem(SIZE_KEY, size, f"the clip has {n} latent frames ([video].frames "
                                       f"= {video_frames}), so one window would be the whole clip: use "
                                       f"at most {n}, or remove the sliding window settings"))
    return problems


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
