"""The shape-clip dataset: vocabulary and held-out split, seeded rendering, captions, files on disk."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scripts.shapes import captions, render, vocabulary
from scripts.shapes.dataset import plan_clips, write_dataset
from wanflow.output.video import read_frames

ROOT = Path(__file__).resolve().parents[2]


def test_held_out_combinations_never_train_but_their_parts_do():
    held, train = set(vocabulary.HELD_OUT), vocabulary.training_combos()
    assert len(vocabulary.all_combos()) == 72 and len(held) == 10 and len(train) == 62
    assert held.isdisjoint(train)
    for i, values in enumerate((vocabulary.COLOURS, vocabulary.SHAPES, vocabulary.MOTIONS)):
        assert {c[i] for c in train} == set(values)  # each word is still taught
    assert {c[:2] for c in train} == {c[:2] for c in vocabulary.all_combos()}  # each colour×shape too


def test_training_plan_has_no_held_out_prompt_and_held_out_plan_only_those():
    train = [captions.parse(c.prompt) for c in plan_clips(0, 3)]
    assert len(train) == 62 * 3 and not set(train) & set(vocabulary.HELD_OUT)
    held = [captions.parse(c.prompt) for c in plan_clips(0, 2, held_out=True)]
    assert Counter(held) == Counter({c: 2 for c in vocabulary.HELD_OUT})


def test_same_seed_same_frames_and_clips_do_not_depend_on_the_count():
    a = list(plan_clips(7, 2))
    b = [c for c in plan_clips(7, 3) if not c.video.endswith("_0002.mp4")]
    assert len(a) == len(b) == 124 and a == b  # same specs and prompts, whatever the count
    for x, y in zip(a[::25], b[::25]):
        assert render.render(x.spec).tobytes() == render.render(y.spec).tobytes()
    other = list(plan_clips(8, 2))
    assert sum(x.spec != y.spec for x, y in zip(a, other)) == 124
    assert render.render(a[0].spec).tobytes() != render.render(other[0].spec).tobytes()


@pytest.mark.parametrize("motion", vocabulary.MOTIONS)
def test_shape_stays_inside_and_visibly_moves_its_way(motion):
    rng = np.random.default_rng(3)
    step = np.array(render.DIRECTIONS[motion])
    for shape in vocabulary.SHAPES:
        for _ in range(20):
            spec = render.sample_spec(rng, "red", shape, motion, frames=17, height=64, width=64)
            cover = np.stack([render.coverage(shape, spec.centre(t), spec.radius, 64, 64) for t in (0, 16)])
            border = np.concatenate([cover[:, 0], cover[:, -1], cover[:, :, 0], cover[:, :, -1]], axis=1)
            assert border.max() == 0  # never touches the edge, so never leaves the frame
            ys, xs = np.mgrid[:64, :64]
            centroids = [np.array([(c * xs).sum(), (c * ys).sum()]) / c.sum() for c in cover]
            moved = centroids[1] - centroids[0]
            assert moved @ step > 12 and abs(moved @ step[::-1]) < 0.05  # ≥ 12 px along, ~none across
            assert 16 <= spec.background <= 72


def test_shapes_have_equal_area_and_distinct_box_fill():
    fills = {}
    for shape in vocabulary.SHAPES:
        cover = render.coverage(shape, (32.0, 32.0), 10.0, 64, 64)
        assert cover.sum() == pytest.approx(np.pi * 100, rel=0.04)  # up to ¼ px per edge
        ys, xs = np.nonzero(cover > 0.5)
        fills[shape] = (cover > 0.5).sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    assert fills["square"] > 0.9 and 0.72 < fills["ball"] < 0.84 and 0.45 < fills["triangle"] < 0.6


def test_rendered_colours_are_the_palette_over_a_grey_background():
    spec = render.sample_spec(np.random.default_rng(0), "purple", "square", "left")
    frames = render.render(spec)
    assert frames.dtype == np.uint8 and frames.shape == (17, 64, 64, 3)
    colours = {tuple(p) for p in frames.reshape(-1, 3)}
    assert (spec.background,) * 3 in colours and vocabulary.COLOURS["purple"] in colours


def test_captions_vary_and_read_back_to_their_combination():
    rng = np.random.default_rng(0)
    for combo in vocabulary.all_combos():
        texts = {captions.caption(rng, *combo) for _ in range(40)}
        assert len(texts) >= 8 and all(captions.parse(t) == combo for t in texts)
        assert captions.parse(captions.canonical(*combo)) == combo
    skeletons, shape_words, phrases = set(), set(), set()
    for _ in range(300):  # the wording varies in sentence, shape word and motion phrase
        text = captions.caption(rng, "red", "square", "up").replace("red", "{c}")
        word = next(w for w in sorted(captions.SHAPE_WORDS["square"], key=len, reverse=True) if w in text)
        phrase = next(p for p in captions.MOTION_PHRASES["up"] if p in text)
        skeletons.add(text.replace(word, "{s}").replace(phrase, "{m}"))
        shape_words.add(word)
        phrases.add(phrase)
    assert len(skeletons) >= 4 and len(shape_words) >= 2 and len(phrases) >= 3
    assert captions.canonical("red", "ball", "left") == "a red ball moving left"
    assert captions.parse("Red circle, going to the left!") == ("red", "ball", "left")


@pytest.mark.parametrize("prompt", ["a red blue ball moving left", "a red ball", "a red ball and a box moving up",
                                    "a red ball moving left then rising"])
def test_parse_rejects_prompts_without_exactly_one_of_each(prompt):
    with pytest.raises(ValueError, match="exactly one"):
        captions.parse(prompt)


def test_written_dataset_is_diffsynth_layout_and_byte_identical_per_seed(tmp_path):
    clips = list(plan_clips(5, 1))[:4]
    write_dataset(tmp_path / "a", clips, 5)
    write_dataset(tmp_path / "b", clips, 5)
    with (tmp_path / "a" / "metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [list(r) for r in rows] == [["video", "prompt"]] * 4
    assert [(r["video"], r["prompt"]) for r in rows] == [(c.video, c.prompt) for c in clips]
    held = json.loads((tmp_path / "a" / "held_out.json").read_text())
    assert [tuple(c) for c in held] == list(vocabulary.HELD_OUT)
    for clip in clips:
        video = (tmp_path / "a" / clip.video).read_bytes()
        assert video == (tmp_path / "b" / clip.video).read_bytes()
        decoded = read_frames(tmp_path / "a" / clip.video).astype(int)
        assert np.abs(decoded - render.render(clip.spec)).mean() < 3  # the encoding keeps the picture


def test_cli_writes_the_held_out_split(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_shapes_dataset.py"), str(tmp_path),
                           "--held-out", "--per-combo", "1", "--frames", "9", "--size", "48"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with (tmp_path / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["colour"], r["shape"], r["motion"]) for r in rows] == list(vocabulary.HELD_OUT)
    assert read_frames(tmp_path / rows[0]["video"]).shape == (9, 48, 48, 3)
