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

The same module picks the fp32 conv3d kernel on the CPU: oneDNN at every size (see `_conv3d`).
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
#: fp32 elements per upcast block of a conv3d weight (4 MiB; the largest Wan VAE weight has 4 M).
WEIGHT_BLOCK_ELEMENTS = 1 << 20


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0) -> Tensor:
    """`F.conv3d` computed in `compute_dtype(x)`, returned in x's dtype.

    When that means an upcast, it runs over blocks: of output frames, of output rows where one
    frame is larger than BLOCK_ELEMENTS, and of output channels where the weight is larger than
    WEIGHT_BLOCK_ELEMENTS. Each block upcasts only the input its kernel sees and the weight rows it
    needs, so the fp32 copies (and the layout copies oneDNN makes of them) stay near
    BLOCK_ELEMENTS at any size: whole-chunk upcasts held ~250 MB of fp32 in a 256-px decode,
    next to the bf16 tensors the user asked for to save memory.
    """
    work = compute_dtype(x)
    stride, padding = triple(stride), triple(padding)
    if work == x.dtype:
        return _conv3d(x, weight, bias, stride, padding)
    if padding[0]:  # time padding (never in our layers): one block
        bias = None if bias is None else bias.to(work)
        return _conv3d(x.to(work), weight.to(work), bias, stride, padding).to(x.dtype)
    (st, sh, sw), (_, ph, pw), (kt, kh, kw) = stride, padding, weight.shape[2:]
    (frames, rows, cols), cout = x.shape[2:], weight.shape[0]
    frames_out, rows_out = (frames - kt) // st + 1, (rows + 2 * ph - kh) // sh + 1
    out = x.new_empty(x.shape[0], cout, frames_out, rows_out, (cols + 2 * pw - kw) // sw + 1)
    row = x[:, :, :1, :1].numel()  # elements of one input row of one frame
    t_step, h_step = _block(BLOCK_ELEMENTS // (row * rows), kt, st, frames_out), rows_out
    if t_step == 1:  # one output frame is already too large: split its rows as well
        h_step = _block(BLOCK_ELEMENTS // (row * kt), kh, sh, rows_out)
    o_step = -(-cout // -(-weight.numel() // WEIGHT_BLOCK_ELEMENTS))  # channels per block, evenly split
    for t0 in range(0, frames_out, t_step):
        t1 = min(frames_out, t0 + t_step)
        for h0 in range(0, rows_out, h_step):
            h1 = min(rows_out, h0 + h_step)
            block, row_pad = _input_rows(x[:, :, t0 * st:(t1 - 1) * st + kt], h0, h1, sh, kh, ph, work)
            for o0 in range(0, cout, o_step):
                w = weight[o0:o0 + o_step].to(work)
                b = None if bias is None else bias[o0:o0 + o_step].to(work)
                out[:, o0:o0 + o_step, t0:t1, h0:h1] = _conv3d(block, w, b, stride, (0, row_pad, pw))
    return out


def _input_rows(x: Tensor, first: int, last: int, step: int, taps: int, pad: int, work: torch.dtype):
    """The input rows that output rows [first, last) see, upcast; and the row padding left to the conv.

    All rows: the conv pads them itself. Some: the zero rows of the padding that this block
    reaches are added here, and the conv pads no rows.
    """
    top, bottom, rows = first * step - pad, (last - 1) * step + taps - pad, x.shape[3]
    if top == -pad and bottom >= rows:
        return x.to(work), pad
    block = x[:, :, :, max(top, 0):min(bottom, rows)].to(work)
    if top < 0 or bottom > rows:
        block = F.pad(block, (0, 0, max(-top, 0), max(bottom - rows, 0)))
    return block, 0


def _conv3d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple, padding: tuple) -> Tensor:
    """torch's conv3d, always through oneDNN for fp32 on the CPU.

    torch picks oneDNN for an fp32 conv3d only when batch x channels x frames x rows > 20480 and
    otherwise runs its im2col kernel, which on 2 AVX2 cores was 3x slower and held a workspace of
    27 x the input (150 MB for a 96-channel, 3-frame, 56-row block) where oneDNN needs ~the input
    and output. Single frames, low-resolution levels and small tiles fall under that line.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and _onednn_ready():
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride, padding)


def _onednn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _block(fits: int, taps: int, step: int, total: int) -> int:
    """Outputs per block along one axis when `fits` inputs may be upcast at once (at least 1),
    evenly split (a last block of a few rows would run the kernel at a fraction of its speed)."""
    most = min(total, max(1, (fits - taps) // step + 1))
    return -(-total // -(-total // most))


def triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """A conv argument (kernel, stride, padding) as one value per axis of (T, H, W)."""
    return (v, v, v) if isinstance(v, int) else tuple(v)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear` computed in `compute_dtype(x)`, returned in x's dtype.

    Weights of another dtype are cast too, block by block: an fp32 island (the head, the time
    modulation) whose weights DeepSpeed's bf16/fp16 engine cast with the whole model still
    computes in fp32 on its fp32 input.

    Upcasting whole operands would cost twice their bf16 size on top (1.8 GB for the 14B's FFN
    input at 480p), so the upcast runs in blocks of weight rows x tokens, each at most
    BLOCK_ELEMENTS: GEMMs stay large enough to run at full speed, the extra memory stays ~50 MiB.
    """
    work = compute_dtype(x)
    if work == x.dtype == weight.dtype:
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
