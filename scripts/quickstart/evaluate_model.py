"""Grade a quickstart model: generate every held-out combination over several seeds with
``wanflow``, classify the decoded frames, report accuracy per attribute.

    python -m scripts.quickstart.evaluate_model [--family FOLDER] [--seeds 3] [--json scores.json]

Without ``--family`` it grades the model that ships with wanflow (``wanflow-tiny``); with it,
every component is read from FOLDER (a family folder as ``build_family`` writes it, e.g. a DiT
exported by a training run copied beside the text encoder and VAE). The prompts are the plainest
wording of each held-out combination ("a red triangle moving up"), which the training split
never pairs; the frames graded are the decoded ones (``RunResult.frames``), not the mp4, so video
compression takes no part in the score.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from scripts.shapes.captions import canonical
from scripts.shapes.classify import classify
from scripts.shapes.vocabulary import HELD_OUT, Combo

ATTRIBUTES = ("colour", "shape", "motion")


@attrs.frozen
class Sample:
    """One generated clip and what the classifier read from it."""

    combo: Combo
    seed: int
    seen: Combo

    def right(self, attribute: str) -> bool:
        i = ATTRIBUTES.index(attribute)
        return self.combo[i] == self.seen[i]


def recipe(combo: Combo, seed: int, family: Path | None) -> dict:
    """The recipe dict that draws ``combo`` with ``seed`` (the family's defaults for the rest)."""
    out: dict = {"name": "quickstart-eval", "model": "wanflow-tiny",
                 "prompt": {"text": canonical(*combo)}, "sampler": {"seed": seed}}
    if family is not None:
        out["models"] = {c: {"source": str(family)} for c in ("dit", "text_encoder", "vae")}
    return out


def generate(combos: Iterable[Combo], seeds: Sequence[int], family: Path | None = None,
             runs_dir: Path | None = None, cache_dir: Path | None = None,
             frames: list | None = None) -> list[Sample]:
    """Draw and classify each combination with each seed; each clip's frames are appended to
    ``frames`` when one is given (for a contact sheet)."""
    import wanflow

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        runs = runs_dir or Path(scratch) / "runs"
        for combo in combos:
            for seed in seeds:
                result = wanflow.run(recipe(combo, seed, family), runs_dir=runs, cache_dir=cache_dir)
                clip = result.frames()
                seen = classify(clip)
                if frames is not None:
                    frames.append(clip)
                out.append(Sample(combo, seed, (seen.colour, seen.shape, seen.motion)))
    return out


def accuracy(samples: Sequence[Sample]) -> dict[str, float]:
    """Share right per attribute, and ``overall`` (all three right)."""
    n = max(1, len(samples))
    scores = {a: sum(s.right(a) for s in samples) / n for a in ATTRIBUTES}
    scores["overall"] = sum(all(s.right(a) for a in ATTRIBUTES) for s in samples) / n
    return scores


def report(samples: Sequence[Sample]) -> str:
    scores = accuracy(samples)
    lines = [f"{len(samples)} clips ({len({s.combo for s in samples})} held-out combinations x "
             f"{len({s.seed for s in samples})} seeds): "
             + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())]
    for s in samples:
        if s.seen != s.combo:
            lines.append(f"  seed {s.seed}: asked {' '.join(s.combo)}, drew {' '.join(s.seen)}")
    return "\n".join(lines)


def contact_sheet(samples: Sequence[Sample], clips: Sequence[Any], picks: Sequence[int] = (0, 8, 16),
                  scale: int = 2, gap: int = 4) -> Any:
    """One uint8 image for checking the grades by eye: a row per combination, its seeds side by
    side, frames ``picks`` of each clip, ``gap`` white pixels between clips."""
    import numpy as np

    rows: dict[Combo, list[Any]] = {}
    for sample, clip in zip(samples, clips):
        shots = np.concatenate([clip[i] for i in picks], axis=1)
        rows.setdefault(sample.combo, []).append(shots.repeat(scale, axis=0).repeat(scale, axis=1))
    width = max(sum(s.shape[1] + gap for s in r) for r in rows.values())
    out = []
    for row in rows.values():
        line = np.full((row[0].shape[0], width, 3), 255, np.uint8)
        x = 0
        for shots in row:
            line[:, x:x + shots.shape[1]] = shots
            x += shots.shape[1] + gap
        out += [line, np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", type=Path, help="a family folder (default: the shipped wanflow-tiny)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per combination")
    ap.add_argument("--json", type=Path, help="also write the scores and every sample here")
    ap.add_argument("--sheet", type=Path, help="also write a PNG contact sheet (frames 0, 8, 16 of every clip)")
    args = ap.parse_args(argv)
    family = args.family.resolve() if args.family else None
    clips: list = []
    samples = generate(HELD_OUT, range(args.seeds), family, frames=clips)
    if args.sheet:
        from PIL import Image

        Image.fromarray(contact_sheet(samples, clips)).save(args.sheet)
    sys.stdout.write(report(samples) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"scores": accuracy(samples),
                                         "samples": [attrs.asdict(s) for s in samples]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
