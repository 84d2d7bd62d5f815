"""A 14B DiT forward on a GPU under a device budget (policy ``stream``) against the same DiT whole
on the GPU, in one process.

Writes (or reuses) a DiT file of the real Wan2.1 T2V-14B configuration with random bf16 weights
(``memory_14b.write_checkpoint``: ~28.6 GB, tensor by tensor, drawn on the GPU: drawn on one CPU
core it took more than the 165 s a short GPU loan had for the whole script). Then:

1. ``stream``: the memory planner places the DiT under ``--budget-gib`` of device memory (the
   blocks that fit stay on the GPU, the rest are copied in from host memory ahead of use, as the
   denoise step runs them); the prompt's keys and values are prepared once, then timed forwards;
2. ``whole``: the DiT loaded onto the GPU whole, the same forwards.

It prints each forward's median time, the ratio stream/whole, each side's peak GPU memory
against the budget and the planner's prediction, and whether the two velocities are
bit-identical. ``--layers 2 --size 32x32x5 --device cpu`` is a dry run on the CPU (no budget).

    python benchmarks/gpu_stream.py --budget-gib 24            # on a GPU with room for the whole DiT
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memory_14b  # noqa: E402  (beside this script)

GIB = 1024**3


def timed_forwards(model, inputs, device: str, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` forwards after one untimed, and the last velocity."""
    import torch

    x, t, context = inputs
    times, y = [], None
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            y = model(x, t, context)
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times), y


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated() / GIB
    torch.cuda.reset_peak_memory_stats()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("/tmp/wanflow-bench/dit14b.safetensors"))
    parser.add_argument("--budget-gib", type=float, default=24.0, help="device memory the streamed run may use")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--size", default="480x832x81", help="HxWxF pixels")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from wanflow.memory import estimates, planner, sizes
    from wanflow.memory.streamed import load_placed_dit
    from wanflow.models.dit import keeps_fp32
    from wanflow.models.dit_loader import load_dit

    memory_14b.LAYERS = args.layers
    cfg = memory_14b.config()
    if not args.path.exists():
        args.path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.path} (random weights drawn on {args.device})", flush=True)
        start = time.perf_counter()
        memory_14b.write_checkpoint(args.path, args.device)
        print(f"wrote {args.path} ({args.path.stat().st_size / 1e9:.1f} GB) in {time.perf_counter() - start:.0f} s",
              flush=True)
    h, w, f = (int(v) for v in args.size.split("x"))
    latent = (1, cfg.in_dim, (f - 1) // 4 + 1, h // 8, w // 8)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(latent, generator=gen).to(args.device)
    t = torch.tensor([999.0], device=args.device)
    context = torch.randn(1, memory_14b.TEXT_TOKENS, cfg.text_dim, generator=gen).to(args.device)
    dtype = torch.bfloat16
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    tokens = latent[2] * latent[3] * latent[4] // 4
    print(f"Wan2.1 T2V 14B configuration ({cfg.num_layers} blocks), {args.size} ({tokens} tokens), bf16, {name}, "
          f"torch {torch.__version__}; median of {args.repeats} forwards after 1", flush=True)

    size = sizes.component_size("dit", sizes.read_headers([args.path]), 2, keeps_fp32=keeps_fp32, blocks=True)
    activation = estimates.dit_forward_bytes(cfg, latent[2:], 2, prepared_contexts=1)
    budgets = planner.Budgets(int(args.budget_gib * GIB) if cuda else None, 1 << 50)
    plan = planner.plan(budgets, "stream" if cuda else "none", [size],
                        [planner.StepDemand("forward", ("dit",), activation)])
    tiers = plan.placement("dit").blocks
    predicted = plan.peaks[0].device_bytes / GIB if cuda and plan.peaks[0].device_bytes else None
    print(f"plan under {args.budget_gib:g} GiB: {tiers.count('device')} blocks resident, "
          f"{len(tiers) - tiers.count('device')} streamed; predicted device peak "
          f"{predicted if predicted is None else round(predicted, 2)} GiB", flush=True)

    peak_gib(args.device)
    start = time.perf_counter()
    model, handle = load_placed_dit([args.path], cfg, tiers, dtype, args.device)
    loaded = time.perf_counter() - start
    with torch.inference_mode():
        prepared = model.prepare_context(context)
    stream_s, y_stream = timed_forwards(model, (x, t, prepared), args.device, args.repeats)
    stream_peak = peak_gib(args.device)
    y_stream = y_stream.cpu()
    del model, handle, prepared
    torch.cuda.empty_cache() if cuda else None
    peak_gib(args.device)
    print(f"  stream: load {loaded:.1f} s, forward {stream_s:.3f} s, peak "
          f"{stream_peak if stream_peak is None else round(stream_peak, 2)} GiB", flush=True)

    start = time.perf_counter()
    model = load_dit(args.path, cfg, dtype=dtype, device=args.device).eval().requires_grad_(False)
    loaded = time.perf_counter() - start
    with torch.inference_mode():
        prepared = model.prepare_context(context)
    whole_s, y_whole = timed_forwards(model, (x, t, prepared), args.device, args.repeats)
    whole_peak = peak_gib(args.device)
    print(f"  whole:  load {loaded:.1f} s, forward {whole_s:.3f} s, peak "
          f"{whole_peak if whole_peak is None else round(whole_peak, 2)} GiB", flush=True)
    same = torch.equal(y_stream, y_whole.cpu())
    print(f"stream / whole: {stream_s / whole_s:.3f}x the forward's time; velocities "
          f"{'bit-identical' if same else 'differ'}", flush=True)


if __name__ == "__main__":
    main()
