"""Classify videos of shape clips and print how often colour, shape and motion match their labels.

    python scripts/evaluate_shapes.py LABELS.csv [--json scores.json]

LABELS.csv has a ``video`` column (relative to the CSV's folder) and either colour,shape,motion
or a prompt to read them from; ``make_shapes_dataset.py`` writes one as ``labels.csv``. The
classifier is described in docs/quickstart-model.md ("Evaluation"). Exit status 2 on a bad table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shapes.evaluate import LabelsError, accuracy, grade, read_labels, report


def main(argv: list[str] | None = None) -> int:
    from wanflow.errors import WanflowError
    from wanflow.output.video import read_frames

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("labels", type=Path, help="CSV: video and colour,shape,motion (or prompt)")
    ap.add_argument("--json", type=Path, help="also write the accuracies here as JSON")
    args = ap.parse_args(argv)
    try:
        graded = grade(read_labels(args.labels), read_frames)
    except (LabelsError, WanflowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(graded))
    if args.json:
        args.json.write_text(json.dumps(accuracy(graded), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
