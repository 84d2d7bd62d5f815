"""Generate the shape-clip dataset the quickstart model trains on, deterministically from a seed.

    python scripts/make_shapes_dataset.py OUT [--seed 0] [--per-combo 8] [--frames 17] [--size 64]
    python scripts/make_shapes_dataset.py OUT --held-out --per-combo 3   # clips of the held-out combinations

OUT gets ``clips/*.mp4`` (with a JSON sidecar each), ``metadata.csv`` (video,prompt: DiffSynth's
layout), ``labels.csv`` (video,prompt,colour,shape,motion) and ``held_out.json``. The training
split never contains a held-out combination. See docs/quickstart-model.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shapes.dataset import plan_clips, write_dataset
from wanflow.logs import configure


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="folder to write (created; files in it are overwritten)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-combo", type=int, default=8, help="clips per colour×shape×motion combination")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip (Wan wants 4n+1)")
    ap.add_argument("--size", type=int, default=64, help="width and height in pixels")
    ap.add_argument("--held-out", action="store_true", help="write the held-out combinations instead")
    args = ap.parse_args(argv)
    configure(level=logging.INFO)  # one line per encoded clip is too much
    if args.per_combo < 1 or args.frames < 2 or args.size < 16:
        ap.error("--per-combo must be ≥ 1, --frames ≥ 2 and --size ≥ 16")
    clips = list(plan_clips(args.seed, args.per_combo, held_out=args.held_out, frames=args.frames,
                            height=args.size, width=args.size))
    write_dataset(args.out, clips, args.seed)
    print(f"wrote {len(clips)} clips to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
