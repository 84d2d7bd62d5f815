"""Speech-to-video's bad inputs and settings, refused at validation (before any model loads), each
message naming the recipe file, the key and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import tomlkit

import wanflow
from tests.audio._sound import tone, write_wav
from tests.e2e.conftest import write_images, write_recipe

FAMILY = "wan2.2-s2v-14b"
RATE = 16000


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from wanflow.output import save_mp4

    folder = tmp_path_factory.mktemp("s2v-bad")
    out = write_images(folder)  # 56x40
    out["speech"] = write_wav(folder / "speech.wav", tone(200, 0.75, RATE), RATE)  # two clips of 8 frames
    out["text"] = folder / "notes.wav"
    out["text"].write_text("this is not audio\n")
    out["empty"] = write_wav(folder / "empty.wav", np.zeros(0), RATE)
    out["silent"] = write_wav(folder / "silent.wav", np.zeros(RATE), RATE)
    rng = np.random.default_rng(0)
    for name, frames, (w, h) in (("pose_short", 10, (56, 40)), ("pose_square", 16, (48, 48)),
                                 ("pose", 16, (56, 40)), ("motion_short", 40, (64, 64)), ("pose_tiny", 5, (56, 40))):
        out[name] = folder / f"{name}.mp4"
        save_mp4(rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8), out[name], 16, {}, quality=0)
    from safetensors.numpy import save_file

    out["embeds_layers"] = folder / "layers.safetensors"
    save_file({"audio_embeds": np.zeros((1, 24, 8, 16), np.float32)}, str(out["embeds_layers"]))
    out["embeds_short"] = folder / "short.safetensors"
    save_file({"audio_embeds": np.zeros((1, 25, 8, 12), np.float32)}, str(out["embeds_short"]))
    out["embeds_named"] = folder / "named.safetensors"
    save_file({"buckets": np.zeros((1, 25, 8, 16), np.float32)}, str(out["embeds_named"]))
    return out


def _problems(tmp_path, media, inputs=None, audio="speech", edit=None, **tables):
    files = {"image": media["first"], "audio": media[audio], **{k: media[v] for k, v in (inputs or {}).items()}}
    tables = {"video": {"width": 64, "height": 64, "frames": 9}, **tables}
    path = write_recipe(tmp_path, FAMILY, files, **tables)
    if edit is not None:
        doc = tomlkit.parse(path.read_text())
        edit(doc)
        path.write_text(tomlkit.dumps(doc))
    return wanflow.validate(path)


def test_a_good_recipe_has_no_problem(tmp_path, media):
    assert _problems(tmp_path, media, inputs={"s2v_pose_video": "pose"}) == []


@pytest.mark.parametrize("audio, words", [
    ("text", r"\[inputs\]\.audio = \".*notes\.wav\": not a readable audio file .* it looks like text"),
    ("empty", r"\[inputs\]\.audio = \".*empty\.wav\": the audio track is empty"),
    ("silent", r"\[inputs\]\.audio = \".*silent\.wav\": the audio is silent"),
])
def test_audio_that_cannot_drive_the_video_is_refused_naming_the_key(tmp_path, media, audio, words):
    found = _problems(tmp_path, media, audio=audio)
    assert len(found) == 1 and found[0].startswith(str(tmp_path)), found
    assert __import__("re").search(words, found[0]), found[0]


def test_a_sample_rate_the_speech_encoder_cannot_take_is_refused(tmp_path, media):
    def rate(doc):
        doc["inputs"]["audio_sample_rate"] = 22050

    found = _problems(tmp_path, media, edit=rate)
    assert any("[inputs].audio_sample_rate = 22050" in p and "set it to 16000" in p for p in found), found


def test_a_sample_rate_is_refused_by_a_family_without_speech(tmp_path, media):
    path = write_recipe(tmp_path, "wan2.1-t2v-1.3b", video={"width": 64, "height": 64, "frames": 9})
    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = {"audio_sample_rate": 16000}
    path.write_text(tomlkit.dumps(doc))
    found = wanflow.validate(path)
    assert any("[inputs].audio_sample_rate = 16000: wan2.1-t2v-1.3b does not take this input" in p for p in found)


@pytest.mark.parametrize("pose, words", [
    ("pose_short", "the video has 10 frames at 16 fps, fewer than the 16 needed (the recording asks for 2 clips of 8"),
    ("pose_square", "the pose video is 48x48 pixels and [inputs].image is 56x40, another aspect ratio"),
])
def test_a_pose_video_that_does_not_fit_the_clips_is_refused(tmp_path, media, pose, words):
    found = _problems(tmp_path, media, inputs={"s2v_pose_video": pose})
    assert len(found) == 1 and "[inputs].s2v_pose_video" in found[0] and words in found[0], found


def test_a_motion_video_shorter_than_the_motion_context_is_refused(tmp_path, media):
    found = _problems(tmp_path, media, inputs={"motion_video": "motion_short"})
    assert len(found) == 1 and "[inputs].motion_video" in found[0], found
    assert "the video has 40 frames at 16 fps, fewer than the 73 needed" in found[0]


@pytest.mark.parametrize("tables, words", [
    ({"video": {"width": 96, "height": 64, "frames": 9}}, "[video].width = 96: must be a multiple of 64"),
    ({"sampler": {"cfg_merge": True}}, "[sampler].cfg_merge = true: the clip loop runs the prompt and negative"),
    ({"sampler": {"slg_blocks": [1]}}, "[sampler].slg_blocks = [1]: skip-layer guidance is not built"),
    ({"sampler": {"sliding_window_size": 2}}, "[sampler].sliding_window_size = 2: the clip loop already"),
    ({"sampler": {"cache": {"method": "first-block", "threshold": 0.1}}}, "[sampler.cache].method"),
])
def test_settings_the_clip_loop_would_not_read_are_refused(tmp_path, media, tables, words):
    found = _problems(tmp_path, media, **tables)
    assert any(words in p for p in found), found


def test_compiled_blocks_are_taken_by_a_generation(tmp_path, media):
    """The clip loop compiles the S2V DiT's blocks (docs/s2v.md): refused only where torch cannot compile."""
    from wanflow.memory import pool

    if pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(pool.compile_problems("cpu")))
    assert _problems(tmp_path, media, runtime={"compile": "blocks", "device": "cpu"}) == []


@pytest.mark.parametrize("policy", ["stream", "disk"])
def test_fp8_storage_and_the_streaming_policies_are_taken_by_a_generation(tmp_path, media, policy):
    """The clip loop stores the blocks in fp8 and streams them (docs/s2v.md): nothing refused."""
    assert _problems(tmp_path, media, memory={"fp8": True, "policy": policy}) == []


def _train_problems(tmp_path, media, rows, inputs=None, **train):
    """The problems of a [train] recipe over a metadata.csv of ``rows`` (columns as DiffSynth names them)."""
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: str(v) for k, v in row.items()} for row in rows])
    doc = {"schema": 1, "name": "t", "model": FAMILY,
           "train": {"dataset": str(tmp_path / "metadata.csv"), "width": 64, "height": 64, "frames": 9, "steps": 1,
                     **train}}
    if inputs:
        doc["inputs"] = {k: str(v) for k, v in inputs.items()}
    (tmp_path / "t.toml").write_text(tomlkit.dumps(doc))
    return wanflow.validate(tmp_path / "t.toml")


def _row(media, **columns):
    return {"video": media["pose"], "prompt": "a face speaking", "input_audio": media["speech"], **columns}


def test_a_training_dataset_in_diffsynth_s_columns_has_no_problem(tmp_path, media):
    rows = [_row(media, s2v_pose_video=media["pose"]), _row(media, input_image=media["first"])]
    assert _train_problems(tmp_path, media, rows) == []


@pytest.mark.parametrize("columns, words", [
    ({"input_audio": None}, "input_audio"),
    ({"s2v_pose_video": "pose_tiny"}, "has 5 frames, fewer than the 9 the clip trains on"),
    ({"input_audio": "text"}, "input_audio = "),
    ({"input_audio": "silent"}, "input_audio = "),
    ({"motion_video": "pose"}, "column 'motion_video' (row 1): is not a training input"),
])
def test_a_bad_training_row_is_refused_naming_its_column(tmp_path, media, columns, words):
    row = _row(media, **{k: media[v] for k, v in columns.items() if v is not None})
    row = {k: v for k, v in row.items() if columns.get(k, "") is not None}
    found = _train_problems(tmp_path, media, [row])
    assert len(found) == 1 and words in found[0], found


@pytest.mark.parametrize("inputs, train, words", [
    ({"audio": "speech"}, {}, "[inputs].audio = "),
    ({"s2v_pose_video": "pose"}, {}, "[inputs].s2v_pose_video = "),
    ({"motion_video": "pose"}, {}, "[inputs].motion_video = "),
    ({"audio_embeds": "embeds_short"}, {}, "[inputs].audio_embeds = "),
    ({}, {"task": "direct_distill"}, '[train].task = "direct_distill": direct_distill is not built for speech-to-video'),
    ({}, {"validation_prompts": ["a face"]}, "[train].validation_prompts"),
])
def test_settings_s2v_training_would_not_read_are_refused(tmp_path, media, inputs, train, words):
    found = _train_problems(tmp_path, media, [_row(media)], {k: media[v] for k, v in inputs.items()}, **train)
    assert any(words in p for p in found), found


def test_fp8_storage_trains_a_lora_and_fp8_matmuls_are_refused_as_for_wan(tmp_path, media):
    """A LoRA's frozen base may be stored in fp8; fp8 matmuls (no backward) are refused as for any
    DiT's training, and full fine-tuning over fp8 storage too (it trains the weights)."""
    _train_problems(tmp_path, media, [_row(media)])
    doc = tomlkit.parse((tmp_path / "t.toml").read_text())
    doc["memory"] = {"fp8": True}
    (tmp_path / "t.toml").write_text(tomlkit.dumps(doc))
    assert wanflow.validate(tmp_path / "t.toml") == []
    doc["runtime"] = {"fp8_matmul": True}
    (tmp_path / "t.toml").write_text(tomlkit.dumps(doc))
    found = wanflow.validate(tmp_path / "t.toml")
    assert len(found) == 1 and "[runtime].fp8_matmul = true: fp8 matmuls have no backward" in found[0], found
    del doc["runtime"]
    doc["train"]["method"] = "full"
    (tmp_path / "t.toml").write_text(tomlkit.dumps(doc))
    found = wanflow.validate(tmp_path / "t.toml")
    assert len(found) == 1 and '[memory].fp8 = true: stores frozen weights in fp8, but [train].method = "full"' \
        in found[0], found


def test_a_bad_input_stops_the_run_before_any_model_loads(tmp_path, media, monkeypatch):
    from wanflow.errors import RecipeError

    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    monkeypatch.setenv("WANFLOW_MODELS", str(tmp_path / "no-models"))
    path = write_recipe(tmp_path, FAMILY, {"image": media["first"], "audio": media["silent"]},
                        video={"width": 64, "height": 64, "frames": 9})
    with pytest.raises(RecipeError, match="the audio is silent"):  # not the missing weights
        wanflow.run(path, runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("embeds, words", [
    ("embeds_layers", '"audio_embeds" is [1, 24, 8, 16]; speech-to-video reads (1, 25, features, frames)'),
    ("embeds_short", '"audio_embeds" holds 12 frames of buckets, fewer than the 16 of the 2 clips of 8 frames'),
    ("embeds_named", "holds no tensor \"audio_embeds\" (it holds ['buckets'])"),
    ("text", "not a safetensors file"),
])
def test_precomputed_buckets_that_do_not_fit_are_refused(tmp_path, media, embeds, words):
    found = _problems(tmp_path, media, inputs={"audio_embeds": embeds})
    assert len(found) == 1 and "[inputs].audio_embeds" in found[0] and words in found[0], found


def _set(**values):
    """An edit of the recipe's [inputs] table (typed values, which write_recipe would quote)."""
    def edit(doc):
        for key, value in values.items():
            doc["inputs"][key] = value
    return edit


@pytest.mark.parametrize("values, inputs, words", [
    ({"num_clip": 0}, {}, "[inputs].num_clip = 0: must be ≥ 1"),
    ({"num_clip": 3}, {}, "[inputs].num_clip = 3: the recording needs only 2 clips of 8 frames; use at most 2"),
    ({"start_from_ref": True}, {"motion_video": "pose"}, ("[inputs].start_from_ref = true: puts the reference image "
     "at the end of the 73 zero frames before the video, and [inputs].motion_video gives those 73 frames itself")),
    ({"num_clip": 1}, {"s2v_pose_video": "pose_tiny"}, ("the video has 5 frames at 16 fps, fewer than the 8 needed "
     "([inputs].num_clip asks for 1 clip of 8 frames")),
])
def test_bad_start_from_ref_and_num_clip_are_refused_naming_the_key(tmp_path, media, values, inputs, words):
    found = _problems(tmp_path, media, inputs=inputs, edit=_set(**values))
    assert any(words in p and p.startswith(str(tmp_path)) for p in found), found


def test_good_start_from_ref_and_num_clip_have_no_problem(tmp_path, media):
    # one clip of two needs only the first clip's 8 frames of pose: the 10-frame video is enough
    edit = _set(num_clip=1, start_from_ref=True)
    assert _problems(tmp_path, media, inputs={"s2v_pose_video": "pose_short"}, edit=edit) == []
    assert _problems(tmp_path, media, edit=_set(num_clip=2, start_from_ref=False)) == []


@pytest.mark.parametrize("key, value", [("start_from_ref", True), ("start_from_ref", False), ("num_clip", 1)])
def test_the_s2v_settings_are_refused_by_other_families_with_exit_2(tmp_path, key, value, capsys):
    from wanflow.cli import main

    path = write_recipe(tmp_path, "wan2.1-t2v-1.3b", video={"width": 64, "height": 64, "frames": 9})
    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = {key: value}
    path.write_text(tomlkit.dumps(doc))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"[inputs].{key} = {str(value).lower()}: wan2.1-t2v-1.3b does not take this setting (it is Wan2.2-S2V's)" \
        in err and "Traceback" not in err, err


@pytest.mark.parametrize("key, value", [("start_from_ref", True), ("num_clip", 1)])
def test_the_s2v_settings_are_refused_in_training(tmp_path, media, key, value):
    path = tmp_path / "t.toml"
    _train_problems(tmp_path, media, [_row(media)])
    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = {key: value}
    path.write_text(tomlkit.dumps(doc))
    found = wanflow.validate(path)
    assert any(f"[inputs].{key} = {str(value).lower()}: is not read by training" in p for p in found), found
