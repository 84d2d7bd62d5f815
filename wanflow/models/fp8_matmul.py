"""fp8 matmuls: the block projections multiplied in float8 e4m3, each token scaled on its own.

With ``[memory].fp8`` the block projections' weights are stored in e4m3 with one scale per output
row (``wanflow.models.fp8``) and, by default, turned back into bf16 for every GEMM. Hopper and Ada
GPUs (sm89+) multiply e4m3 at twice their bf16 rate, and the projections and the FFN are about
half of a Wan forward's FLOPs at 480p (the rest is attention), so multiplying in fp8 is the largest
single speed-up left once the weights are fp8 anyway. ``[runtime].fp8_matmul`` turns it on.

How a layer multiplies (``scaled_linear``): the input's rows (tokens) are quantised to e4m3, each
with its own scale ``amax / 448``, so a token of small activations is not measured against the
largest token of the clip (the weights' rows are scaled the same way, for the same reason);
``torch._scaled_mm`` multiplies the e4m3 operands, accumulates in fp32, applies both scales and
adds the bias, and rounds once to the activations' dtype. Nothing is dequantised, so the weight's
bf16 temporary of the storage-only path disappears too.

What it costs in accuracy: the activations take e4m3's rounding (about 2.6 % relative RMS, as the
weights already do); ``benchmarks/fp8_error.py`` measures the velocity of whole DiTs against fp32
(docs/fp8.md). The setting changes the numbers, so it is part of the denoise step's key (the
step's ``storage`` is ``"fp8-matmul"``).

Where it runs: ``torch._scaled_mm`` with one scale per row needs an sm89+ GPU (Ada, Hopper,
Blackwell) and a bf16 output; torch's CPU kernel runs it too from torch 2.13 (slowly: it is there
so the arithmetic is tested everywhere; 2.11's takes one scale per tensor only, found by a probe).
``problems`` says why not elsewhere, for validation.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from wanflow.models.attention import capability

#: The largest finite e4m3fn value: a token's largest activation maps onto it.
FP8_MAX = 448.0
#: The smallest amax a token's scale is taken from: an all-zero token gets a harmless scale.
MIN_AMAX = 1e-12
#: GEMM dimensions (in and out features) the fp8 kernels need to be multiples of.
ALIGNMENT = 16
#: The GPUs with fp8 tensor cores: compute capability 8.9 (Ada) and later.
MIN_CAPABILITY = (8, 9)


def quantise_tokens(rows: Tensor) -> tuple[Tensor, Tensor]:
    """(e4m3 rows, float32 scale (N, 1)) with rows ~ stored * scale, one scale per row.

    The division runs in fp32 and writes e4m3 directly (no fp32 copy of the activations is kept).
    """
    amax = rows.abs().amax(dim=1, keepdim=True).float()
    scale = amax.clamp_(min=MIN_AMAX).div_(FP8_MAX)
    stored = torch.empty(rows.shape, dtype=torch.float8_e4m3fn, device=rows.device)
    torch.div(rows, scale, out=stored)
    return stored, scale


def scaled_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ (weight * weight_scale).T + bias`` multiplied in e4m3, returned in x's dtype.

    ``weight`` (out, in) e4m3; ``weight_scale`` one per row (out, 1) or one per tensor (0-d).
    """
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("fp8 matmuls have no backward (the rounding to e4m3 cuts the gradient): "
                           "multiply in the compute dtype to train, or run under torch.no_grad()")
    out_features = weight.shape[0]
    rows = x.reshape(-1, x.shape[-1])
    stored, scale = quantise_tokens(rows)
    column_scale = weight_scale.float().reshape(-1, 1).expand(out_features, 1).reshape(1, out_features)
    out = torch._scaled_mm(stored, weight.t(), scale_a=scale, scale_b=column_scale.contiguous(),
                           bias=None if bias is None else bias.to(x.dtype), out_dtype=x.dtype)
    return out.view(*x.shape[:-1], out_features)


@functools.cache
def cpu_takes_row_scales() -> bool:
    """Whether this torch's CPU ``_scaled_mm`` multiplies with one scale per row (2.13 does; 2.11's
    refuses anything but one scale per tensor): probed once, on a 16x16 product."""
    a = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def multipliable(weight: Tensor, weight_scale: Tensor) -> str | None:
    """Why a stored layer cannot multiply in fp8 (None when it can)."""
    out_features, in_features = weight.shape
    if weight_scale.numel() not in (1, out_features):
        return (f"its scale {tuple(weight_scale.shape)} is per block of a row; fp8 matmuls take one "
                "scale per row or per tensor")
    if in_features % ALIGNMENT or out_features % ALIGNMENT:
        return f"its shape {tuple(weight.shape)} is not a multiple of {ALIGNMENT}"
    return None


def problems(device: str, dtype: str) -> list[str]:
    """Why fp8 matmuls cannot run on ``device`` ("cpu", "cuda", "cuda:1") with the DiT in
    ``dtype`` ("bf16", "fp16", "fp32"); empty when they can."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return [f"torch {torch.__version__} has no fp8 matmul (torch._scaled_mm); upgrade torch"]
    if not device.startswith("cuda"):
        return [] if cpu_takes_row_scales() else [
            f"torch {torch.__version__}'s CPU fp8 matmul takes one scale per tensor, not one per token; "
            "run on an sm89+ GPU or upgrade torch (2.13 multiplies per-token scales on the CPU)"]
    found = [] if dtype == "bf16" else [f"its GPU kernels return bf16 only (the DiT runs in {dtype})"]
    if not torch.cuda.is_available():
        return [*found, "torch sees no CUDA device on this machine"]
    major, minor = capability(device)
    if (major, minor) < MIN_CAPABILITY:
        found.append(f"it needs a GPU with fp8 tensor cores, sm89 or later (Ada, Hopper, Blackwell); "
                     f"this GPU is sm{major}{minor}")
    return found
