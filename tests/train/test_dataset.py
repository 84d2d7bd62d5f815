"""Training datasets: every metadata format, DiffSynth's frame defaults, sizes, and every bad row at once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wanflow.errors import WanflowError
from wanflow.output import save_mp4
from wanflow.train import DatasetError, InputRef, Sizing, Target, load_dataset

#: (file, frames or None for an image, width, height, prompt)
CLIPS = (("a.mp4", 11, 64, 48, "a red ball rolls"), ("b.png", None, 40, 30, "a blue square"),
         ("c.mp4", 19, 48, 64, "a tall green bar"))
T2V, I2V = frozenset({"video"}), frozenset({"image"})


def _video(path: Path, frames: int, width: int, height: int) -> None:
    ramp = np.linspace(0, 255, frames, dtype=np.uint8)[:, None, None, None]
    save_mp4(np.broadcast_to(ramp, (frames, height, width, 3)).copy(), path, 16, {})


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of two short videos and an image, captioned; metadata goes elsewhere."""
    root = tmp_path_factory.mktemp("clips")
    for name, frames, width, height, prompt in CLIPS:
        if frames is None:
            Image.new("RGB", (width, height), (0, 0, 255)).save(root / name)
        else:
            _video(root / name, frames, width, height)
        (root / name).with_suffix(".txt").write_text(prompt + "\n", encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Messages show paths relative to the working folder; the tests read them from there."""
    monkeypatch.chdir(tmp_path)


def _rows() -> list[dict[str, str]]:
    return [{("image" if frames is None else "video"): name, "prompt": prompt}
            for name, frames, _, _, prompt in CLIPS]


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # blank lines between
    return path


def _load(path, clips, accepted=T2V, sizing=None, **kw):
    return load_dataset(path, sizing=sizing or Sizing(16, max_frames=17), accepted_inputs=accepted,
                        base_path=clips, **kw)


def test_csv_json_jsonl_and_a_captioned_folder_give_the_same_samples(clips, tmp_path):
    loaded = [_load(_write(tmp_path / f"meta{ext}", _rows()), clips) for ext in (".csv", ".json", ".jsonl")]
    loaded.append(load_dataset(clips, sizing=Sizing(16, max_frames=17), accepted_inputs=T2V))
    samples = loaded[0].samples
    assert all(d.samples == samples for d in loaded[1:])
    assert [(s.row, s.kind, Path(s.media).name, s.prompt) for s in samples] == [
        (1, "video", "a.mp4", "a red ball rolls"), (2, "image", "b.png", "a blue square"),
        (3, "video", "c.mp4", "a tall green bar")]
    assert [s.target for s in samples] == [Target(9, 48, 64), Target(1, 16, 32), Target(17, 64, 48)]
    assert all(s.inputs == () for s in samples)  # a text-to-video family takes no input image
    assert [(r.bucket, r.count) for r in loaded[0].buckets] == [("32x16x1", 1), ("64x48x9", 1), ("48x64x17", 1)]


def test_input_image_defaults_to_the_first_frame_and_end_image_to_the_last(clips, tmp_path):
    meta = _write(tmp_path / "m.csv", _rows())
    flf2v = load_dataset(meta, sizing=Sizing(16, max_frames=17), accepted_inputs={"image", "end_image"},
                         required_inputs={"image", "end_image"}, base_path=clips)
    a, b, c = flf2v.samples
    assert a.inputs == (("end_image", InputRef(a.media, 8)), ("input_image", InputRef(a.media, 0)))
    assert c.input("end_image") == InputRef(c.media, 16) and b.input("end_image") == InputRef(b.media, 0)
    i2v = _load(meta, clips, accepted={"image", "end_image"})  # end image accepted, not required: no default
    assert [s.inputs for s in i2v.samples] == [(("input_image", InputRef(s.media, 0)),) for s in i2v.samples]


def test_an_input_image_named_in_the_row_replaces_the_default(clips, tmp_path):
    rows = _rows()
    rows[0]["input_image"] = "b.png"
    a = _load(_write(tmp_path / "m.jsonl", rows), clips, accepted=I2V).samples[0]
    assert a.input("input_image") == InputRef(str(clips / "b.png"))


def test_the_familys_spatial_factor_sizes_the_samples(clips, tmp_path):
    meta = _write(tmp_path / "m.csv", _rows())
    assert [s.bucket for s in _load(meta, clips, sizing=Sizing(32, max_frames=17)).samples] == [
        "64x32x9", "32x32x1", "32x64x17"]
    assert [s.bucket for s in _load(meta, clips, sizing=Sizing(16, width=32, height=32, max_frames=5)).samples] == [
        "32x32x5", "32x32x1", "32x32x5"]


def test_loading_is_deterministic_and_repeat_repeats_the_epoch(clips, tmp_path):
    meta = _write(tmp_path / "m.json", _rows())
    first, second = _load(meta, clips, repeat=3), _load(meta, clips, repeat=3)
    assert first == second
    assert len(first.epoch()) == 9 and first.epoch()[3:6] == first.samples


def test_every_bad_row_is_reported_together_with_its_row_and_file(clips, tmp_path):
    (tmp_path / "broken.mp4").write_text("not a video")
    rows = [
        {"video": "c.mp4", "prompt": "fine"},
        {"video": "gone.mp4", "prompt": "missing file"},
        {"video": str(tmp_path / "broken.mp4"), "prompt": "unreadable"},
        {"video": "a.mp4", "prompt": "too short for min_frames 13"},
        {"video": "c.mp4", "prompt": "   "},
        {"video": "c.mp4", "prompt": "fine", "promt": "typo", "control_video": "a.mp4"},
        {"prompt": "no clip"},
    ]
    with pytest.raises(DatasetError) as caught:
        _load(_write(tmp_path / "bad.jsonl", rows), clips, sizing=Sizing(16, max_frames=17, min_frames=13))
    problems = caught.value.problems
    assert isinstance(caught.value, WanflowError) and len(problems) == 7, "\n".join(problems)
    text = "\n".join(problems)
    assert "bad.jsonl column 'promt' (row 6): unknown column; did you mean 'prompt'?" in text
    assert "bad.jsonl column 'control_video' (row 6): the family does not take the 'control_video' input" in text
    assert "bad.jsonl row 2 (line 3): video = 'gone.mp4':" in text and "does not exist; fix the path" in text
    assert "row 3 (line 5): video = " in text and "not a readable video" in text and "text, 11 bytes" in text
    assert "row 4 (line 7): video = 'a.mp4': the video has 11 frames, too short for min_frames = 13" in text
    assert "row 5 (line 9): column \"prompt\" is empty" in text
    assert "row 7 (line 13): names no clip" in text
    assert str(caught.value).startswith("the training dataset has 7 problems:")


def test_csv_rows_with_the_wrong_number_of_fields_are_reported_by_line(clips, tmp_path):
    meta = tmp_path / "m.csv"
    meta.write_text('video,prompt\na.mp4,"one, two"\na.mp4,one,two\nc.mp4\n', encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        _load(meta, clips)
    assert [p.split(":")[0] for p in caught.value.problems] == ["m.csv row 2 (line 3)", "m.csv row 3 (line 4)"]
    assert "quote values that contain commas" in caught.value.problems[0]


def test_bad_json_items_and_lines_are_reported_with_the_other_rows(clips, tmp_path):
    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4", "prompt": "ok"}\n{"video": \n\n[1]\n'
                                      '{"video": "nope.mp4", "prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        _load(tmp_path / "m.jsonl", clips)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "m.jsonl row 2 (line 2)", "m.jsonl row 3 (line 4)", "m.jsonl row 4 (line 5)"]
    (tmp_path / "m.json").write_text('{"video": "a.mp4"}', encoding="utf-8")
    with pytest.raises(DatasetError, match="holds a JSON dict, not a list of objects"):
        _load(tmp_path / "m.json", clips)


def test_a_folder_reports_missing_captions_stray_captions_and_stray_files(clips, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("a.mp4", "b.png", "a.txt"):
        (folder / name).write_bytes((clips / name).read_bytes())
    (folder / "orphan.txt").write_text("x")
    (folder / "notes.pdf").write_text("x")
    (folder / ".hidden").write_text("x")
    with pytest.raises(DatasetError) as caught:
        load_dataset(folder, sizing=Sizing(16), accepted_inputs=T2V)
    text = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 3, caught.value.problems
    assert "notes.pdf is neither an image" in text and "caption orphan.txt has no image or video" in text
    assert "row 2 (b.png): caption file" in text and "b.txt does not exist" in text


def test_input_files_are_checked_and_input_videos_must_cover_the_clip(clips, tmp_path):
    rows = [{"video": "c.mp4", "prompt": "p", "control_video": "a.mp4", "reference_image": "missing.png"},
            {"video": "a.mp4", "prompt": "p", "control_video": "c.mp4", "reference_image": "b.png"}]
    with pytest.raises(DatasetError) as caught:
        _load(_write(tmp_path / "m.csv", rows), clips, accepted={"control_video", "reference_image"})
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert "row 1 (line 2): control_video = 'a.mp4': has 11 frames, fewer than the 17" in problems[0]
    assert "row 1 (line 2): reference_image = 'missing.png'" in problems[1] and "does not exist" in problems[1]


def test_a_required_input_without_a_column_or_default_is_reported_per_row(clips, tmp_path):
    meta = _write(tmp_path / "m.csv", _rows()[:2])
    with pytest.raises(DatasetError) as caught:
        _load(meta, clips, accepted={"control_video"}, required_inputs={"control_video"}, family="wan-fun-control")
    assert [p.split(":")[0] for p in caught.value.problems] == ["m.csv row 1 (line 2)", "m.csv row 2 (line 3)"]
    assert "wan-fun-control requires the 'control_video' input; set the control_video column" in (
        caught.value.problems[0])


def test_a_missing_dataset_and_bad_settings_are_refused_together(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path / "none.csv", sizing=Sizing(32, width=500, height=480), accepted_inputs=T2V, repeat=0)
    text = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 3 and "width = 500" in text and "repeat = 0" in text
    assert "none.csv: no such metadata file or folder" in text


def test_the_package_imports_and_loads_a_dataset_without_torch(clips, tmp_path):
    meta = _write(tmp_path / "m.csv", _rows())
    code = ("import sys; from wanflow.train import load_dataset, Sizing; "
            f"d = load_dataset({str(meta)!r}, sizing=Sizing(16), accepted_inputs={{'image'}}, base_path={str(clips)!r}); "
            "assert len(d.samples) == 3; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" not in out.stdout, out.stdout
