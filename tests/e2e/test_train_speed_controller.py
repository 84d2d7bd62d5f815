"""Training speed control's motion controller alone, the DiT frozen, as DiffSynth's full-training
script for the release does (``--trainable_models motion_controller``).

Tiny weights in the release's layout: Wan2.1-T2V-1.3B's (the frozen base) and the controller file
``DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1/model.safetensors``. The first optimizer step's
update must be AdamW's, computed here from a gradient taken through an independent forward of the
same tiny DiT under the controller (loaded by the generation's own loaders); the export must be
the release's layout and dtype, load back, and change a generation.
"""

from __future__ import annotations

import pytest
import tomlkit
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.e2e._layout import write_models_root
from tests.e2e._layout_fun import SPEED_REPO, motion_controller_state
from tests.e2e._run import computed, run
from tests.e2e._train import clip, first_loss, stored_tensors, write_metadata
from tests.e2e.conftest import use_models
from wanflow.output import save_mp4

SPEED = "wan2.1-1.3b-speedcontrol"
SEED = 3
LR, WD = 1e-3, 0.01


@pytest.fixture(scope="module")
def speed_root(tmp_path_factory):
    from tests.e2e._layout import tiny

    root = write_models_root(tmp_path_factory.mktemp("speed-models"), ("wan2.1-t2v-1.3b",))
    (root / SPEED_REPO).mkdir(parents=True)
    save_file(motion_controller_state(tiny.tiny_dit_config().dim, 5), str(root / SPEED_REPO / "model.safetensors"))
    return root


@pytest.fixture()
def senv(speed_root, tmp_path, monkeypatch):
    return use_models(speed_root, tmp_path, monkeypatch)


def _dataset(folder, buckets=("40",)):
    (folder / "clips").mkdir(parents=True)
    rows = []
    for i, bucket in enumerate(buckets):
        save_mp4(clip(("red", "green")[i % 2], 1 if i % 2 == 0 else -1), folder / "clips" / f"{i}.mp4", 8, {},
                 quality=0)
        rows.append({"video": f"clips/{i}.mp4", "prompt": f"a square, clip {i}", "motion_bucket_id": bucket})
    return write_metadata(folder, rows)


def _recipe(folder, metadata, name="train", models=None, **train):
    settings = {"dataset": str(metadata), "width": 32, "height": 32, "frames": 5, "steps": 1, "seed": SEED,
                "checkpoint_every": 1, "method": "full", "components": ["motion_controller"],
                "learning_rate": LR, "weight_decay": WD, **train}
    doc = {"schema": 1, "name": name, "model": SPEED, "runtime": {"dtype": "fp32"}, "sampler": {"steps": 2},
           "train": settings}
    if models:
        doc["models"] = models
    path = folder / f"{name}.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def _generation(folder, name, controller=None, bucket=40):
    doc = {"schema": 1, "name": name, "model": SPEED, "prompt": {"text": "a red square moving right"},
           "video": {"width": 32, "height": 32, "frames": 5}, "runtime": {"dtype": "fp32"},
           "sampler": {"steps": 2, "seed": 0}, "inputs": {"motion_bucket": bucket}}
    if controller is not None:
        doc["models"] = {"motion_controller": {"source": str(controller)}}
    path = folder / f"{name}.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def _base_controller(speed_root):
    return speed_root / SPEED_REPO / "model.safetensors"


def _hand_gradient(train, base_file, bucket: float):
    """(loss, {name: gradient}) of the first step, through an independent forward: the tiny DiT and
    the controller loaded by the generation's loaders, the offset added as a generation hands it."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.dit_extras import DitExtras
    from wanflow.models.dit_loader import load_dit
    from wanflow.models.motion_controller import load_motion_controller
    from wanflow.train.objective import TrainingSchedule, draw, noised, velocity_target, weighted_mse

    spec = next(s for s in train.plan.steps if s.name == "train").spec
    dit = load_dit(model_pool.weight_files([spec.weights["dit.0"].path]), dtype=torch.float32, device="cpu")
    dit.requires_grad_(False)
    controller = load_motion_controller(base_file)
    x0 = stored_tensors(train, "train/x0:0")["x0"]
    context = stored_tensors(train, "train/text:0")["context"]
    schedule = TrainingSchedule.build(5.0)
    d = draw(schedule, x0, schedule.index_range((0.0, 1.0)), SEED, (0, 0), (0,))
    offset = controller(torch.tensor([bucket])).float()
    pred = dit(noised(x0, d.noise, d.sigma), d.t, context, extras=DitExtras(modulation=offset)).float()
    loss = weighted_mse(pred, velocity_target(x0, d.noise), d.weight)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in controller.named_parameters()}


def test_the_first_step_is_adamw_on_the_controller_gradient_of_an_independent_forward(senv, tmp_path, speed_root):
    train = run(_recipe(tmp_path, _dataset(tmp_path / "data")), senv)
    outputs = train.archive / "outputs"
    assert (outputs / "motion_controller.safetensors").is_file()
    assert not (outputs / "dit.safetensors").exists()  # the DiT is frozen: nothing of it is exported
    stored = stored_tensors(train, "train")
    assert {k for k in stored if k != "history"} == {f"motion_controller/controller.{n}" for n in
                                                       load_file(_base_controller(speed_root))}
    loss, grads = _hand_gradient(train, _base_controller(speed_root), 40.0)
    assert first_loss(train) == pytest.approx(loss, rel=1e-5)
    base = load_file(_base_controller(speed_root))
    trained = load_file(outputs / "motion_controller.safetensors")
    for name, g in grads.items():  # AdamW's first step: p (1 − lr·wd) − lr · g / (|g| + eps)
        expected = base[name] * (1 - LR * WD) - LR * g / (g.abs() + 1e-8)
        assert torch.allclose(trained[name], expected, rtol=0, atol=1e-6), name
        assert not torch.equal(trained[name], base[name]), name
        assert trained[name].dtype == base[name].dtype


def test_the_export_is_the_release_layout_and_changes_a_generation(senv, tmp_path, speed_root):
    from wanflow.models.motion_controller import load_motion_controller

    bf16 = tmp_path / "bf16" / "model.safetensors"  # a release stored in bf16 exports in bf16
    bf16.parent.mkdir()
    save_file({k: v.bfloat16() for k, v in load_file(_base_controller(speed_root)).items()}, str(bf16))
    models = {"motion_controller": {"source": str(bf16)}}
    train = run(_recipe(tmp_path, _dataset(tmp_path / "data"), models=models, steps=2), senv)
    exported = train.archive / "outputs" / "motion_controller.safetensors"
    tensors = load_file(exported)
    assert sorted(tensors) == sorted(load_file(bf16)) and {t.dtype for t in tensors.values()} == {torch.bfloat16}
    load_motion_controller(exported)  # recognised as a controller by the release's loader
    with safe_open(str(exported), framework="pt") as f:
        header = f.metadata()
    assert header["wanflow.component"] == "motion_controller" and header["wanflow.steps"] == "2"
    base = run(_generation(tmp_path, "base", bf16), senv)
    tuned = run(_generation(tmp_path, "tuned", exported), senv)
    assert "motion-bucket" in computed(tuned) and "denoise" in computed(tuned)
    base_latents = stored_tensors(base, "denoise")["latents"]
    assert not torch.equal(stored_tensors(tuned, "denoise")["latents"], base_latents)


def test_keys_the_base_controller_and_each_sample_s_bucket(senv, tmp_path, speed_root):
    metadata = _dataset(tmp_path / "data", ("10", "90"))
    first = run(_recipe(tmp_path, metadata), senv)
    assert first.plan and {n for n in first.results if n.startswith("train/motion")} == {"train/motion:0",
                                                                                       "train/motion:1"}
    other = tmp_path / "other.safetensors"
    save_file(motion_controller_state(load_file(_base_controller(speed_root))["linear.0.weight"].shape[0], 6),
              str(other))
    again = run(_recipe(tmp_path, metadata, models={"motion_controller": {"source": str(other)}}), senv)
    assert computed(again) & {"train", "export:motion_controller"} == {"train", "export:motion_controller"}
    assert not {n for n in computed(again) if n.startswith("train/")}  # the samples' nodes read no controller
    _dataset(tmp_path / "data2", ("20", "90"))
    moved = run(_recipe(tmp_path, tmp_path / "data2" / "metadata.csv"), senv)
    assert {n for n in computed(moved) if n.startswith("train/motion")} == {"train/motion:0"}
    assert "train" in computed(moved)
    dit = run(_recipe(tmp_path, metadata, components=[]), senv)  # the DiT fully trained: another step
    assert "train" in computed(dit) and (dit.archive / "outputs" / "dit.safetensors").is_file()
    # the memory plan sizes the controller's AdamW state, not the DiT's
    peaks = [next(s for s in r.plan.steps if s.name == "train").spec.step.peak for r in (first, dit)]
    assert peaks[0].host_bytes < peaks[1].host_bytes


def test_ddp_with_two_processes_trains_the_controller_as_one_process_of_batch_2(senv, tmp_path):
    """Each process runs the controller on its own sample's bucket; the all-reduced gradient is the
    batch's (to fp32 rounding, lifted by AdamW's normalisation where a gradient is near zero)."""
    metadata = _dataset(tmp_path / "data", ("10", "90"))
    single = run(_recipe(tmp_path, metadata, name="single", steps=2, batch_size=2), senv)
    ddp = run(_recipe(tmp_path, metadata, name="ddp", steps=2, batch_size=1, distribution="ddp", processes=2), senv)
    want = load_file(single.archive / "outputs" / "motion_controller.safetensors")
    got = load_file(ddp.archive / "outputs" / "motion_controller.safetensors")
    assert set(got) == set(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-5
