"""Time and peak memory of the Wan2.1 VAE: wanflow against diffusers' AutoencoderKLWan.

The real Wan2.1 VAE configuration (126.9 M parameters) with random weights: decode of a
(1, 16, 5, 32, 32) latent to 17x256x256 and encode of such a video, untiled and tiled, fp32
and bf16. Both sides load the same safetensors file (official keys; diffusers' through our key
table) in their own subprocess, so each peak RSS is clean; both import diffusers, so the
baselines are equal. Printed per case: median seconds, the process's own peak RSS (VmHWM, see
process_memory.py), the RSS growth during the call (activations), the ratios wanflow/diffusers
and the largest output difference.

Tiling uses the same tiles on both sides: 160 px every 96 px at the default size (wanflow:
TileSpec((20, 20), (12, 12)) in latents; diffusers: enable_tiling(160, 160, 96, 96)); wanflow
spreads its tiles evenly (2 per axis here) where diffusers steps by the stride (3, the last
one narrow), so the two do not blend identically and `max|diff|` is then a tiling difference.

    python benchmarks/vae.py                               # all 8 cases, many minutes on 2 cores
    python benchmarks/vae.py --ops decode --dtypes fp32 --tiling off --size 16 --repeats 2
    python benchmarks/vae.py --device cuda                 # on a GPU: GPU peak memory, synced times

Runs are alternated between the two sides and each side's best is kept, because a busy
machine disturbs single runs by tens of percent; `cpu x` (user+sys seconds) is steadier.
On CUDA each side first runs one warm-up call; the timed call is synchronised and its memory
is the GPU's peak allocation (torch.cuda.max_memory_allocated) instead of RSS.

On CPUs without native bf16 (AVX2 only) torch's bf16 conv3d runs at ~0.4 GFLOP/s. wanflow then
convolves in fp32 over bf16 weights and activations (wanflow.models.precision); diffusers runs
torch's bf16 kernels and needs hours at the default size, so measure bf16 there at `--size 4`
(32 px) or `--size 8` (64 px).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import process_memory  # beside this script

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LATENT = (1, 16, 5, 32, 32)  # --size changes the last two


def tiling(size: int) -> tuple[int, int]:
    """Tile and stride in latents: 5/8 and 3/8 of the grid (20 and 12 at the default 32)."""
    return size * 5 // 8, size * 3 // 8


def write_checkpoint(path: Path, dtype: torch.dtype) -> None:
    """Random weights, fan-in scaled (so activations neither vanish nor explode), norms 1."""
    from safetensors.torch import save_file

    from wanflow.models.loading import build_on_meta
    from wanflow.models.vae import WAN21, VideoVAE

    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in build_on_meta(lambda: VideoVAE(WAN21)).state_dict().items():
        if key.endswith("gamma"):
            state[key] = torch.ones(meta.shape)
        elif meta.dim() == 1:
            state[key] = torch.randn(meta.shape, generator=gen) * 0.01
        else:
            state[key] = torch.randn(meta.shape, generator=gen) / meta[0].numel() ** 0.5
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path))


def inputs(op: str, size: int) -> torch.Tensor:
    """Decode: a (1, 16, 5, size, size) latent; encode: the (1, 3, 17, 8 size, 8 size) video."""
    gen = torch.Generator().manual_seed(1)
    if op == "decode":
        return torch.randn(*LATENT[:3], size, size, generator=gen)
    return torch.rand(1, 3, 4 * LATENT[2] - 3, 8 * size, 8 * size, generator=gen) * 2 - 1


def run_wanflow(ckpt: Path, op: str, dtype: torch.dtype, tiled: bool, size: int, device: str):
    from wanflow.models.vae import TileSpec
    from wanflow.models.vae.loader import load_vae

    vae = load_vae(ckpt, "wan2.1", dtype, device)
    size, stride = tiling(size)
    tile = TileSpec((size, size), (stride, stride)) if tiled else None
    if op == "decode":
        return lambda x: vae.decode(x, tile=tile)
    return lambda x: vae.encode(x, tile=tile)


def run_diffusers(ckpt: Path, op: str, dtype: torch.dtype, tiled: bool, size: int, device: str):
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    from wanflow.models.vae import WAN21
    from wanflow.models.vae.keys import apply_stages, official_to_diffusers
    from wanflow.models.vae.normalization import denormalize, normalize

    with torch.device("meta"):
        vae = AutoencoderKLWan()
    state = apply_stages(load_file(str(ckpt)), official_to_diffusers(WAN21))
    vae.load_state_dict(state, strict=True, assign=True)
    vae.to(device).eval()
    if tiled:
        px, stride = (8 * v for v in tiling(size))
        vae.enable_tiling(px, px, stride, stride)

    @torch.no_grad()
    def call(x):
        if op == "decode":
            raw = denormalize(x, WAN21.mean, WAN21.std).to(dtype)
            return vae.decode(raw).sample.float()
        mu = vae.encode(x.to(dtype)).latent_dist.mean
        return normalize(mu, WAN21.mean, WAN21.std)

    return call


def child(args: argparse.Namespace) -> None:
    """One measurement in this process: build, run once, report JSON on stdout."""
    import diffusers  # noqa: F401  (equal import baseline for both sides)

    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    runner = run_wanflow if args.impl == "wanflow" else run_diffusers
    fn = runner(Path(args.ckpt), args.op, DTYPES[args.dtype], args.tiled, args.size, args.device)
    x = inputs(args.op, args.size).to(args.device)
    if cuda:  # kernels chosen and the allocator warmed on both sides alike
        fn(x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    load_peak = process_memory.peak_mb()
    process_memory.reset_peak()
    held = process_memory.current_mb()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    out = fn(x)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    torch.save(out.float().cpu(), args.out)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        memory = {"peak_mb": peak, "grow_mb": peak - held / 2**20}
    else:  # the process's own peak (see process_memory), and how far the call rose above its start
        run_peak = process_memory.peak_mb()
        memory = {"peak_mb": max(load_peak, run_peak), "grow_mb": run_peak - held}
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, **memory}))


def measure(impl: str, ckpt: Path, op: str, dtype: str, tiled: bool, args, out: Path) -> dict:
    """One fresh subprocess: one call, its wall and CPU seconds, peak memory and its growth."""
    cmd = [sys.executable, __file__, "--child", impl, "--ckpt", str(ckpt), "--ops", op, "--dtypes", dtype,
           "--size", str(args.size), "--device", args.device, "--out", str(out)] + (["--tiled"] if tiled else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved(ckpt: Path, op: str, dtype: str, tiled: bool, args, tmp: Path) -> dict:
    """Alternate the two sides `repeats` times; keep each side's best (least disturbed) run."""
    runs: dict[str, list[dict]] = {"wanflow": [], "diffusers": []}
    for _ in range(args.repeats):
        for impl in runs:
            runs[impl].append(measure(impl, ckpt, op, dtype, tiled, args, tmp / f"{impl}.pt"))
    return {impl: {k: min(r[k] for r in rs) for k in rs[0]} for impl, rs in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", default="decode,encode")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--tiling", default="off,on", help="off, on, or off,on")
    p.add_argument("--repeats", type=int, default=1, help="alternating runs per side (best kept)")
    p.add_argument("--size", type=int, default=LATENT[-1], help="latent height = width (32: 256 px)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--child", choices=["wanflow", "diffusers"])
    p.add_argument("--ckpt"), p.add_argument("--out"), p.add_argument("--tiled", action="store_true")
    args = p.parse_args()
    if args.child:
        args.impl, args.op, args.dtype = args.child, args.ops, args.dtypes
        return child(args)
    with tempfile.TemporaryDirectory(prefix="wanflow-vae-bench-") as tmp:
        table(args, Path(tmp))


def grow_ratio(w: dict, d: dict) -> str:
    """Growth ratio, or "-" where neither side grew past its load peak (small sizes)."""
    return "-" if max(w["grow_mb"], d["grow_mb"]) < 1 else f"{w['grow_mb'] / max(d['grow_mb'], 1):.2f}"


def table(args: argparse.Namespace, tmp: Path) -> None:
    """Write each dtype's checkpoint, measure every asked case, print one row per case."""
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    memory = "GPU max allocated" if args.device.startswith("cuda") else "RSS"
    print(f"torch {torch.__version__}, {where}; Wan2.1 VAE, random weights; memory = {memory}")
    print(f"latent (1, 16, 5, {args.size}, {args.size}) <-> video (1, 3, 17, {8 * args.size}, {8 * args.size})")
    print(f"{'case':<24}{'wanflow s':>10}{'diffusers s':>12}{'time x':>8}{'cpu x':>7}{'peak MB':>16}{'peak x':>8}"
          f"{'grow MB':>16}{'grow x':>8}{'max|diff|':>11}")
    for dtype in args.dtypes.split(","):
        ckpt = tmp / f"vae-{dtype}.safetensors"
        write_checkpoint(ckpt, DTYPES[dtype])
        for op in args.ops.split(","):
            for tiling in args.tiling.split(","):
                tiled = tiling == "on"
                r = interleaved(ckpt, op, dtype, tiled, args, tmp)
                diff = (torch.load(tmp / "wanflow.pt") - torch.load(tmp / "diffusers.pt")).abs().max().item()
                w, d = r["wanflow"], r["diffusers"]
                print(f"{op + ' ' + dtype + (' tiled' if tiled else ''):<24}{w['seconds']:>10.2f}"
                      f"{d['seconds']:>12.2f}{w['seconds'] / d['seconds']:>8.2f}{w['cpu_s'] / d['cpu_s']:>7.2f}"
                      f"{w['peak_mb']:>8.0f}/{d['peak_mb']:<7.0f}{w['peak_mb'] / d['peak_mb']:>8.2f}"
                      f"{w['grow_mb']:>8.0f}/{d['grow_mb']:<7.0f}{grow_ratio(w, d):>8}"
                      f"{diff:>11.2e}", flush=True)


if __name__ == "__main__":
    main()
