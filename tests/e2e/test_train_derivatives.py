"""Training the derivative families (Wan-Fun, VACE, speed control) from dataset columns, end to end.

Each kind of conditioning is trained on tiny weights in the repository's real layout through
``wanflow run`` of a ``[train]`` recipe, with a one-sample dataset in DiffSynth's metadata layout.
The loss the train step records for its first step (the LoRA starts at zero, so the DiT is the
base) must equal a DiT call assembled by hand from a *generation's* conditioning nodes for the same
inputs, handed over by the inference kinds: a training sample reaches the DiT as an inference
input would. Changing one column's file re-encodes only that sample's node of that column.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import tomlkit
import torch

from tests.e2e._layout import write_models_root
from tests.e2e._layout_fun import SPEED_REPO, motion_controller_state, write_fun_repo
from tests.e2e._layout_vace import REPOS as VACE_REPOS
from tests.e2e._layout_vace import write_vace_repo
from tests.e2e._run import computed, run
from tests.e2e._train import clip, first_loss, stored_tensors
from tests.e2e.conftest import use_models
from wanflow.output import save_mp4

SEED = 3
FUN = ("wan2.1-fun-v1.1-14b-control", "wan2.1-fun-v1.1-14b-control-camera", "wan2.1-fun-14b-inp",
       "wan2.1-fun-14b-control", "wan2.2-fun-a14b-control")
SPEED = "wan2.1-1.3b-speedcontrol"
VACE = "wan2.1-vace-1.3b"


@pytest.fixture(scope="session")
def derivative_root(tmp_path_factory):
    from tests.e2e._layout import tiny

    root = write_models_root(tmp_path_factory.mktemp("derivative-models"), ("wan2.1-t2v-1.3b",))
    for family in FUN:
        write_fun_repo(root, family)
    (root / SPEED_REPO).mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(motion_controller_state(tiny.tiny_dit_config().dim, 5), str(root / SPEED_REPO / "model.safetensors"))
    repo = VACE_REPOS[VACE]
    write_vace_repo(root / repo.path, repo, root / ".shared")
    return root


@pytest.fixture()
def denv(derivative_root, tmp_path, monkeypatch):
    return use_models(derivative_root, tmp_path, monkeypatch)


@pytest.fixture()
def media(tmp_path, images):
    """The clip (a red square, 9 frames), a control video, a VACE video and mask, the clip's first
    frame as a PNG (what a generation is given where training takes that frame) and two images."""
    from PIL import Image

    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    out = {"first_png": folder / "first.png", "reference": images["first"], "end": images["last"]}
    pixels = clip("red", 1)
    for name, frames in (("clip", pixels), ("control", clip("blue", -1)), ("control2", clip("yellow", 1)),
                         ("vace", clip("green", -1))):
        out[name] = folder / "clips" / f"{name}.mp4"
        save_mp4(frames, out[name], 8, {}, quality=0)
    mask = np.zeros((9, 32, 32, 3), np.uint8)
    mask[:, 8:24, 8:24] = 255
    out["mask"] = folder / "clips" / "mask.mp4"
    save_mp4(mask, out["mask"], 8, {}, quality=0)
    from wanflow.output import load_video

    Image.fromarray(load_video(out["clip"], 1, 32, 32)[0]).save(out["first_png"])
    return out


def _write(path, doc) -> None:
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


def write_metadata(folder, columns: dict) -> object:
    """metadata.csv with one row: the clip, its prompt and the given extra columns."""
    row = {"video": "clips/clip.mp4", "prompt": "a red square moving right", **{k: str(v) for k, v in columns.items()}}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    (folder / "metadata.csv").write_text(text.getvalue())
    return folder / "metadata.csv"


def train_recipe(folder, model: str, metadata, name: str = "train", **train) -> object:
    settings = {"dataset": str(metadata), "width": 32, "height": 32, "frames": 5, "steps": 1, "seed": SEED,
                "checkpoint_every": 1, "lora_rank": 4, "lora_alpha": 4.0, **train}
    # [video] (the validation videos' size) differs from the samples': each sample's encodes take its own
    doc = {"schema": 1, "name": name, "model": model, "video": {"width": 48, "height": 64, "frames": 9},
           "runtime": {"dtype": "fp32"}, "sampler": {"steps": 2}, "train": settings}
    _write(folder / f"{name}.toml", doc)
    return folder / f"{name}.toml"


def generation_recipe(folder, model: str, inputs: dict) -> object:
    doc = {"schema": 1, "name": "gen", "model": model, "prompt": {"text": "a red square moving right"},
           "video": {"width": 32, "height": 32, "frames": 5}, "runtime": {"dtype": "fp32"},
           "sampler": {"steps": 1, "seed": 0}, "inputs": inputs}
    _write(folder / "gen.toml", doc)
    return folder / "gen.toml"


def loss_by_hand(train, generation, index_range: tuple[float, float] = (0.0, 1.0), load=None,
                 check_extras=None) -> float:
    """The first step's loss, with the conditioning of ``generation`` (an inference run) handed
    over by the inference kinds, x0 and the text of ``train``, and the train step's first draw;
    the DiT read by ``load`` (files -> model; default wanflow's Wan DiT loader), its extras
    handed to ``check_extras`` first when given."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.dit_loader import load_dit
    from wanflow.steps.cond_kinds import model_call
    from wanflow.train.objective import (
        TrainingSchedule,
        draw,
        noised,
        velocity_target,
        weighted_mse,
    )

    denoise = next(s for s in generation.plan.steps if s.name == "denoise").spec
    roles = denoise.step.conditions
    call = model_call(roles, {r: stored_tensors(generation, denoise.inputs[r]) for r in roles})
    x0 = stored_tensors(train, "train/x0:0")["x0"]
    if call.drop_frames:  # VACE references: their latents lead the clean latent, as DiffSynth trains
        x0 = torch.cat([call.extras.vace_context[:, : x0.shape[1], : call.drop_frames], x0], dim=2)
    context = stored_tensors(train, "train/text:0")["context"]
    expert = denoise.step.experts[0]  # the high-noise expert on A14B (the range below keeps it)
    files = model_pool.weight_files([denoise.weights[f"{expert[0]}.{i}"].path for i in range(expert[1])])
    dit = (load or load_dit)(files, dtype=torch.float32, device="cpu")
    schedule = TrainingSchedule.build(5.0)
    d = draw(schedule, x0, schedule.index_range(index_range), SEED, (0, 0), (0,))
    x = noised(x0, d.noise, d.sigma)
    whole = slice(0, x.shape[2])
    extras = call.dit_extras(whole, 1, "cpu")
    if check_extras is not None:
        check_extras(extras)
    more = {} if extras is None else {"extras": extras}
    with torch.no_grad():
        pred = dit(x, d.t, context, clip_fea=call.tokens, y=call.y(whole, 1), **more).float()
    return float(weighted_mse(pred, velocity_target(x0, d.noise), d.weight))


#: family -> (metadata columns, the generation's [inputs] for the same sample, extra [train] settings)
CASES = {
    "wan2.1-fun-v1.1-14b-control": (
        {"control_video": "clips/control.mp4", "reference_image": "{reference}"},
        {"control_video": "{control}", "reference_image": "{reference}"}, {}),
    "wan2.1-fun-v1.1-14b-control-camera": (
        {"camera_control_direction": "LeftUp", "camera_control_speed": "0.05"},
        {"image": "{first_png}", "camera": {"direction": "LeftUp", "speed": 0.05}}, {"method": "full"}),
    "wan2.1-fun-14b-inp": (
        {"end_image": "{end}"}, {"image": "{first_png}", "end_image": "{end}"}, {}),
    "wan2.2-fun-a14b-control": (  # no start image: a Control row trains on its control video alone
        {"control_video": "clips/control.mp4"}, {"control_video": "{control}"}, {"timestep_range": [0.0, 0.3]}),
    SPEED: ({"motion_bucket_id": "40"}, {"motion_bucket": 40}, {}),
    VACE: (
        {"vace_video": "clips/vace.mp4", "vace_video_mask": "clips/mask.mp4", "vace_reference_image": "{end}"},
        {"vace": {"video": "{vace}", "mask": "{mask}", "reference": "{end}"}}, {}),
}


def _filled(value, media):
    if isinstance(value, dict):
        return {k: _filled(v, media) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("{"):
        return str(media[value.strip("{}")])
    return value


@pytest.mark.parametrize("family", list(CASES))
def test_the_first_loss_is_the_dit_call_of_the_inference_conditioning(denv, tmp_path, media, family):
    columns, inputs, settings = CASES[family]
    metadata = write_metadata(tmp_path / "data", _filled(columns, media))
    train = run(train_recipe(tmp_path, family, metadata, **settings), denv)
    generation = run(generation_recipe(tmp_path, family, _filled(inputs, media)), denv)
    expected = loss_by_hand(train, generation, tuple(settings.get("timestep_range", (0.0, 1.0))))
    assert first_loss(train) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def _two_rows(folder, rows: list[dict]) -> object:
    text = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    (folder / "metadata.csv").write_text(text.getvalue())
    return folder / "metadata.csv"


def test_a_changed_control_video_re_encodes_only_that_sample_s_control_latents(denv, tmp_path, media):
    family = "wan2.1-fun-v1.1-14b-control"
    control = tmp_path / "data" / "clips" / "control1.mp4"
    control.write_bytes(media["control"].read_bytes())
    rows = [{"video": "clips/clip.mp4", "prompt": "a red square", "control_video": "clips/control.mp4",
             "reference_image": str(media["reference"])},
            {"video": "clips/vace.mp4", "prompt": "a green square", "control_video": "clips/control1.mp4"}]
    recipe = train_recipe(tmp_path, family, _two_rows(tmp_path / "data", rows), steps=2)
    first = run(recipe, denv)
    encodes = {n for n in first.results if n.startswith("train/")}
    assert {"train/control:0", "train/control:1", "train/reference:1", "train/clip:1", "train/start_image:0"} <= encodes
    control.write_bytes(media["control2"].read_bytes())
    second = run(recipe, denv)
    assert {n for n in computed(second) if n.startswith("train/")} == {"train/control:1"}
    assert "train" in computed(second)
    third = run(recipe, denv, "train.learning_rate=0.002")  # another setting: no encode runs again
    assert not {n for n in computed(third) if n.startswith("train/")}


def test_a_changed_camera_direction_or_motion_bucket_re_runs_only_its_own_node(denv, tmp_path, media):
    family = "wan2.1-fun-v1.1-14b-control-camera"
    rows = [{"video": "clips/clip.mp4", "prompt": "a red square", "camera_control_direction": "Left"},
            {"video": "clips/vace.mp4", "prompt": "a green square", "camera_control_direction": "Up"}]
    recipe = train_recipe(tmp_path, family, _two_rows(tmp_path / "data", rows))
    run(recipe, denv)
    rows[1]["camera_control_direction"] = "Down"
    second = run(train_recipe(tmp_path, family, _two_rows(tmp_path / "data", rows)), denv)
    assert {n for n in computed(second) if n.startswith("train/")} == {"train/camera:1"}

    speed = [{"video": "clips/clip.mp4", "prompt": "a red square", "motion_bucket_id": "10"},
             {"video": "clips/vace.mp4", "prompt": "a green square", "motion_bucket_id": "90"}]
    recipe = train_recipe(tmp_path, SPEED, _two_rows(tmp_path / "data", speed), name="speed")
    run(recipe, denv)
    speed[0]["motion_bucket_id"] = "20"
    again = run(train_recipe(tmp_path, SPEED, _two_rows(tmp_path / "data", speed), name="speed"), denv)
    assert {n for n in computed(again) if n.startswith("train/")} == {"train/motion:0"}


def test_a_first_frame_input_is_the_clip_s_frame_keyed_by_the_clip(denv, tmp_path, media):
    family = "wan2.1-fun-14b-inp"  # its start image is the clip's first frame; CLIP and the I2V channels read it
    recipe = train_recipe(tmp_path, family, write_metadata(tmp_path / "data", {}))
    first = run(recipe, denv)
    plan = {s.name: s for s in first.plan.steps}
    assert plan["train/y:0"].spec.files["image"] == media["clip"].resolve()
    assert plan["train/y:0"].config["frames"] == {"image": 0}
    assert plan["train/y:0"].config["params"]["video.frames"] == 5
    again = run(recipe, denv, "train.frames=1")  # a shorter clip: its latents and I2V channels change,
    assert {"train/y:0", "train/x0:0"} <= computed(again)  # while CLIP sees the same first frame
    assert "train/clip:0" not in computed(again)


@pytest.mark.parametrize("family", [VACE, "wan2.1-fun-v1.1-14b-control"])
def test_a_derivative_lora_trained_with_its_base_streamed_is_the_resident_one(denv, tmp_path, media, monkeypatch,
                                                                              family):
    """VACE's blocks (resident beside the streamed stack) and Fun's control channels: the frozen
    base streamed from disk trains the resident run's LoRA bit for bit."""
    columns, _, settings = CASES[family]
    metadata = write_metadata(tmp_path / "data", _filled(columns, media))
    recipe = train_recipe(tmp_path, family, metadata, steps=2, **settings)
    want = stored_tensors(run(recipe, denv, "memory.policy=none"), "train")
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache-disk"))
    streamed = run(recipe, denv, "memory.policy=disk")
    assert "train" in computed(streamed)
    got = stored_tensors(streamed, "train")
    assert set(got) == set(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, equal_nan=True, msg=name)
