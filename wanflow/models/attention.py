"""Named, pluggable attention kernels, so faster backends can be chosen without touching models.

Every kernel takes q, k, v laid out (B, L, H, D) and returns (B, Lq, H, D). This is the layout
that the projections produce, so models never reshape for a particular kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from wanflow.errors import ModelInputError

#: q, k, v (B, L, H, D) -> (B, Lq, H, D); no mask, default 1/sqrt(D) scale (as Wan attends).
AttentionKernel = Callable[[Tensor, Tensor, Tensor], Tensor]


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's fused scaled-dot-product attention (flash/memory-efficient where available)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # (B, Lq, H, D)


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain softmax(QK^T/sqrt(D))V with fp32 statistics: slow, but a reference anyone can read."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)  # (B, Lq, H, D)


KERNELS: dict[str, AttentionKernel] = {"sdpa": sdpa, "math": math_attention}


def register_kernel(name: str, kernel: AttentionKernel) -> None:
    """Add a backend (e.g. sage or flash) under a new name; names are never silently replaced."""
    if name in KERNELS:
        raise ModelInputError(f"attention kernel {name!r} is already registered; pick another name.")
    KERNELS[name] = kernel


def check_kernel(name: str) -> str:
    """Fail early, listing the choices, when a kernel name is not registered."""
    if name not in KERNELS:
        raise ModelInputError(
            f"attention kernel {name!r} is not registered; choose one of {sorted(KERNELS)}."
        )
    return name


def attention(q: Tensor, k: Tensor, v: Tensor, kernel: str = "sdpa") -> Tensor:
    """Attend with the named kernel: q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D)."""
    return KERNELS[check_kernel(kernel)](q, k, v)
