"""Time and peak memory of one Wan DiT forward: wanflow against diffusers' WanTransformer3DModel.

The real Wan2.1 T2V-1.3B configuration (dim 1536, ffn 8960, 12 heads, 30 layers) with random
weights, a (1, 16, 5, 32, 32) latent and 512 text tokens. Both models load the same checkpoint
(diffusers layout, saved in the dtype measured) in their own subprocess, so that each peak RSS
is clean; the script prints medians (wall and process CPU time, the latter being steadier on
a shared machine), peaks, the ratios wanflow/diffusers, the agreement of the
two outputs, and the fraction of this machine's GEMM peak (measured in the same run) reached.

    python benchmarks/dit_forward.py                 # full model, minutes on a 2-core CPU
    python benchmarks/dit_forward.py --layers 4 --repeats 3
    python benchmarks/dit_forward.py --device cuda   # synchronised times, GPU peak allocation

On a CPU without bf16 kernels (AVX2 only) wanflow multiplies bf16 weights in fp32
(wanflow.models.precision) while diffusers runs torch's bf16 GEMMs, several times slower there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

import process_memory  # beside this script

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LATENT = (1, 16, 5, 32, 32)
TEXT_TOKENS = 512


def config(layers: int):
    """The 1.3B configuration with `layers` blocks."""
    from wanflow.models.dit_config import WAN21_T2V_1_3B

    return attrs.evolve(WAN21_T2V_1_3B, num_layers=layers)


def write_checkpoint(folder: Path, layers: int, dtype: torch.dtype) -> None:
    """Random weights (std 0.02; norms 1) in diffusers' layout, with its config.json."""
    from safetensors.torch import save_file

    from wanflow.models.dit import WanDiT
    from wanflow.models.dit_keys import OFFICIAL_TO_DIFFUSERS
    from wanflow.models.loading import build_on_meta, rename_keys

    cfg = config(layers)
    shapes = build_on_meta(lambda: WanDiT(cfg)).state_dict()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, meta in sorted(shapes.items()):
        norm = "norm" in name and meta.ndim == 1
        state[name] = torch.ones(meta.shape) if norm else torch.randn(meta.shape, generator=gen) * 0.02
        state[name] = state[name].to(dtype)
    save_file(rename_keys(state, OFFICIAL_TO_DIFFUSERS), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(diffusers_config(cfg)))


def diffusers_config(cfg) -> dict:
    """diffusers' config for the same architecture."""
    return {
        "_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
        "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim, "out_channels": cfg.out_dim, "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": cfg.eps,
        "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    }


def model_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded latent, timestep and a full 512-token text context."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(LATENT, generator=gen)
    context = torch.randn(1, TEXT_TOKENS, 4096, generator=gen)
    return x, torch.tensor([999.0]), context


def child(impl: str, dtype_name: str, folder: Path, repeats: int, out: Path, device: str) -> None:
    """Load, warm up, time `repeats` forwards; write timings, peak memory and the output."""
    dtype = DTYPES[dtype_name]
    cuda = device.startswith("cuda")
    x, t, context = (v.to(device) for v in model_inputs())
    if impl == "wanflow":
        from wanflow.models.dit_loader import load_dit

        model = load_dit(folder / "diffusion_pytorch_model.safetensors", dtype=dtype, device=device)
        run = lambda: model(x, t, context)  # noqa: E731
    else:
        from diffusers import WanTransformer3DModel

        model = WanTransformer3DModel.from_pretrained(folder, torch_dtype=dtype).to(device)
        xd, cd = x.to(dtype), context.to(dtype)
        run = lambda: model(xd, t, cd, return_dict=False)[0]  # noqa: E731
    model.eval()
    times, cpu_times = [], []
    with torch.inference_mode():
        result = run()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            run()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = process_memory.peak_mb()  # its own, not the parent's (see process_memory)
    torch.save(result.float().cpu(), out.with_suffix(".pt"))
    out.write_text(json.dumps({"times": times, "cpu_times": cpu_times, "peak_mb": peak_mb}))


def measure(impl: str, dtype_name: str, folder: Path, repeats: int, device: str) -> dict:
    """Run one measurement in a fresh interpreter."""
    out = folder / f"{impl}-{dtype_name}.json"
    cmd = [sys.executable, __file__, "--child", impl, dtype_name, str(folder), str(repeats), str(out), device]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["output"] = torch.load(out.with_suffix(".pt"))
    return result


def gemm_peak(dtype: torch.dtype, device: str) -> float:
    """GFLOP/s of a large matmul in this dtype (the machine's practical ceiling)."""
    a = torch.randn(1280, 1536, dtype=dtype, device=device)
    w = torch.randn(8960, 1536, dtype=dtype, device=device)
    F.linear(a, w)  # the FFN's first projection, in nn.Linear's weight layout
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start, n = time.perf_counter(), 3
    for _ in range(n):
        F.linear(a, w)
    sync()
    return 2 * 1280 * 1536 * 8960 * n / (time.perf_counter() - start) / 1e9


def forward_gflop(cfg) -> float:
    """Matmul FLOPs of one forward (projections, FFN, attention, embeddings)."""
    f, h, w = LATENT[2], LATENT[3] // 2, LATENT[4] // 2
    tokens, d = f * h * w, cfg.dim
    per_block = (
        2 * tokens * d * d * 4  # self-attention q, k, v, o
        + 2 * 2 * tokens * tokens * d  # self-attention scores and values
        + 2 * tokens * d * d * 2 + 2 * TEXT_TOKENS * d * d * 2  # cross q, o and k, v
        + 2 * 2 * tokens * TEXT_TOKENS * d  # cross scores and values
        + 2 * 2 * tokens * d * cfg.ffn_dim  # FFN
    )
    embed = 2 * TEXT_TOKENS * (cfg.text_dim * d + d * d) + 2 * tokens * d * cfg.in_dim * 4
    return (cfg.num_layers * per_block + embed) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=30, help="blocks (30 = the real 1.3B)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="alternating wanflow/diffusers rounds")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, dtype_name, folder, repeats, out, device = args.child
        child(impl, dtype_name, Path(folder), int(repeats), Path(out), device)
        return
    sys.stdout.reconfigure(line_buffering=True)
    cfg = config(args.layers)
    print(f"Wan DiT 1.3B config, {args.layers} layers, latent {LATENT}, {TEXT_TOKENS} text tokens, "
          f"{torch.get_num_threads()} threads, device {args.device}, "
          f"median of {args.rounds} x {args.repeats} timed runs")
    for dtype_name in args.dtypes.split(","):
        with tempfile.TemporaryDirectory(prefix="wanflow-bench-") as tmp:
            report(dtype_name, Path(tmp), args, cfg)


def alternate(dtype_name: str, folder: Path, repeats: int, rounds: int, device: str) -> dict[str, dict]:
    """Alternate the two implementations (ABAB...) so that drifting machine load hits both alike."""
    results: dict[str, dict] = {}
    for _ in range(rounds):
        for impl in ("wanflow", "diffusers"):
            r = measure(impl, dtype_name, folder, repeats, device)
            if impl in results:
                r["times"] += results[impl]["times"]
                r["cpu_times"] += results[impl]["cpu_times"]
                r["peak_mb"] = max(r["peak_mb"], results[impl]["peak_mb"])
            results[impl] = r
    return results


def report(dtype_name: str, folder: Path, args: argparse.Namespace, cfg) -> None:
    """Measure both implementations in one dtype and print the comparison."""
    write_checkpoint(folder, args.layers, DTYPES[dtype_name])
    results = alternate(dtype_name, folder, args.repeats, args.rounds, args.device)
    ours, ref = results["wanflow"], results["diffusers"]
    t_ours, t_ref = statistics.median(ours["times"]), statistics.median(ref["times"])
    cpu_ours, cpu_ref = statistics.median(ours["cpu_times"]), statistics.median(ref["cpu_times"])
    diff = (ours["output"] - ref["output"]).abs().max() / ref["output"].abs().max()
    from wanflow.models.precision import compute_dtype

    dtype = DTYPES[dtype_name]
    kernel = compute_dtype(torch.empty(0, dtype=dtype, device=args.device))  # what wanflow multiplies in
    peaks = {"diffusers": gemm_peak(dtype, args.device)}
    peaks["wanflow"] = peaks["diffusers"] if kernel == dtype else gemm_peak(kernel, args.device)
    print(f"\n[{dtype_name}]  GEMM peak {peaks['diffusers']:.0f} GFLOP/s"
          + ("" if kernel == dtype else f" ({peaks['wanflow']:.0f} in {kernel}, which wanflow multiplies in)")
          + f", forward {forward_gflop(cfg):.0f} GFLOP")
    for impl, r, t, cpu in (("wanflow", ours, t_ours, cpu_ours), ("diffusers", ref, t_ref, cpu_ref)):
        frac = forward_gflop(cfg) / t / peaks[impl]
        memory = "GPU peak" if args.device.startswith("cuda") else "peak RSS"
        print(f"  {impl:<9} {t:7.2f} s wall, {cpu:7.2f} s CPU  {memory} {r['peak_mb']:8.0f} MB"
              f"  ({frac:.0%} of GEMM peak)")
    memory = ours["peak_mb"] / ref["peak_mb"]
    print(f"  ratio wanflow/diffusers: time {t_ours / t_ref:.3f}x (CPU time {cpu_ours / cpu_ref:.3f}x)"
          f"  memory {memory:.3f}x"
          f"  | outputs differ by {diff:.2e} of their scale")


if __name__ == "__main__":
    main()
