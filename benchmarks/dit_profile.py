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

``--count`` only counts: FLOPs and bytes by kind of one forward on the meta device (no weights,
nothing computed, attention as SDPA's CUDA flash kernel), so the 14B at 480x832x81 can be
counted on any machine; with ``--peak`` and ``--bandwidth`` (a card's TFLOP/s and TB/s) it adds
the least time each kind needs at those rates. The kinds and the counting are in
benchmarks/dit_work.py.

    python -m benchmarks.dit_profile --threads 1                    # CPU: tiny config, seconds
    python -m benchmarks.dit_profile --threads 1 --config 1.3b --layers 2 --size 64x64x9
    python -m benchmarks.dit_profile --config 14b --size 480x832x81 --device cuda --dtype bf16
    python -m benchmarks.dit_profile --count --config 14b --size 480x832x81 --dtype bf16 --peak 989 --bandwidth 4.8
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from collections.abc import Callable

import attrs
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function

from benchmarks.dit_work import (
    ATTENTION,
    CATEGORIES,
    COMPUTE_BOUND,
    GEMM,
    LABEL,
    Work,
    classify,
    count_work,
    flash_attention,
    formula_flops,
    meta_forward,
    model_forward,
    ranges,
    swapped,
)
from benchmarks.generation import (
    CONFIGS,
    DTYPES,
    Job,
    gemm_flops,
    medians,
    parse_size,
    step_times,
)
from wanflow.models import dit

#: On the CPU, the time spent in wanflow's functions outside any op (and in the ranges themselves).
PYTHON = "Python between ops"


# ----------------------------------------------------------------------------- profiling


@attrs.frozen
class Profile:
    """One profiled forward: seconds by kind, the total they share out, seconds by (kind, op)."""

    times: Counter[str]
    total: float
    ops: Counter[tuple[str, str]]


#: Device-side records that are no GPU work: "Command Buffer Full" spans the wait of a launch on a
#: full queue (seen on an H200, torch 2.11); charged as kernels they counted attention twice.
NOT_KERNELS = frozenset({"Command Buffer Full"})


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
        own = (sum(k.duration for k in e.kernels if k.name not in annotations and k.name not in NOT_KERNELS) if cuda
               else e.self_cpu_time_total)
        kind = PYTHON if not cuda and e.name.startswith(LABEL) else classify(path(e))
        ops[kind, e.name] += own / 1e6
    times: Counter[str] = Counter()
    for (kind, _), seconds in ops.items():
        times[kind] += seconds
    if not cuda:
        return Profile(times, forward.cpu_time_total / 1e6, ops)
    device = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation
              and e.name not in NOT_KERNELS]
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
