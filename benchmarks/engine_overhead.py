"""Engine overhead: a fully cached rerun vs the first run, and the second weight fingerprint.

A plan of 5 chained steps over 1 GB of fake weights (5 × 200 MB). Each step reads its weights
and reduces them, like a loader would. Targets: cached rerun ≤ 2 % of the first run; the
second fingerprint of the weights (stat memo) < 10 ms.

    python benchmarks/engine_overhead.py [--gb 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import structlog

from wanflow.engine import Cache, RunOptions, StepSpec, WeightFile, run_job

N_STEPS = 5


@attrs.frozen
class Layer:
    """Reads its weight file in full and mixes it with its input."""

    kind: str = "layer"
    version: int = 1
    reads: tuple[str, ...] = ("seed",)
    output: str = "bytes"
    first: bool = False

    def run(self, ctx: Any) -> bytes:
        h = hashlib.md5(repr(ctx.params).encode())
        with open(ctx.weight("w"), "rb") as f:
            while chunk := f.read(16 << 20):
                h.update(chunk[::4096])
        prev = b"" if self.first else ctx.input("x")
        return h.digest() * (1 << 15) + prev[:16]  # 512 KiB activations


@attrs.frozen
class Recipe:
    weights: tuple[Path, ...]
    name: str = "bench"
    model: str = "bench"
    text: str = "name = 'bench'\n"
    values: dict = attrs.field(factory=lambda: {"seed": 0, "memory.policy": "auto"})

    def canonical_toml(self) -> str:
        return self.text

    def input_files(self) -> dict[str, Path]:
        return {}

    def sweep_jobs(self) -> list[Recipe]:
        return [self]


@attrs.frozen
class Chain:
    def steps(self, r: Recipe) -> list[StepSpec]:
        specs = []
        for i, w in enumerate(r.weights):
            inputs = {"x": f"layer{i - 1}"} if i else {}
            specs.append(StepSpec(f"layer{i}", Layer(first=not i), inputs=inputs, weights={"w": WeightFile(w)},
                                  archive_as="out.bin" if i == len(r.weights) - 1 else None))
        return specs


def make_weights(root: Path, total_gb: float) -> tuple[Path, ...]:
    size = int(total_gb * 2**30 / N_STEPS)
    block = hashlib.sha256(b"w").digest() * (1 << 15)  # 1 MiB
    paths = []
    for i in range(N_STEPS):
        p = root / f"w{i}.safetensors"
        with open(p, "wb") as f:
            for _ in range(size // len(block)):
                f.write(bytes([i]) + block[1:])
        paths.append(p)
    return tuple(paths)


def timed_run(recipe: Recipe, cache: Cache, runs: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = run_job(recipe, Chain(), cache, RunOptions(runs_dir=runs, quiet=True))
    return time.perf_counter() - t0, sum(r.hit for r in out.results.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = Recipe(make_weights(root, args.gb))
        with Cache(root / "cache") as cache:
            first, hits1 = timed_run(recipe, cache, root / "runs")
            second, hits2 = timed_run(recipe, cache, root / "runs")
            t0 = time.perf_counter()
            for w in recipe.weights:
                cache.memo.digest(w)
            fp_ms = (time.perf_counter() - t0) * 1e3
    print(f"plan: {N_STEPS} steps over {args.gb:.2f} GB of weights")
    print(f"first run:           {first:8.3f} s  ({hits1} hits)")
    print(f"fully cached rerun:  {second:8.3f} s  ({hits2} hits)")
    print(f"cached/first:        {second / first:8.2%}   (target <= 2 %)")
    print(f"2nd fingerprint:     {fp_ms:8.2f} ms (target < 10 ms)")


if __name__ == "__main__":
    main()
