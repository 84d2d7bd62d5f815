"""A 14B DiT forward under a 4 GiB host budget, streaming its blocks from disk.

Writes a DiT of the real Wan2.1 T2V-14B configuration (40 blocks, dim 5120) with random bf16
weights to a safetensors file (~28.6 GB), tensor by tensor, never holding more than one tensor
in memory (reused if already there). Then, each in its own process so that each peak RSS
(`VmHWM`, see process_memory.py) is its own:

1. reads the file once with a 64 MiB buffer after dropping it from the page cache
   (posix_fadvise DONTNEED): the disk's speed, and the time any streamed forward must read for;
2. ``stream``: plans a CPU-only run under the host budget with policy "disk" (the planner's
   blocks resident in RAM, the others streamed), loads the DiT through that placement and runs
   one forward on a 1x16x1x16x16 latent (64 tokens) and a 512-token context, cache dropped first;
3. ``reference``: the same forward without the placement machinery: the model's top-level code
   written out here, each block built, loaded from the file, run and freed in turn.

It prints the plan, the streamed forward's time against the file's read time, both peaks against
the budget and the planner's prediction, and whether the two outputs are bit-identical. No GPU
part runs here; on a machine without CUDA it says so.

    python benchmarks/memory_14b.py                   # ~28.6 GB written under /tmp, then deleted
    python benchmarks/memory_14b.py --keep --path /data/dit14b.safetensors
    python benchmarks/memory_14b.py --layers 2 --path /tmp/dit2.safetensors   # a quick trial
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import process_memory  # beside this script

GIB = 1024**3
LATENT = (1, 16, 1, 16, 16)
TEXT_TOKENS = 512


LAYERS = 40


def config():
    """The released 14B configuration (``--layers`` fewer blocks for a quick trial)."""
    import attrs

    from wanflow.models.dit_config import WAN21_T2V_14B

    return attrs.evolve(WAN21_T2V_14B, num_layers=LAYERS)


def shapes() -> dict[str, tuple[int, ...]]:
    """Official names and shapes of the 14B DiT, from a model built on the meta device."""
    from wanflow.models.dit import WanDiT
    from wanflow.models.loading import build_on_meta

    return {k: tuple(v.shape) for k, v in sorted(build_on_meta(lambda: WanDiT(config())).state_dict().items())}


def write_checkpoint(path: Path, device: str = "cpu") -> None:
    """bf16 randn * 0.02 (norm weights 1), written tensor by tensor after a header made up front;
    drawn on ``device`` (on a GPU the drawing takes seconds where one CPU core takes minutes)."""
    import torch

    layout, offset = {}, 0
    for name, shape in shapes().items():
        size = 2 * int(torch.Size(shape).numel())
        layout[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(layout).encode()
    header += b" " * (-len(header) % 8)
    gen = torch.Generator(device).manual_seed(0)
    tmp = path.with_suffix(".partial")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for name, entry in layout.items():
            rows = entry["shape"][0]
            step = max(1, (64 << 20) // max(1, torch.Size(entry["shape"][1:]).numel()))
            for start in range(0, rows, step):  # 64 M elements at a time
                part = [min(step, rows - start), *entry["shape"][1:]]
                norm = "norm" in name and len(part) == 1
                values = (torch.ones(part) if norm
                          else (torch.randn(part, generator=gen, device=device) * 0.02).bfloat16().cpu())
                f.write(values.bfloat16().view(torch.uint8).numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_speed(path: Path) -> float:
    """Seconds to read the whole file cold with a 64 MiB buffer."""
    drop_cache(path)
    start = time.perf_counter()
    buf = bytearray(64 << 20)
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def model_inputs():
    import torch

    gen = torch.Generator().manual_seed(1)
    return (torch.randn(LATENT, generator=gen), torch.tensor([999.0]),
            torch.randn(1, TEXT_TOKENS, 4096, generator=gen))


# ----------------------------------------------------------------------------- children


def child_stream(path: Path, budget: int, out: Path, prepared: bool = False) -> dict:
    """Plan under the budget, load through the placement, one forward; the peak is this process's."""
    import torch

    from wanflow.memory import estimates, planner, sizes
    from wanflow.memory.streamed import load_placed_dit
    from wanflow.models.dit import keeps_fp32

    cfg = config()
    baseline = int(process_memory.current_mb() * 2**20)  # the interpreter and torch themselves
    size = sizes.component_size("dit", sizes.read_headers([path]), 2, keeps_fp32=keeps_fp32, blocks=True)
    activation = estimates.dit_forward_bytes(cfg, LATENT[2:], 2, prepared_contexts=int(prepared))
    plan = planner.plan(planner.Budgets(None, budget - baseline), "disk", [size],
                        [planner.StepDemand("forward", ("dit",), activation)])
    tiers = plan.placement("dit").blocks
    drop_cache(path)
    start = time.perf_counter()
    model, _handle = load_placed_dit([path], cfg, tiers, torch.bfloat16, "cpu")
    loaded = time.perf_counter() - start
    x, t, context = model_inputs()
    prepare = 0.0
    if prepared:  # as the denoise step runs: the prompt's keys/values once, then every step's forward
        start = time.perf_counter()
        with torch.inference_mode():
            context = model.prepare_context(context)
        prepare = time.perf_counter() - start
        drop_cache(path)
    start = time.perf_counter()
    with torch.inference_mode():
        y = model(x, t, context)
    forward = time.perf_counter() - start
    torch.save(y, out)
    return {"plan": plan.explain(), "predicted_host": plan.peaks[0].host_bytes + baseline,
            "baseline": baseline, "resident_blocks": tiers.count("device"), "load_s": loaded,
            "prepare_s": prepare, "forward_s": forward, "peak": int(process_memory.peak_mb() * 2**20)}


def child_reference(path: Path, out: Path) -> dict:
    """WanDiT.forward written out, each block loaded from the file, run and freed in turn."""
    import torch

    from wanflow.memory.streamed import open_dit_views
    from wanflow.models.dit import Block, WanDiT, keeps_fp32
    from wanflow.models.loading import build_on_meta, load_state_into
    from wanflow.models.residency import place_all
    from wanflow.models.rope import rope_table

    cfg = config()
    views = open_dit_views([path])
    def dtype(name: str) -> torch.dtype:
        return torch.float32 if keeps_fp32(name) else torch.bfloat16

    model = build_on_meta(lambda: WanDiT(cfg)).set_compute_dtype(torch.bfloat16)
    outer = {k: v for k, v in views.items() if not k.startswith("blocks.")}
    model.load_state_dict(place_all(outer, dtype, "cpu", borrowed=False), strict=False, assign=True)
    x, t, context = model_inputs()
    drop_cache(path)
    start = time.perf_counter()
    with torch.inference_mode():
        grid = (LATENT[2], LATENT[3] // 2, LATENT[4] // 2)
        tokens = model.patch_embedding(x.to(torch.bfloat16)).flatten(2).transpose(1, 2).contiguous()
        e, e0 = model.embed_time(t)
        rope = rope_table(grid, cfg.head_dim, x.device, torch.bfloat16)
        embedded = model.embed_context(context, None)
        for i in range(cfg.num_layers):
            prefix = f"blocks.{i}."
            block = build_on_meta(lambda: Block(cfg))
            part = {k[len(prefix):]: v for k, v in views.items() if k.startswith(prefix)}
            load_state_into(block, part, source=str(path), expected="a block",
                            dtype=lambda n, p=prefix: dtype(p + n), device="cpu")
            tokens = block(tokens, e0, embedded, rope, image_len=0, kernel="sdpa")
            del block
        y = model.unpatchify(model.head(tokens, e), grid)
    forward = time.perf_counter() - start
    torch.save(y, out)
    return {"forward_s": forward, "peak": int(process_memory.peak_mb() * 2**20)}


def run_child(args: argparse.Namespace, role: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", role, "--path", str(args.path),
           "--budget-gib", str(args.budget_gib), "--layers", str(args.layers), "--out", str(out)]
    cmd += ["--prepared"] if args.prepared else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{role} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("/tmp/wanflow-bench/dit14b.safetensors"))
    parser.add_argument("--budget-gib", type=float, default=4.0)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint file afterwards")
    parser.add_argument("--layers", type=int, default=40, help="fewer blocks for a quick trial")
    parser.add_argument("--prepared", action="store_true",
                        help="time the forward of a denoise step: the prompt's keys/values prepared once first")
    parser.add_argument("--child", choices=("stream", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global LAYERS
    LAYERS = args.layers
    budget = int(args.budget_gib * GIB)
    if args.child:
        result = (child_stream(args.path, budget, args.out, args.prepared) if args.child == "stream"
                  else child_reference(args.path, args.out))
        print(json.dumps(result))
        return
    try:
        bench(args, budget)
    finally:
        if not args.keep and args.path.exists():
            args.path.unlink()


def bench(args: argparse.Namespace, budget: int) -> None:
    import torch

    args.path.parent.mkdir(parents=True, exist_ok=True)
    if not args.path.exists():
        start = time.perf_counter()
        write_checkpoint(args.path)
        print(f"wrote {args.path} ({args.path.stat().st_size / 1e9:.1f} GB) in "
              f"{time.perf_counter() - start:.0f} s")
    size = args.path.stat().st_size
    read_s = read_speed(args.path)
    print(f"cold read of the file: {read_s:.1f} s ({size / read_s / 1e9:.2f} GB/s)")
    outs = args.path.parent / "stream.pt", args.path.parent / "reference.pt"
    stream = run_child(args, "stream", outs[0])
    print("\n".join(stream["plan"]))
    if args.prepared:
        print(f"stream: context keys/values prepared once in {stream['prepare_s']:.1f} s (every block read)")
    print(f"stream: load {stream['load_s']:.1f} s, forward {stream['forward_s']:.1f} s "
          f"({stream['forward_s'] / read_s:.2f}x the cold read); peak RSS "
          f"{stream['peak'] / GIB:.2f} GiB of the {budget / GIB:.2f} GiB budget "
          f"({'within' if stream['peak'] <= budget else 'OVER'}); planner predicted "
          f"{stream['predicted_host'] / GIB:.2f} GiB (process baseline {stream['baseline'] / GIB:.2f} GiB)")
    reference = run_child(args, "reference", outs[1])
    a, b = torch.load(outs[0]), torch.load(outs[1])
    same = torch.equal(a, b)
    if not same:
        print(f"max |stream - reference| = {(a.float() - b.float()).abs().max().item():.3g} "
              f"(of max |reference| {b.float().abs().max().item():.3g})")
    print(f"reference (block by block, no placement): forward {reference['forward_s']:.1f} s, "
          f"peak RSS {reference['peak'] / GIB:.2f} GiB; outputs bit-identical: {same}")
    for out in outs:
        out.unlink()
    if not torch.cuda.is_available():
        print("GPU part not measured: no CUDA device on this machine.")


if __name__ == "__main__":
    main()
