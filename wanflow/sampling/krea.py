"""Krea Realtime's sampler: few-step, block by block, each step denoised then re-noised.

Krea Realtime 14B is Wan2.1-T2V-14B distilled with Self-Forcing (DMD) into a block-causal
autoregressive model. Its authors (``krea-ai/realtime-video``, ``release_server.py``) generate a
video ``frames_per_block`` latent frames at a time. For each block:

1. the clean latents of earlier blocks are cut to ``kv_cache_frames`` context frames (an anchor
   frame, then the most recent ones) and run through the model at t = 0 and RoPE positions
   0..n-1 to fill the self-attention cache (the cache is recomputed, never carried over);
2. the block starts from Gaussian noise at RoPE positions n.. and takes the few steps of
   :func:`step_timesteps`; each step predicts the flow v, takes x0 = x_t − σ·v in float64 and,
   unless it was the last step, noises x0 again with FRESH Gaussian noise to the next step's σ
   (the distilled generator's sampler, not an ODE step); no classifier-free guidance.

The model is reached through :class:`CausalModel` only (``wanflow.models.causal_stream.CausalWan``
is the Wan DiT's). DiffSynth-Studio instead samples the same weights as an ordinary
bidirectional T2V model (:data:`DIFFSYNTH_KREA`): not the regime the model was trained for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import torch
from torch import Tensor

from wanflow.errors import ModelInputError
from wanflow.sampling.noise import check_seed
from wanflow.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    check_steps_and_shift,
    check_strength,
)

#: (block index, the block's clean latents (B, C, f, H, W)): streaming decode, progress.
BlockCallback = Callable[[int, Tensor], None]

#: (clean latents so far (B, C, s, H, W), recent frames kept) -> one latent frame (B, C, 1, H, W)
#: standing for the video just before those recent frames (Krea: VAE-encode that decoded frame).
Reanchor = Callable[[Tensor, int], Tensor]


class CausalModel(Protocol):
    """What the block loop needs of a block-causal model bound to one prompt."""

    def context_cache(self, clean: Tensor) -> Any:
        """A cache from clean frames (B, C, n, H, W) at t = 0, RoPE positions 0..n-1."""
        ...

    def velocity(self, x: Tensor, t: Tensor, cache: Any, start_frame: int) -> Tensor:
        """Flow velocity of noisy frames x (B, C, f, H, W) at per-frame t (B, f), positions start_frame.."""
        ...


@attrs.frozen
class KreaSampling:
    """How Krea's server samples (``GenerateParams`` defaults)."""

    steps: int = 5  # model calls per block (the server default; its authors suggest 4 for speed)
    shift: float = 5.0  # FlowMatchScheduler(shift=5) of the distilled model
    strength: float = 1.0  # < 1: video-to-video, the input noised to the first step's σ
    frames_per_block: int = 3  # latent frames generated per block (num_frame_per_block)
    kv_cache_frames: int = 3  # context frames a block sees, the anchor frame included
    keep_first_frame: bool = False  # False: re-anchor on a recent frame once the video outgrows the cache


@attrs.frozen
class BidirectionalSampling:
    """A full-sequence sampler configuration over the same weights."""

    solver: str
    steps: int
    cfg: float
    shift: float
    frames: int
    height: int
    width: int
    seed: int


#: DiffSynth-Studio's ``krea-realtime-video.py`` example: all 81 frames at once, bidirectional.
DIFFSYNTH_KREA = BidirectionalSampling(solver="euler", steps=6, cfg=1.0, shift=20.0, frames=81,
                                       height=480, width=832, seed=0)


# ----------------------------------------------------------------------------- schedule


def training_grid(shift: float) -> tuple[Tensor, Tensor]:
    """``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)`` at 1000 steps: fp32 σ and
    t = 1000·σ, (1000,) each, from σ = 1 down to the shifted 0.001 (never 0)."""
    grid = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
    sigmas = shift * grid / (1 + (shift - 1) * grid)
    return sigmas, sigmas * NUM_TRAIN_TIMESTEPS


def step_timesteps(steps: int, strength: float = 1.0, shift: float = 5.0) -> Tensor:
    """The per-block step list: ``[t_grid, 0][1000 − linspace(1000·strength, 0, N).long()]``, fp32 (N,).

    N = 5, strength 1, shift 5: 1000, 937.5, 833.3, 625, 0 — five model calls, the last at t = 0.
    """
    check_steps_and_shift(steps, shift)
    check_strength(strength)
    padded = torch.cat([training_grid(shift)[1], torch.zeros(1)])  # (1001,)
    picks = torch.linspace(strength * NUM_TRAIN_TIMESTEPS, 0, steps, dtype=torch.float32).long()
    return padded[NUM_TRAIN_TIMESTEPS - picks]


def sigma_at(t: float, shift: float) -> float:
    """σ of the grid timestep nearest t, as the authors' scheduler looks it up: t = 0 maps to the
    grid's last σ (0.00498 at shift 5), not to 0."""
    sigmas, timesteps = training_grid(shift)
    return float(sigmas[(timesteps.double() - t).abs().argmin()])


def x0_from_velocity(x: Tensor, v: Tensor, sigma: float) -> Tensor:
    """The clean latent x0 = x_t − σ·v of a flow prediction, computed in float64, returned fp32."""
    return (x.double() - sigma * v.double()).float()


def renoised(x0: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """x0 moved back onto the flow path at σ with fresh noise: (1 − σ)·x0 + σ·ε, fp32."""
    return (1.0 - sigma) * x0.float() + sigma * noise.float()


# ----------------------------------------------------------------------------- block loop


def denoise_block(
    model: CausalModel, x: Tensor, timesteps: Tensor, shift: float, cache: Any, start_frame: int,
    draw: Callable[[], Tensor],
) -> Tensor:
    """One block from its noisy start x (B, C, f, H, W) to clean latents: predict x0 at each
    step, re-noise it with ``draw()`` to the next step's σ (Self-Forcing's few-step sampler)."""
    for index, t in enumerate(timesteps.tolist()):
        t_frames = torch.full(x.shape[:1] + x.shape[2:3], t, device=x.device)  # (B, f)
        x0 = x0_from_velocity(x, model.velocity(x, t_frames, cache, start_frame), sigma_at(t, shift))
        if index == len(timesteps) - 1:
            return x0
        x = renoised(x0, draw(), sigma_at(float(timesteps[index + 1]), shift))
    raise ModelInputError("denoise_block: the step list is empty")


def context_frames(
    clean: Tensor, block: int, settings: KreaSampling, reanchor: Reanchor | None,
) -> Tensor:
    """The clean frames block ``block`` sees (B, C, n, H, W): an anchor, then the last
    kv_cache_frames − 1 frames. The anchor is the video's first frame while the cache still
    reaches back to it (or with keep_first_frame), else ``reanchor`` of the history."""
    recent = settings.kv_cache_frames - 1
    later = clean[:, :, 1:]
    later = later[:, :, later.shape[2] - min(recent, later.shape[2]):]
    if settings.keep_first_frame or (block - 1) * settings.frames_per_block < settings.kv_cache_frames:
        anchor = clean[:, :, :1]
    else:
        anchor = reanchor(clean, recent)  # type: ignore[misc]  # checked in sample_blocks
    return torch.cat([anchor.to(clean.dtype), later], dim=2)


def sample_blocks(
    model: CausalModel, shape: Sequence[int], seed: int, settings: KreaSampling = KreaSampling(), *,
    video: Tensor | None = None, reanchor: Reanchor | None = None, device: torch.device | str = "cpu",
    noise_device: torch.device | str = "cpu", callback: BlockCallback | None = None,
) -> Tensor:
    """Clean latents (B, C, F, H, W) fp32, generated block by block as Krea's server does.

    Args:
        shape: (B, C, F, H, W) of the video's latents; F a multiple of frames_per_block.
        seed: seeds the one generator every draw comes from: first the whole video's noise (laid
            out (B, F, C, H, W) as the authors draw it), then (video-to-video) the input's noise,
            then each re-noising, block by block, step by step.
        video: input latents of ``shape`` for video-to-video (settings.strength < 1).
        reanchor: the anchor frame once the video outgrows the cache (see ``Reanchor``); needed
            unless settings.keep_first_frame or the video fits in the cache.
    """
    _check(shape, seed, settings, video, reanchor)
    generator = torch.Generator(device=noise_device).manual_seed(seed)
    batch, channels, frames, height, width = shape
    block_shape = (batch, settings.frames_per_block, channels, height, width)

    def draw(size: Sequence[int] = block_shape) -> Tensor:
        noise = torch.randn(tuple(size), generator=generator, device=noise_device, dtype=torch.float32)
        return noise.movedim(1, 2).to(device)  # (B, C, f, H, W)

    timesteps = step_timesteps(settings.steps, settings.strength, settings.shift)
    start = draw((batch, frames, channels, height, width))
    if video is not None:
        start = renoised(video.to(device), draw((batch, frames, channels, height, width)), float(timesteps[0]) / 1000)
    clean = torch.zeros(tuple(shape), device=device)
    for block in range(frames // settings.frames_per_block):
        first = block * settings.frames_per_block
        cache, position = None, 0
        if block:
            context = context_frames(clean[:, :, :first], block, settings, reanchor)
            cache, position = model.context_cache(context), context.shape[2]
        x = start[:, :, first:first + settings.frames_per_block]
        clean[:, :, first:first + settings.frames_per_block] = denoise_block(
            model, x, timesteps, settings.shift, cache, position, draw)
        if callback is not None:
            callback(block, clean[:, :, first:first + settings.frames_per_block])
    return clean


def _check(shape: Sequence[int], seed: int, settings: KreaSampling, video: Tensor | None,
           reanchor: Reanchor | None) -> None:
    """Refuse a run the block loop cannot finish, before the first model call."""
    check_seed(seed)
    step_timesteps(settings.steps, settings.strength, settings.shift)
    per_block, cached = settings.frames_per_block, settings.kv_cache_frames
    if len(shape) != 5 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ModelInputError(f"latent shape {tuple(shape)}: need (B, C, F, H, W) of positive integers")
    if per_block < 1 or cached < 1 or shape[2] % per_block:
        raise ModelInputError(
            f"Krea sampling: {shape[2]} latent frames in blocks of frames_per_block = {per_block} with "
            f"kv_cache_frames = {cached}: both must be ≥ 1 and the frames a multiple of the block "
            f"(e.g. {max(per_block, 1) * 9} latent frames = 9 blocks)")
    if (settings.strength < 1.0) != (video is not None):
        raise ModelInputError(
            f"Krea sampling: strength = {settings.strength} {'needs' if video is None else 'takes no'} "
            "input video latents (strength < 1 is video-to-video; 1.0 starts from pure noise)")
    if video is not None and tuple(video.shape) != tuple(shape):
        raise ModelInputError(f"input video latents {tuple(video.shape)} must have the output's shape {tuple(shape)}")
    blocks = shape[2] // per_block
    if reanchor is None and not settings.keep_first_frame and (blocks - 2) * per_block >= cached:
        raise ModelInputError(
            f"Krea sampling: {blocks} blocks outgrow a {cached}-frame cache, so later blocks need an anchor "
            "frame re-encoded from the decoded video (reanchor); pass one, or set keep_first_frame")
