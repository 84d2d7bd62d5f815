"""The shape-clip classifier and the evaluation built on it: right on ground truth, "unknown" on noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.shapes import classify as cls
from scripts.shapes import render, vocabulary
from scripts.shapes.classify import UNKNOWN, Classification, classify
from scripts.shapes.dataset import Clip, plan_clips, write_dataset
from scripts.shapes.evaluate import (
    Graded,
    LabelsError,
    accuracy,
    grade,
    read_labels,
    report,
)
from wanflow.output.video import read_frames

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = 0.98  # per attribute, on clips of every combination


def _scores(results: list[tuple[tuple[str, str, str], Classification]]) -> dict[str, float]:
    return {a: float(np.mean([getattr(r, a) == combo[i] for combo, r in results]))
            for i, a in enumerate(("colour", "shape", "motion"))}


def test_every_combination_is_recognised_from_rendered_frames():
    results = []
    for i, combo in enumerate(vocabulary.all_combos()):
        for k in range(2):
            spec = render.sample_spec(np.random.default_rng([11, i, k]), *combo)
            results.append((combo, classify(render.render(spec))))
    assert len(results) == 144
    assert all(value >= REQUIRED for value in _scores(results).values()), _scores(results)


def test_every_colour_shape_and_motion_is_recognised_after_mp4_encoding(tmp_path):
    """What the evaluation sees: decoded H.264. One clip per colour×shape, motions taking turns."""
    combos = [(c, s, vocabulary.MOTIONS[i % 4]) for i, (c, s) in
              enumerate((c, s) for c in vocabulary.COLOURS for s in vocabulary.SHAPES)]
    index = {combo: i for i, combo in enumerate(vocabulary.all_combos())}
    clips = [Clip(f"{i}.mp4", "", render.sample_spec(np.random.default_rng([3, index[combo]]), *combo))
             for i, combo in enumerate(combos)]
    write_dataset(tmp_path, clips, 3)
    graded = grade(read_labels(tmp_path / "labels.csv"), read_frames)
    assert len(graded) == 18 and {g.intended[2] for g in graded} == set(vocabulary.MOTIONS)
    scores = accuracy(graded)
    assert all(scores[a] >= REQUIRED for a in ("colour", "shape", "motion")), report(graded)


def _noise_clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (17, 8, 8, 3)).astype(np.uint8)
    smooth = rng.normal(0, 1, (17, 16, 16, 3)).cumsum(axis=1).cumsum(axis=2)
    smooth = np.clip(128 + 20 * smooth, 0, 255).astype(np.uint8).repeat(4, axis=1).repeat(4, axis=2)
    return {"uniform": rng.integers(0, 256, (17, 64, 64, 3), dtype=np.uint8),
            "blocks": blocks.repeat(8, axis=1).repeat(8, axis=2), "smooth": smooth,
            "blank": np.full((17, 64, 64, 3), 40, np.uint8)}


@pytest.mark.parametrize("kind", ["uniform", "blocks", "smooth", "blank"])
def test_noise_is_unknown_not_guessed(kind):
    result = classify(_noise_clips()[kind])
    assert (result.colour, result.shape, result.motion) == (UNKNOWN,) * 3 and result.reason


def test_an_object_jumping_around_is_not_coherent():
    rng = np.random.default_rng(1)
    spec = render.sample_spec(rng, "red", "ball", "left")
    frames = np.stack([render.render(spec)[0]] * 17)
    for t in range(17):  # the ball at a random place each frame
        frames[t] = np.roll(frames[t], tuple(rng.integers(-20, 20, 2)), axis=(0, 1))
    assert classify(frames).motion == UNKNOWN and "line" in classify(frames).reason


def test_still_or_diagonal_objects_keep_colour_and_shape_but_not_motion():
    spec = render.sample_spec(np.random.default_rng(2), "yellow", "triangle", "right")
    first = render.render(spec)[0]
    result = classify(np.stack([first] * 17))
    assert (result.colour, result.shape, result.motion) == ("yellow", "triangle", UNKNOWN)
    diagonal = np.stack([np.roll(first, (t, t), axis=(0, 1)) for t in range(9)])  # as far down as right
    assert classify(diagonal).motion == UNKNOWN and classify(diagonal).colour == "yellow"
    mostly_right = np.stack([np.roll(first, (t, 3 * t), axis=(0, 1)) for t in range(9)])
    assert classify(mostly_right).motion == "right"


def test_background_is_not_the_object():
    spec = render.sample_spec(np.random.default_rng(4), "white", "square", "up")
    result = classify(render.render(spec))
    assert result.colour == "white" and np.linalg.norm(np.subtract(result.rgb, 245)) < 20


def test_colours_far_from_the_palette_are_unknown():
    assert cls.nearest_colour(np.array([128.0, 128.0, 128.0])) == UNKNOWN
    assert cls.nearest_colour(np.array([200.0, 60.0, 50.0])) == "red"


def test_largest_component_follows_connectivity_not_distance():
    mask = np.zeros((20, 20), bool)
    mask[1:19:2, 1:19] = True  # a snake: rows joined alternately at the right and left ends
    for r in range(2, 18, 2):
        mask[r, 18 if r % 4 == 2 else 1] = True
    mask[19, 0] = True  # a lone speck
    largest = cls.largest_component(mask)
    assert largest.sum() == mask.sum() - 1 and not largest[19, 0]
    assert not cls.largest_component(np.zeros((5, 5), bool)).any()


def test_accuracy_counts_unknown_as_wrong_and_overall_needs_all_three():
    red = ("red", "ball", "left")
    graded = [Graded("a", red, Classification("red", "ball", "left")),
              Graded("b", red, Classification("red", UNKNOWN, "left")),
              Graded("c", red, Classification("blue", "ball", "left"))]
    assert accuracy(graded) == {"colour": 2 / 3, "shape": 2 / 3, "motion": 1.0, "overall": 1 / 3}
    assert "b: shape ball → unknown" in report(graded) and " a:" not in report(graded)


def test_labels_from_prompts_or_columns_and_bad_tables_rejected(tmp_path):
    (tmp_path / "p.csv").write_text('video,prompt\nx.mp4,"green box, falling"\n')
    assert read_labels(tmp_path / "p.csv") == [(tmp_path / "x.mp4", ("green", "square", "down"))]
    (tmp_path / "bad.csv").write_text("video,caption\nx.mp4,a red ball moving left\n")
    with pytest.raises(LabelsError, match="needs video and either"):
        read_labels(tmp_path / "bad.csv")
    (tmp_path / "vague.csv").write_text("video,prompt\nx.mp4,a red thing\n")
    with pytest.raises(LabelsError, match="line 2"):
        read_labels(tmp_path / "vague.csv")
    one_frame = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(LabelsError, match=r"x\.mp4: expected frames \(T ≥ 2"):
        grade(read_labels(tmp_path / "p.csv"), lambda path: one_frame)


def test_evaluate_cli_prints_accuracies_and_exits_2_on_a_bad_table(tmp_path):
    write_dataset(tmp_path, list(plan_clips(1, 1, held_out=True))[:3], 1)
    script = str(ROOT / "scripts" / "evaluate_shapes.py")
    done = subprocess.run([sys.executable, script, str(tmp_path / "labels.csv")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 videos" in done.stdout and " overall: 100.0%" in done.stdout
    done = subprocess.run([sys.executable, script, str(tmp_path / "missing.csv")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no such labels file" in done.stderr
