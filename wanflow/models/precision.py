"""Which dtype a layer computes in, given the dtype its weights and activations are stored in.

Asking for bf16 (or fp16) means two things: half the memory for weights and activations, and
the fast reduced-precision kernels of the hardware. GPUs have both. A CPU without native bf16
instructions (x86 with AVX2 only, many ARM chips) has only the first: torch runs bf16
convolutions there through reference kernels measured at 0.4 GFLOP/s against ~100 for fp32
(a 64-channel 3x3x3 conv3d on 2 AVX2 cores), so a bf16 VAE decode would take hours.

On such a CPU the layers keep storing bf16 (the memory the user asked for) but convolve in
fp32: inputs and weights are bf16 values, products are summed in fp32 and rounded back to bf16
— what a GPU's bf16 kernels do as well, so results stay within bf16 rounding of the GPU's. GEMMs
gain less (bf16 ~16 GFLOP/s against ~117 fp32 on the same machine) but the same way.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_REDUCED = (torch.bfloat16, torch.float16)


@functools.cache
def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has oneDNN kernels for `dtype` (AVX512-BF16/AMX for bf16, AVX512-FP16/AMX for fp16)."""
    probes = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    try:
        return bool(getattr(torch.ops.mkldnn, probes[dtype])())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume the slow path
        return False


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for reduced-precision tensors on a CPU without native kernels for them; else x's dtype."""
    if x.device.type == "cpu" and x.dtype in _REDUCED and not cpu_has_native(x.dtype):
        return torch.float32
    return x.dtype


#: fp32 elements per upcast block of `conv3d` and `linear` (16 MiB): bounds its extra memory at any size.
BLOCK_ELEMENTS = 1 << 22


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """`F.conv3d` computed in `compute_dtype(x)`, returned in x's dtype.

    When that means an upcast, it runs over blocks of output frames (each reading only the input
    frames its kernel sees), so the fp32 copies stay near BLOCK_ELEMENTS however many frames and
    pixels come in: upcasting a whole decoder chunk at 256 px would hold ~250 MB of fp32 copies
    next to the bf16 tensors the user asked for to save memory.
    """
    work = compute_dtype(x)
    if work == x.dtype:
        return F.conv3d(x, weight, bias, stride, padding)
    stride, padding = _triple(stride), _triple(padding)
    w, b = weight.to(work), None if bias is None else bias.to(work)
    taps, step = weight.shape[2], stride[0]
    frames_out = (x.shape[2] + 2 * padding[0] - taps) // step + 1
    frame = x[:, :, :1].numel()
    per_block = max(1, (BLOCK_ELEMENTS // max(frame, 1) - taps) // step + 1)  # output frames
    if padding[0] or per_block >= frames_out:  # one block (time padding never occurs in our layers)
        return F.conv3d(x.to(work), w, b, stride, padding).to(x.dtype)
    out = None
    for first in range(0, frames_out, per_block):
        last = min(frames_out, first + per_block)
        block = x[:, :, first * step:(last - 1) * step + taps].to(work)
        y = F.conv3d(block, w, b, stride, padding)
        if out is None:
            out = x.new_empty(*y.shape[:2], frames_out, *y.shape[3:])
        out[:, :, first:last] = y
    return out


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` computed in `compute_dtype(x)`, returned in x's dtype.

    Upcasting whole operands would cost twice their bf16 size on top (1.8 GB for the 14B's FFN
    input at 480p), so the upcast runs in blocks of weight rows x tokens, each at most
    BLOCK_ELEMENTS: GEMMs stay large enough to run at full speed, the extra memory stays ~50 MiB.
    """
    work = compute_dtype(x)
    if work == x.dtype:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # (N, in)
    out = x.new_empty(rows.shape[0], weight.shape[0])  # (N, out) in x's dtype
    step = max(1, BLOCK_ELEMENTS // x.shape[-1])  # weight rows per block
    row_step = max(1, BLOCK_ELEMENTS // max(x.shape[-1], min(step, weight.shape[0])))  # tokens per block
    for o in range(0, weight.shape[0], step):
        w = weight[o:o + step].to(work)
        b = None if bias is None else bias[o:o + step].to(work)
        for r in range(0, rows.shape[0], row_step):
            out[r:r + row_step, o:o + step] = F.linear(rows[r:r + row_step].to(work), w, b)
    return out.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same keys) that computes through `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class Conv3d(nn.Conv3d):
    """`nn.Conv3d` with zero padding (same parameters, same keys) that computes through `conv3d`."""

    def forward(self, x: Tensor) -> Tensor:
        return conv3d(x, self.weight, self.bias, self.stride, self.padding)


def adopt(model: nn.Module) -> nn.Module:
    """Make a third-party model's plain `nn.Linear` layers (transformers' umT5 and CLIP) follow the
    same rule, in place. Only the class changes (`Linear` adds no state): parameters, names,
    hooks and what `isinstance(m, nn.Linear)` says stay as they were."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
    return model
