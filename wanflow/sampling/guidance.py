"""Classifier-free guidance as a wrapper around model functions, never inline in a solver."""

from __future__ import annotations

import math

import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.state import ModelFn


def check_cfg(cfg: float) -> None:
    """Refuse a guidance scale that is not a finite number ≥ 0."""
    number = isinstance(cfg, (int, float)) and not isinstance(cfg, bool)
    if not number or not math.isfinite(cfg) or cfg < 0:
        raise ModelInputError(
            f"[sampler].cfg = {cfg!r}: must be a finite number ≥ 0 (1.0 = no guidance)"
        )


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """CFG (Ho & Salimans 2022): uncond + cfg·(cond − uncond), in fp32."""
    uncond = uncond.float()
    return uncond + cfg * (cond.float() - uncond)


def cfg_model(cond_fn: ModelFn, uncond_fn: ModelFn, cfg: float) -> ModelFn:
    """Guide two model functions (prompt, negative prompt); cfg = 1 skips the unconditional pass."""
    check_cfg(cfg)
    if cfg == 1.0:
        return cond_fn

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guide(cond_fn(x, t), uncond_fn(x, t), cfg)

    return guided


def batched_cfg_model(pair_fn: ModelFn, cfg: float) -> ModelFn:
    """Guide one model function that evaluates a batch of [cond; uncond] halves in a single call.

    ``pair_fn`` gets x repeated twice along the batch (2B, …) and returns (2B, …): the first B
    rows conditioned on the prompt, the last B on the negative prompt.
    """
    check_cfg(cfg)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = pair_fn(torch.cat([x, x]), t).chunk(2)  # (2B, …) → 2 × (B, …)
        return guide(cond, uncond, cfg)

    return guided
