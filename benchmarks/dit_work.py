"""What one Wan DiT forward does, by kind of work: counted, not timed.

The kinds (GEMM, attention, normalisation, modulation & residuals, RoPE, GELU, other), how an op
or a profiler event is given one, the ``record_function`` ranges wrapped around wanflow's DiT
functions while a forward is measured (so that an ``addcmul`` is RoPE in ``apply_rope`` and
modulation in ``modulate``), and the FLOPs and bytes of a forward counted under a dispatch mode,
on the real device or on the meta device. benchmarks/dit_profile.py times what this counts.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.profiler import record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import conv_flop_count, flop_registry, sdpa_flop_count

from benchmarks.generation import TEXT_TOKENS, Job, inputs, step_flops, wanflow_model
from wanflow.models import dit, precision

GEMM, ATTENTION, NORM, MODULATION, ROPE, GELU, OTHER = (
    "GEMM", "attention", "normalisation", "modulation & residuals", "RoPE", "GELU", "other")
CATEGORIES = (GEMM, ATTENTION, NORM, MODULATION, ROPE, GELU, OTHER)
COMPUTE_BOUND = (GEMM, ATTENTION)

#: Prefix of the benchmark's own ranges in the profile.
LABEL = "wanflow::"
#: (owner, attribute, range) wrapped while profiling; the range's kind, if any, is in RANGE_KINDS.
WRAPPED = (
    (dit, "modulate", "modulation"), (dit, "gated_residual", "residual"), (dit, "layer_norm", "norm"),
    (dit.RMSNorm, "forward", "norm"), (dit, "apply_rope", "rope"), (dit, "attention", "attention"),
    (precision.Linear, "forward", "gemm"), (precision.Conv3d, "forward", "gemm"),
    (dit.Block, "forward", "block"), (dit.SelfAttention, "forward", "self_attn"),
    (dit.CrossAttention, "forward", "cross_attn"),
)
#: Ranges whose ops all belong to one kind, whatever the ops are called.
RANGE_KINDS = {"gemm": GEMM, "attention": ATTENTION, "norm": NORM, "modulation": MODULATION,
               "residual": MODULATION, "rope": ROPE}
#: aten op names (no namespace, no overload) of each kind, for ops outside a kind's range.
OP_KINDS = {
    GEMM: {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_mm", "convolution", "_convolution",
           "conv3d", "conv2d", "cudnn_convolution", "mkldnn_convolution"},
    NORM: {"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"},
    GELU: {"gelu"},
}
#: torch's FLOP formulas, with the CPU's kernels for the patch embedding and SDPA added.
FLOP_FORMULAS = {
    **flop_registry,
    torch.ops.aten.mkldnn_convolution: lambda x, w, *_, out_val, **__: conv_flop_count(x.shape, w.shape, out_val.shape),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *_, **__: sdpa_flop_count(q.shape, k.shape, v.shape)),
}
ATTENTION_OP_PREFIXES = ("scaled_dot_product_attention", "_scaled_dot_product_", "_flash_attention_",
                         "_efficient_attention_", "_cudnn_attention_")


def op_kind(name: str) -> str | None:
    """The kind an aten op's name alone says: 'aten::addmm' and 'aten.addmm.default' are GEMM."""
    if not name.startswith(("aten::", "aten.")):
        return None
    op = name[5:].lstrip(":.").split(".")[0]
    if op.startswith(ATTENTION_OP_PREFIXES):
        return ATTENTION
    return next((kind for kind, ops in OP_KINDS.items() if op in ops), None)


def classify(path: Sequence[str]) -> str:
    """The kind of the work at the head of ``path`` (an op or range, then its enclosing ones,
    innermost first). The innermost range of a kind decides; otherwise the innermost op name
    that says a kind; otherwise ops directly in a block are modulation and residuals."""
    named = None
    for name in path:
        if not name.startswith(LABEL):
            named = named or op_kind(name)
            continue
        scope = name.removeprefix(LABEL)
        if scope in RANGE_KINDS:
            return RANGE_KINDS[scope]
        return named or (MODULATION if scope == "block" else OTHER)
    return named or OTHER


# ----------------------------------------------------------------------------- ranges


def _ranged(fn: Callable, scope: str, stack: list[str]) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        stack.append(LABEL + scope)
        try:
            with record_function(LABEL + scope):
                return fn(*args, **kwargs)
        finally:
            stack.pop()
    return wrapper


@contextlib.contextmanager
def ranges() -> Iterator[list[str]]:
    """wanflow's DiT functions wrapped in named ranges (restored on exit); yields the stack of
    ranges open at any moment, which the dispatch-mode counter reads."""
    stack: list[str] = []
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in WRAPPED]
    try:
        for owner, attr, scope in WRAPPED:
            setattr(owner, attr, _ranged(getattr(owner, attr), scope, stack))
        yield stack
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


# ----------------------------------------------------------------------------- counting


class Work(TorchDispatchMode):
    """Bytes read and written and FLOPs of the aten ops run under it, by kind.

    Bytes are counted for the ops as called (``rms_norm`` reads x and its weight and writes its
    output, whatever it runs inside), FLOPs for the ops a composite one decomposes into (as
    FlopCounterMode does: ``linear`` into ``addmm``), each op classified with the composite ops
    and ranges around it."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.ops: list[str] = []
        self.bytes: Counter[str] = Counter()
        self.flops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"{func.namespace}::{func.__name__}"
        kind = classify([name, *reversed(self.ops), *reversed(self.stack)])
        self.ops.append(name)
        try:
            out = NotImplemented
            if func._overloadpacket not in FLOP_FORMULAS:
                with self:
                    out = func.decompose(*args, **kwargs)
            if out is NotImplemented:
                out = func(*args, **kwargs)
                if func._overloadpacket in FLOP_FORMULAS:
                    self.flops[kind] += FLOP_FORMULAS[func._overloadpacket](*args, **kwargs, out_val=out)
        finally:
            self.ops.pop()
        if not self.ops:
            self.bytes[kind] += moved(func, (args, kwargs), out)
        return out


def moved(func, inputs, out) -> int:
    """Bytes an op reads and writes: its tensor arguments and the outputs it allocates. A view
    (flatten, unbind, ``to`` its own dtype) moves nothing, nor does an allocation."""
    if "empty" in func.__name__:
        return 0
    read = [t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    storages = {t.untyped_storage()._cdata for t in read}
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    fresh = [t for t in outs if t.untyped_storage()._cdata not in storages]
    if len(fresh) < len(outs) and not func._schema.is_mutable:
        return 0
    return sum(map(tensor_bytes, read + fresh))


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor's elements occupy; a broadcast (stride-0) view counts its storage once."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


def count_work(forward: Callable[[], object]) -> Work:
    """Bytes and FLOPs by kind of one call of ``forward``."""
    with ranges() as stack, Work(stack) as work:
        forward()
    return work


def formula_flops(job: Job) -> dict[str, float]:
    """FLOPs of one forward over a prepared prompt, from generation.step_flops (a CFG step is two
    forwards): attention's scores and values, and GEMM the rest plus the time embedding (three
    small matmuls per forward, which step_flops leaves out)."""
    c, n = job.cfg, job.tokens
    attention = c.num_layers * (4 * n * n * c.dim + 4 * n * TEXT_TOKENS * c.dim)
    time = 2 * job.latent[0] * (c.freq_dim * c.dim + c.dim * c.dim + c.dim * 6 * c.dim)
    return {GEMM: step_flops(job, per_prompt=False) / 2 - attention + time, ATTENTION: attention}


# ----------------------------------------------------------------------------- forwards


def model_forward(job: Job) -> Callable[[], torch.Tensor]:
    """One forward of wanflow's DiT over a prepared prompt, as a denoise step runs it."""
    model = wanflow_model(job)
    noise, pos, _ = inputs(job, 0)
    x, t = noise.to(job.device), torch.tensor([500.0], device=job.device)
    with torch.inference_mode():
        prepared = model.prepare_context(pos.to(job.device))
    return lambda: model(x, t, prepared)


def meta_forward(job: Job) -> Callable[[], torch.Tensor]:
    """The same forward on the meta device: shapes and dtypes only, no weights, no compute, so
    the 14B at 480x832x81 can be counted on any machine."""
    from wanflow.models.loading import build_on_meta

    model = build_on_meta(lambda: dit.WanDiT(job.cfg)).eval().requires_grad_(False)
    model.set_compute_dtype(job.dtype)
    batch = job.latent[0]
    x, t = torch.empty(job.latent, device="meta"), torch.empty(batch, device="meta")
    with torch.inference_mode():
        prepared = model.prepare_context(torch.empty(batch, TEXT_TOKENS, job.cfg.text_dim, device="meta"))
    return lambda: model(x, t, prepared)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "sdpa") -> torch.Tensor:
    """SDPA's CUDA flash kernel, called as such: on the meta device SDPA would take its math
    path, whose output layout costs a copy that no GPU kernel makes."""
    return torch.ops.aten._scaled_dot_product_flash_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))[0].transpose(1, 2)  # (B, Lq, H, d)


@contextlib.contextmanager
def swapped(owner: object, attr: str, value: object) -> Iterator[None]:
    """``owner.attr`` is ``value`` inside the block."""
    saved = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, saved)
