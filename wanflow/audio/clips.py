"""How many clips and frames a recording needs: the official speech-to-video arithmetic, pure.

The chain, for a mono waveform of ``samples`` at the encoder's 16 kHz:

1. wav2vec2's convolutional front end gives one feature frame per 20 ms (50 per second):
   ``floor((samples - 400) / 320) + 1`` for the released xlsr-53 encoder;
2. the features are resampled to 30 per second: ``int(frames_50 / 50 * 30)``;
3. a clip of ``frames_per_clip`` video frames at ``fps`` covers ``frames_per_clip * 30 / fps`` of
   them, and the official code makes ``int(frames_30 / that) + 1`` clips (so a recording that fills
   its clips exactly gets one more clip, of silence);
4. video frame ``k`` takes feature ``round(k * 30 / fps)`` (numpy's round half to even), or
   silence where that is past the end of the recording.

No torch and no files: validation and planning ask these questions before any model loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The released wav2vec2-large-xlsr-53 front end: seven strided convolutions over the waveform.
XLSR_KERNELS = (10, 3, 3, 3, 3, 2, 2)
XLSR_STRIDES = (5, 2, 2, 2, 2, 2, 2)
#: The rate wav2vec2 was trained on; its feature extractor refuses any other.
ENCODER_SAMPLE_RATE = 16000
#: Feature frames per second out of the encoder (16000 / 320), and the rate the official code
#: resamples them to before bucketing (its ``video_rate``).
FEATURE_RATE = 50
BUCKET_RATE = 30
#: Official defaults: 16 fps output, 80 frames per clip, the first clip's first 3 frames dropped
#: (they belong to the reference image's latent frame).
S2V_FPS = 16
S2V_FRAMES_PER_CLIP = 80
S2V_FIRST_CLIP_DROP = 3


def receptive_field(kernels: Sequence[int] = XLSR_KERNELS, strides: Sequence[int] = XLSR_STRIDES) -> int:
    """Samples one feature frame sees (400 for xlsr-53): fewer give no frame at all."""
    field, hop = 1, 1
    for kernel, stride in zip(kernels, strides):
        field += (kernel - 1) * hop
        hop *= stride
    return field


def min_samples(kernels: Sequence[int] = XLSR_KERNELS, strides: Sequence[int] = XLSR_STRIDES) -> int:
    """The shortest recording that gives one feature at 30 per second: two encoder frames
    (720 samples, 45 ms, for xlsr-53), since ``int(1 / 50 * 30)`` is 0."""
    frames_50 = next(t for t in range(1, FEATURE_RATE + 1) if bucket_rate_frames(t) >= 1)
    return receptive_field(kernels, strides) + (frames_50 - 1) * math.prod(strides)


def feature_frames(samples: int, kernels: Sequence[int] = XLSR_KERNELS,
                   strides: Sequence[int] = XLSR_STRIDES) -> int:
    """Feature frames the convolutional front end makes from ``samples`` (0 when too short)."""
    length = samples
    for kernel, stride in zip(kernels, strides):
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def bucket_rate_frames(frames_50: int) -> int:
    """Feature frames after resampling to 30 per second (the official ``int(T / 50 * 30)``)."""
    return int(frames_50 / float(FEATURE_RATE) * BUCKET_RATE)


def clip_count(frames_30: int, fps: int = S2V_FPS, frames_per_clip: int = S2V_FRAMES_PER_CLIP) -> int:
    """Clips the official loop makes for ``frames_30`` features (always at least one)."""
    return int(frames_30 / (frames_per_clip * (BUCKET_RATE / fps))) + 1


def frame_feature_indices(frames_30: int, fps: int = S2V_FPS,
                          frames_per_clip: int = S2V_FRAMES_PER_CLIP) -> np.ndarray:
    """The 30-per-second feature each video frame of every clip takes; ``>= frames_30`` means silence.

    Computed as the official code does, so that float rounding agrees too: frame times come from
    ``linspace(0, n / fps, n, endpoint=False)`` and are rounded half to even after scaling by 30.
    """
    total = clip_count(frames_30, fps, frames_per_clip) * frames_per_clip
    times = np.linspace(0.0, total / fps, total, endpoint=False)
    indices = np.round(times * BUCKET_RATE).astype(np.int64)
    padded = int(np.ceil(total / fps * BUCKET_RATE))  # the official padded length bounds the indices
    return np.clip(indices, 0, padded - 1)


@dataclass(frozen=True)
class ClipPlan:
    """What a recording asks of the clip loop: clips, frames per clip, frames in the final video."""

    clips: int
    frames_per_clip: int
    video_frames: int  # clips * frames_per_clip minus the frames the first clip drops
    feature_frames: int  # 30-per-second features the recording gives (the rest is silence)

    @property
    def latent_frames_per_clip(self) -> int:
        """Latent frames the DiT denoises per clip (4 video frames each)."""
        return self.frames_per_clip // 4


def plan_clips(samples: int, fps: int = S2V_FPS, frames_per_clip: int = S2V_FRAMES_PER_CLIP,
               max_clips: int | None = None, first_clip_drop: int = S2V_FIRST_CLIP_DROP) -> ClipPlan:
    """The clips and frames a ``samples``-long 16 kHz recording needs, as the official loop counts them.

    ``max_clips`` caps the count (the official ``num_clip``; it never raises it above what the audio
    needs). ``frames_per_clip`` must be a multiple of 4, as the official command line requires.
    """
    if frames_per_clip < 4 or frames_per_clip % 4:
        raise ValueError(f"frames_per_clip = {frames_per_clip}: must be a positive multiple of 4 (80 is official)")
    frames_30 = bucket_rate_frames(feature_frames(samples))
    clips = clip_count(frames_30, fps, frames_per_clip)
    if max_clips is not None:
        clips = max(1, min(clips, max_clips))
    return ClipPlan(clips, frames_per_clip, clips * frames_per_clip - first_clip_drop, frames_30)
