"""A PNG strip of a run's frames, for the README: every k-th decoded frame side by side.

    python -m scripts.quickstart.frame_strip OUT.png [--recipe recipes/quickstart.toml] [--every 4] [--scale 2]

Runs the recipe (a cache hit when it already ran) and reads the decoded frames from the cache
(``RunResult.frames``), so the strip shows exactly what the model drew, with no video compression.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def strip(frames: np.ndarray, every: int = 4, scale: int = 2, gap: int = 2) -> np.ndarray:
    """uint8 (T, H, W, 3) -> one uint8 image: frames 0, every, 2·every, … in a row, each
    enlarged ``scale`` times (nearest: pixels stay pixels), ``gap`` white pixels between them."""
    picked = frames[::every]
    big = picked.repeat(scale, axis=1).repeat(scale, axis=2)  # (n, H·s, W·s, 3)
    n, h, w, _ = big.shape
    out = np.full((h, n * w + (n - 1) * gap, 3), 255, np.uint8)
    for i, frame in enumerate(big):
        out[:, i * (w + gap):i * (w + gap) + w] = frame
    return out


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    import wanflow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--recipe", type=Path, default=Path("recipes/quickstart.toml"))
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--scale", type=int, default=2)
    args = ap.parse_args(argv)
    result = wanflow.run(args.recipe)
    Image.fromarray(strip(result.frames(), args.every, args.scale)).save(args.out, optimize=True)
    sys.stdout.write(f"{args.out} from {result.archive}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
