"""wav2vec2 features to one audio window per video frame, as the official S2V code builds them.

Two steps (official ``linear_interpolation`` and ``get_audio_embed_bucket_fps``):

1. the 50-per-second features are resampled to 30 per second, linearly with the end frames
   aligned (``align_corners=True``), to ``int(T50 / 50 * 30)`` frames;
2. each video frame ``k`` of every clip takes the window of ``2m + 1`` features centred on
   ``round(k * 30 / fps)``, spaced ``int(30 / fps)`` apart and clamped to the recording; a frame
   past the end of the recording gets zeros. Official speech-to-video uses ``m = 0``: one feature
   per frame.

The result is laid out as the DiT takes it, ``(1, layers, (2m+1)·dim, clips·frames_per_clip)``;
clip ``r`` is the slice ``[..., r·B:(r+1)·B]``. The DiT's causal audio encoder then turns every
4 frames into one latent frame's 5 audio tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wanflow.audio.clips import (
    BUCKET_RATE,
    FEATURE_RATE,
    S2V_FPS,
    S2V_FRAMES_PER_CLIP,
    bucket_rate_frames,
    clip_count,
    frame_feature_indices,
)


def to_bucket_rate(states: Tensor) -> Tensor:
    """(L, T50, D) features at 50 per second -> (L, T30, D) at 30 per second (linear, ends aligned)."""
    frames = bucket_rate_frames(states.shape[1])
    if frames < 1:
        raise ValueError(f"{states.shape[1]} feature frames make no frame at {BUCKET_RATE} per second; "
                         f"at least {FEATURE_RATE // BUCKET_RATE + 1} are needed")
    resampled = F.interpolate(states.transpose(1, 2), size=frames, mode="linear", align_corners=True)
    return resampled.transpose(1, 2)  # (L, T30, D)


def frame_buckets(states_30: Tensor, fps: int = S2V_FPS, frames_per_clip: int = S2V_FRAMES_PER_CLIP,
                  window: int = 0) -> Tensor:
    """(L, T30, D) -> (1, L, (2·window+1)·D, clips·frames_per_clip): each video frame's audio window."""
    layers, length, _ = states_30.shape
    centres = torch.from_numpy(frame_feature_indices(length, fps, frames_per_clip))  # (N,)
    stride = int(BUCKET_RATE / fps)
    offsets = torch.arange(-window, window + 1) * stride  # (2m+1,)
    picks = (centres[:, None] + offsets[None, :]).clamp(0, length - 1)  # (N, 2m+1)
    windows = states_30[:, picks.flatten()].reshape(layers, len(centres), -1)  # (L, N, (2m+1)·D)
    windows = torch.where((centres < length)[None, :, None], windows, 0.0)  # silence past the end
    return windows.permute(0, 2, 1).unsqueeze(0)  # (1, L, (2m+1)·D, N)


def audio_buckets(states: Tensor, fps: int = S2V_FPS, frames_per_clip: int = S2V_FRAMES_PER_CLIP,
                  window: int = 0) -> list[Tensor]:
    """Encoder states (L, T50, D) -> one (1, L, (2m+1)·D, frames_per_clip) tensor per clip."""
    buckets = frame_buckets(to_bucket_rate(states), fps, frames_per_clip, window)
    clips = clip_count(bucket_rate_frames(states.shape[1]), fps, frames_per_clip)
    return [buckets[..., r * frames_per_clip:(r + 1) * frames_per_clip] for r in range(clips)]
