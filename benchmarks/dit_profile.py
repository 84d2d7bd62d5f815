"""Where one Wan DiT forward spends its time, by kind of work.

One forward of wanflow's DiT (random weights of a Wan2.1 T2V configuration, the prompt's
cross-attention keys and values prepared once, as sampling runs it) is profiled with
torch.profiler after a warm-up, and its time is split into:

- **GEMM**: the projections, the FFN, the embeddings and the head (aten mm/addmm/bmm/_scaled_mm,
  convolutions, and whatever runs inside a ``Linear`` or ``Conv3d``: bias, casts);
- **attention**: everything inside ``attention()`` (SDPA and its flash/cuDNN/efficient kernels,
  flash3, sage, or the math kernel's own matmuls);
- **normalisation**: LayerNorm and the q/k RMSNorm;
- **modulation & residuals**: ``modulate``, ``gated_residual`` (addcmul and the casts around it)
  and the block's own arithmetic (its modulation vector, the cross-attention residual);
- **RoPE**: the ops inside ``apply_rope``; **GELU**; **other** (the time embedding's features,
  the head's modulation, layout copies); on the CPU, **Python between ops** in wanflow's
  functions and the benchmark's ranges (on CUDA the GPU does not wait for it unless it starves).

An op's kind is that of the innermost of wanflow's functions it runs in, found through
``record_function`` ranges that this benchmark wraps around them while it profiles (``addcmul`` is
modulation in ``modulate`` and RoPE in ``apply_rope``); an op in no such function goes by its
name. On CUDA each kernel is charged to the op that launched it (the profiler's op-to-kernel
correlation) and times are kernel times; on the CPU they are the ops' self CPU times.

Per kind: time, share of the profiled forward; for GEMM and attention the FLOP/s against the
GEMM roofline (FLOPs and roofline from benchmarks/generation.py); for the others the bytes their
ops read and write (counted from the real tensors of one more forward under a dispatch mode: a
lower bound, each tensor read or written once) against a copy's bandwidth measured in the same
run. The forward's time without the profiler is printed beside the profiled total.

    python -m benchmarks.dit_profile --threads 1                    # CPU: tiny config, seconds
    python -m benchmarks.dit_profile --threads 1 --config 1.3b --layers 2 --size 64x64x9
    python -m benchmarks.dit_profile --config 14b --size 480x832x81 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import attrs
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import conv_flop_count, flop_registry, sdpa_flop_count

from benchmarks.generation import (
    CONFIGS,
    DTYPES,
    TEXT_TOKENS,
    Job,
    gemm_flops,
    inputs,
    medians,
    parse_size,
    step_flops,
    step_times,
    wanflow_model,
)
from wanflow.models import dit, precision

GEMM, ATTENTION, NORM, MODULATION, ROPE, GELU, OTHER = (
    "GEMM", "attention", "normalisation", "modulation & residuals", "RoPE", "GELU", "other")
CATEGORIES = (GEMM, ATTENTION, NORM, MODULATION, ROPE, GELU, OTHER)
#: On the CPU, the time spent in wanflow's functions outside any op (and in the ranges themselves).
PYTHON = "Python between ops"
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


# ----------------------------------------------------------------------------- profiling


@attrs.frozen
class Profile:
    """One profiled forward: seconds by kind, the total they share out, seconds by (kind, op)."""

    times: Counter[str]
    total: float
    ops: Counter[tuple[str, str]]


def event_times(events, cuda: bool) -> Profile:
    """Seconds by kind and the profiled total. CPU: each op's self CPU time, the total being the
    ``forward`` range's, and the ranges' own time (Python) apart. CUDA: each kernel charged to the op (or range) that launched it, the total
    being every kernel's time; kernels no op launched stay in the total only."""
    ops: Counter[tuple[str, str]] = Counter()
    annotations = {e.name for e in events if e.is_user_annotation}
    forward = next(e for e in events if e.name == LABEL + "forward" and e.device_type == DeviceType.CPU)
    for e in events:
        if e.device_type != DeviceType.CPU or not within(e, forward):
            continue
        own = (sum(k.duration for k in e.kernels if k.name not in annotations) if cuda
               else e.self_cpu_time_total)
        kind = PYTHON if not cuda and e.name.startswith(LABEL) else classify(path(e))
        ops[kind, e.name] += own / 1e6
    times: Counter[str] = Counter()
    for (kind, _), seconds in ops.items():
        times[kind] += seconds
    if not cuda:
        return Profile(times, forward.cpu_time_total / 1e6, ops)
    device = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    return Profile(times, sum(e.time_range.elapsed_us() for e in device) / 1e6, ops)


def path(event) -> list[str]:
    """The event's name, then its enclosing events' names, innermost first."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def within(event, outer) -> bool:
    while event is not None and event is not outer:
        event = event.cpu_parent
    return event is outer


def profiled_events(forward: Callable[[], object], job: Job):
    """torch.profiler's events of one call of ``forward`` inside a ``forward`` range, wanflow's
    functions wrapped in theirs."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if job.device.startswith("cuda") else [])
    with ranges(), torch.profiler.profile(activities=activities) as prof:
        with record_function(LABEL + "forward"):
            forward()
        job.sync()
    return prof.events()


def profile(forward: Callable[[], object], job: Job) -> Profile:
    """Seconds by kind and by op, and the profiled total, of one call of ``forward``."""
    return event_times(profiled_events(forward, job), job.device.startswith("cuda"))


def copy_bandwidth(job: Job) -> float:
    """Bytes/s of a large tensor copy (read and write) in the job's dtype; CPU in process time."""
    n = 1 << (26 if job.device.startswith("cuda") else 24)
    a, b = (torch.randn(n, device=job.device).to(job.dtype) for _ in range(2))
    b.copy_(a)
    times = step_times(lambda tick: [(b.copy_(a), tick()) for _ in range(5)], job)
    return 2 * n * a.element_size() / statistics.median(t[1 if job.device == "cpu" else 0] for t in times)


# ----------------------------------------------------------------------------- report


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


def bound(work: Work, kind: str, peak: float, bandwidth: float) -> float:
    """The least time a kind's work can take at these rates (its roofline): its FLOPs at the
    peak or its bytes at the bandwidth, whichever is longer."""
    return max(work.flops[kind] / peak, work.bytes[kind] / bandwidth)


def count_report(job: Job, args: argparse.Namespace) -> None:
    """FLOPs and bytes of one forward by kind, counted on the meta device; with --peak and
    --bandwidth, the least time each kind needs at those rates."""
    forward = meta_forward(job)
    with torch.inference_mode(), swapped(dit, "attention", flash_attention):
        forward()  # as in a denoise loop, the RoPE table is built once, before the step counted
        work = count_work(forward)
    rates = args.peak is not None and args.bandwidth is not None
    least = {kind: bound(work, kind, args.peak * 1e12, args.bandwidth * 1e12) for kind in CATEGORIES} if rates else {}
    print("counted on the meta device (no weights, nothing computed; attention as SDPA's flash kernel)" + (
        f"; least time at {args.peak:g} TFLOP/s and {args.bandwidth:g} TB/s: {sum(least.values()) * 1e3:.1f} ms"
        if rates else "") + "\n")
    print("| kind | GFLOP | GB moved | FLOP per byte |" + (" least ms | share of the least |" if rates else ""))
    print("|---|---|---|---|" + ("---|---|" if rates else ""))
    for kind in CATEGORIES:
        intensity = work.flops[kind] / work.bytes[kind] if work.bytes[kind] else 0.0
        cells = [kind, f"{work.flops[kind] / 1e9:.1f}", f"{work.bytes[kind] / 1e9:.2f}", f"{intensity:.0f}"]
        if rates:
            cells += [f"{least[kind] * 1e3:.2f}", f"{least[kind] / sum(least.values()):.1%}"]
        print("| " + " | ".join(cells) + " |")


def report(job: Job, args: argparse.Namespace) -> None:
    """Warm up, time forwards without the profiler, profile some, count one; print the table of
    the profile with the median total (its kinds sum to its total)."""
    forward = model_forward(job)
    peak, bandwidth = gemm_flops(job), copy_bandwidth(job)
    with torch.inference_mode():
        for _ in range(args.warmup):
            forward()
        wall, cpu = medians(step_times(lambda tick: [(forward(), tick()) for _ in range(args.repeats)], job))
        profiles = sorted((profile(forward, job) for _ in range(args.profiles)), key=lambda p: p.total)
        work = count_work(forward)
    shown = profiles[len(profiles) // 2]
    times, total = shown.times, shown.total
    clock = "self CPU time" if job.device == "cpu" else "kernel time"
    print(f"forward without the profiler: {wall * 1e3:.1f} ms wall" + (f", {cpu * 1e3:.1f} ms CPU" if
          job.device == "cpu" else "") + f" (median of {args.repeats}); profiled: {total * 1e3:.1f} ms of {clock} "
          f"(median of {args.profiles}, {profiles[0].total * 1e3:.1f} to {profiles[-1].total * 1e3:.1f})")
    print(f"roofline: GEMM {peak / 1e12:.3f} TFLOP/s, copy {bandwidth / 1e9:.1f} GB/s (measured in this run)\n")
    print("| kind | ms | share | GFLOP | TFLOP/s | of GEMM roofline | MB moved | GB/s | of copy bandwidth |")
    print("|---|---|---|---|---|---|---|---|---|")
    times["unattributed"] = total - sum(times.values())
    for kind in [k for k in (*CATEGORIES, PYTHON) if k in times] + ["unattributed"] * (
            abs(times["unattributed"]) >= 1e-3 * total):
        print("| " + " | ".join(row(kind, times[kind], total, work, formula_flops(job), peak, bandwidth)) + " |")
    print(f"\nlongest ops of each kind (--top {args.top}):" if args.top else "")
    for kind in (*CATEGORIES, PYTHON) if args.top else ():
        if kind in shown.times:
            print(f"  {kind}: " + ", ".join(f"{op} {t * 1e3:.2f} ms" for op, t in largest(shown.ops, kind, args.top)))
    print(f"FLOPs of the ops run (counted by shape): GEMM {work.flops[GEMM] / 1e9:.2f} GFLOP, attention "
          f"{work.flops[ATTENTION] / 1e9:.2f} (0 for a kernel torch has no FLOP formula for)")


def largest(ops: Counter[tuple[str, str]], kind: str, n: int) -> list[tuple[str, float]]:
    """The ``n`` ops (or ranges) of a kind that took longest, with their seconds."""
    return sorted(((op, t) for (k, op), t in ops.items() if k == kind and t > 0), key=lambda x: -x[1])[:n]


def row(kind: str, seconds: float, total: float, work: Work, flops: dict[str, float], peak: float,
        bandwidth: float) -> list[str]:
    """One kind's cells: time and share; FLOP/s for GEMM and attention, else bytes and bytes/s."""
    cells = [kind, f"{seconds * 1e3:.2f}", f"{seconds / total:.1%}"]
    if kind in COMPUTE_BOUND:
        rate = flops[kind] / seconds if seconds > 0 else 0.0
        return cells + [f"{flops[kind] / 1e9:.2f}", f"{rate / 1e12:.3f}", f"{rate / peak:.0%}", "", "", ""]
    if kind not in work.bytes:
        return cells + [""] * 6
    rate = work.bytes[kind] / seconds if seconds > 0 else 0.0
    return cells + ["", "", "", f"{work.bytes[kind] / 1e6:.1f}", f"{rate / 1e9:.1f}", f"{rate / bandwidth:.0%}"]


def job_of(args: argparse.Namespace) -> Job:
    """The Job generation.py's options describe: tiny config and 128x128x9 on the CPU by default,
    1.3b at 480x832x81 in bf16 on CUDA."""
    cuda = args.device.startswith("cuda")
    cfg = CONFIGS[args.config or ("1.3b" if cuda else "tiny")]
    cfg = attrs.evolve(cfg, num_layers=args.layers) if args.layers else cfg
    h, w, f = parse_size(args.size or ("480x832x81" if cuda else "128x128x9"))
    return Job(cfg, (1, cfg.in_dim, (f - 1) // 4 + 1, h // 8, w // 8), args.device,
               DTYPES[args.dtype or ("bf16" if cuda else "fp32")], args.attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default=None, help="tiny on the CPU, 1.3b on CUDA")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: the configuration's)")
    parser.add_argument("--size", default=None, help="HxWxF pixels (CPU default 128x128x9, CUDA 480x832x81)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="fp32 on the CPU, bf16 on CUDA")
    parser.add_argument("--attention", default="sdpa", help="wanflow's attention backend ([runtime].attention)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 for steady times)")
    parser.add_argument("--warmup", type=int, default=2, help="forwards before anything is measured")
    parser.add_argument("--repeats", type=int, default=3, help="forwards timed without the profiler")
    parser.add_argument("--top", type=int, default=3, help="ops listed per kind, longest first (0: none)")
    parser.add_argument("--profiles", type=int, default=3, help="forwards profiled (the median is shown)")
    parser.add_argument("--count", action="store_true", help="only count FLOPs and bytes by kind, on the meta "
                        "device (any size, any machine; nothing is timed)")
    parser.add_argument("--peak", type=float, default=None, help="with --count: TFLOP/s, e.g. a card's dense bf16")
    parser.add_argument("--bandwidth", type=float, default=None, help="with --count: memory TB/s")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.peak is None) != (args.bandwidth is None) or (args.peak is not None and not args.count):
        parser.error("--peak and --bandwidth go together, and only with --count")
    if args.count and args.attention != "sdpa":
        parser.error("--count counts attention as SDPA's flash kernel: leave --attention out")
    job = job_of(args)
    name = ("meta" if args.count else job.device if job.device == "cpu"
            else torch.cuda.get_device_name(torch.device(job.device)))
    print(f"Wan2.1 T2V {args.config or ('1.3b' if job.device != 'cpu' else 'tiny')}, "
          f"{'no weights' if args.count else 'random weights'} "
          f"(dim {job.cfg.dim}, {job.cfg.num_layers} layers), {job.latent} latent ({job.tokens} tokens), "
          f"{str(job.dtype).removeprefix('torch.')}, {name}, {torch.get_num_threads()} CPU threads; "
          f"attention {job.attention}; prompt prepared once")
    if args.count:
        count_report(job, args)
        return
    report(job, args)


if __name__ == "__main__":
    main()
