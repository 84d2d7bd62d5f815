"""How far each attention backend's output is from an fp32 reference, at Wan's head shapes.

For every backend that can run on the device and dtype (wanflow's own and any plugin's), random
q, k, v (B, L, H, D) drawn in fp32 and cast to the working dtype go through the backend; the
reference is the ``math`` kernel on the same (cast) inputs in fp32. Printed per backend: the
largest and the mean absolute difference, the largest relative to the reference's largest value,
and the time of one call. The backends that cannot run here are listed with the reason.

    python benchmarks/attention_error.py                          # CPU: fp32 and bf16, 1.3B heads
    python benchmarks/attention_error.py --device cuda --dtypes bf16,fp16 --tokens 8192 --heads 40

q and k are unit-variance, as after Wan's RMSNorm; the reference is computed in query chunks,
so long sequences fit in memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wanflow.models.attention import math_attention
from wanflow.plugins import build_registry

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """softmax(QK^T/sqrt(D))V in fp32, one block of queries at a time: (B, Lq, H, D) fp32."""
    q, k, v = q.float(), k.float(), v.float()
    return torch.cat([math_attention(q[:, i:i + chunk], k, v) for i in range(0, q.shape[1], chunk)], dim=1)


def timed(kernel, q, k, v, device: str, repeats: int) -> tuple[torch.Tensor, float]:
    """The kernel's output and the median seconds of ``repeats`` calls after a warm-up."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = kernel(q, k, v)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        kernel(q, k, v)
        sync()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def measure(args: argparse.Namespace, dtype_name: str) -> None:
    """Print every runnable backend's difference from the fp32 reference in one dtype."""
    registry = build_registry()
    gen = torch.Generator().manual_seed(0)
    shape = (1, args.tokens, args.heads, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(args.device, DTYPES[dtype_name]) for _ in range(3))
    ref = reference(q, k, v)
    scale = ref.abs().max().item()
    print(f"\n[{dtype_name}] q, k, v {tuple(shape)} on {args.device}; reference: math in fp32 "
          f"(largest |value| {scale:.3f})")
    print(f"  {'backend':<10} {'max abs':>10} {'mean abs':>10} {'max/scale':>10} {'ms/call':>9}")
    for name, entry in sorted(registry.attention.items()):
        reasons = entry.problems(args.device, dtype_name)
        if reasons:
            print(f"  {name:<10} not measured: {'; '.join(reasons)}")
            continue
        with torch.inference_mode():
            out, seconds = timed(entry.load(), q, k, v, args.device, args.repeats)
        diff = (out.float() - ref).abs()
        print(f"  {name:<10} {diff.max().item():10.2e} {diff.mean().item():10.2e} "
              f"{diff.max().item() / scale:10.2e} {seconds * 1e3:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    parser.add_argument("--tokens", type=int, default=1560,
                        help="sequence length (1560: 480x832, one latent frame; 32760: 81 frames)")
    parser.add_argument("--heads", type=int, default=12, help="12 (1.3B) or 40 (14B)")
    parser.add_argument("--head-dim", type=int, default=128, help="Wan's head dimension")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    args = parser.parse_args()
    print(f"attention backends against an fp32 reference, {torch.get_num_threads()} CPU threads, torch "
          f"{torch.__version__}")
    for dtype_name in args.dtypes.split(","):
        measure(args, dtype_name)


if __name__ == "__main__":
    main()
