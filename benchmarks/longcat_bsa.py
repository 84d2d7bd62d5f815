"""LongCat-Video's block-sparse attention against dense attention over the same tokens, one layer.

The 720p refinement attends ~169,000 tokens a layer (48 latent frames of 44 x 80 tokens, 32 heads
of 128) block-sparsely: each 4 x 4 x 4 query chunk attends the 1/16 of key chunks whose means
score best (``wanflow.models.longcat_bsa``). This times its two implementations, gathering the
selected chunks for SDPA ("gather") and FlexAttention's compiled block-sparse kernel ("flex", its
compile not timed), against torch's dense SDPA over the same random q, k, v in the same process,
and prints each time, its ratio to dense, flex's ratio to gather and how far flex's output is from
gather's (the sparse outputs differ from dense by design; tests/models/test_longcat_bsa*.py check
their numbers).

    python benchmarks/longcat_bsa.py                                   # CPU: a small grid, fp32
    python benchmarks/longcat_bsa.py --device cuda --grid 48x44x80 --dtype bf16   # one 720p layer
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wanflow.models.longcat_bsa import BsaParams, block_sparse_attention  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def timed(fn, device: str, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` calls after one untimed, and the last output."""
    out = fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="8x16x16", help="TxHxW latent tokens (720p refinement: 48x44x80)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9375, help="the release's bsa_params")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    grid = tuple(int(n) for n in args.grid.split("x"))
    dtype = DTYPES[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    params = BsaParams(sparsity=args.sparsity)
    tokens = grid[0] * grid[1] * grid[2]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, tokens, args.heads, args.head_dim, generator=gen).to(args.device, dtype)
               for _ in range(3))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"grid {grid} ({tokens} tokens), {args.heads} heads of {args.head_dim}, {str(dtype).removeprefix('torch.')}, "
          f"{name}, torch {torch.__version__}; sparsity {args.sparsity}, chunks {params.chunk_q}", flush=True)
    with torch.inference_mode():
        dense_s, _ = timed(lambda: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2), args.device, args.repeats)
        print(f"  dense SDPA           {dense_s * 1e3:9.1f} ms", flush=True)
        gather_s, gathered = timed(lambda: block_sparse_attention(q, k, v, grid, grid, params), args.device,
                                   args.repeats)
        print(f"  block-sparse gather  {gather_s * 1e3:9.1f} ms   {gather_s / dense_s:.3f}x dense", flush=True)
        start = time.perf_counter()
        flexed = block_sparse_attention(q, k, v, grid, grid, params, implementation="flex")  # compiles
        compile_s = time.perf_counter() - start
        flex_s, flexed = timed(lambda: block_sparse_attention(q, k, v, grid, grid, params, implementation="flex"),
                               args.device, args.repeats)
    apart = ((flexed.float() - gathered.float()).abs().max() / gathered.float().abs().max()).item()
    print(f"  block-sparse flex    {flex_s * 1e3:9.1f} ms   {flex_s / dense_s:.3f}x dense, "
          f"{flex_s / gather_s:.3f}x gather (first call, compiling: {compile_s:.1f} s; "
          f"max |flex - gather| / max |gather| = {apart:.1e})", flush=True)


if __name__ == "__main__":
    main()
