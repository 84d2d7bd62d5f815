"""One Wan2.2 A14B expert trained alone (``[train].components``), end to end on the tiny family:
planned and keyed apart, exported under the two-expert run's name, sized alone by the memory plan,
and trained as the two-expert run trains it on the same draws."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file

from tests.e2e._run import run
from tests.e2e._train import write_dataset, write_train_recipe
from tests.e2e.conftest import use_models
from wanflow.engine.cache import Cache
from wanflow.engine.runner import plan_job
from wanflow.errors import ModelLoadError
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe


def _plan(recipe):
    with Cache() as cache:
        resolved = load_recipe(recipe)
        return plan_job(resolved, get_registry().pipeline(resolved.model), cache)


def test_one_expert_is_planned_alone_and_keyed_apart_and_naming_both_is_the_default_run(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    plans = {name: _plan(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, name=name, **train))
             for name, train in (("default", {}), ("both", {"components": ["dit_low_noise", "dit_high_noise"]}),
                                 ("high", {"components": ["dit_high_noise"]}),
                                 ("low", {"components": ["dit_low_noise"]}))}
    train = {name: p.get("train").fingerprint({}, {}) for name, p in plans.items()}
    assert train["both"] == train["default"]
    assert train["high"]["config"] != train["default"]["config"] != train["low"]["config"]
    for one, other in (("high", "low"), ("low", "high")):
        # the other expert's files are in no step: never hashed, never loaded
        held = {role for s in plans[one].steps for role in s.weights}
        assert not any(role.startswith(f"dit_{other}_noise") for role in held), held
        assert any(role.startswith(f"dit_{one}_noise") for role in plans[one].get("train").weights)
        exports = sorted(s.spec.archive_as for s in plans[one].steps if s.name.startswith("export:"))
        assert exports == [f"lora_{one}_noise.safetensors"]


def test_one_expert_trains_and_exports_its_lora_under_the_two_expert_run_s_name(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    outcome = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, components=["dit_low_noise"],
                                     steps=2), env)
    outputs = outcome.archive / "outputs"
    assert not (outputs / "lora_high_noise.safetensors").exists()
    tensors = load_file(str(outputs / "lora_low_noise.safetensors"))
    ups = [t for k, t in tensors.items() if ".lora_B." in k]
    assert ups and any(bool(t.abs().sum() > 0) for t in ups), "the low-noise expert never trained"


def test_the_memory_plan_sizes_the_one_expert_it_trains(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")

    def train_peak(**train) -> int:
        resolved = load_recipe(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, **train))
        peaks = get_registry().pipeline(resolved.model).memory_plan(resolved).peaks
        return next(p for p in peaks if p.step == "train").host_bytes

    both, high, low = train_peak(), train_peak(components=["dit_high_noise"]), train_peak(components=["dit_low_noise"])
    assert high == low < both  # the tiny experts are the same size: one expert's weights, not two


def test_one_expert_trains_what_the_two_expert_run_trains_it_on_the_same_draws(env, tmp_path):
    # a timestep_range on the high-noise side (t ≥ 875 from index 0 to 416 at shift 5): the
    # two-expert run routes every draw to the high-noise expert, on the levels the one-expert run draws
    metadata = write_dataset(tmp_path / "data")
    train = {"steps": 3, "timestep_range": [0.0, 0.4]}
    both = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, name="both", **train), env)
    alone = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, name="alone",
                                   components=["dit_high_noise"], **train), env)
    want = load_file(str(both.archive / "outputs" / "lora_high_noise.safetensors"))
    got = load_file(str(alone.archive / "outputs" / "lora_high_noise.safetensors"))
    assert any(bool(t.abs().sum() > 0) for k, t in want.items() if ".lora_B." in k)
    assert set(got) == set(want) and all(bool((got[k] == want[k]).all()) for k in want)
    idle = load_file(str(both.archive / "outputs" / "lora_low_noise.safetensors"))
    assert not any(bool(t.abs().sum() > 0) for k, t in idle.items() if ".lora_B." in k)  # never routed to
    assert (both.archive / "outputs" / "loss.csv").read_text() == (alone.archive / "outputs" / "loss.csv").read_text()


def test_the_expert_left_out_need_not_be_on_the_machine(models_root, tmp_path, monkeypatch):
    # offline, the low-noise expert's folder gone: a run of the high-noise expert alone neither
    # fetches nor reads it (a two-expert run is refused for the missing files)
    root = tmp_path / "models"
    shutil.copytree(models_root / "Wan-AI" / "Wan2.2-T2V-A14B", root / "Wan-AI" / "Wan2.2-T2V-A14B",
                    ignore=shutil.ignore_patterns("low_noise_model"))
    runs = use_models(root, tmp_path, monkeypatch)
    metadata = write_dataset(tmp_path / "data")
    outcome = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, components=["dit_high_noise"],
                                     steps=1), runs)
    assert (outcome.archive / "outputs" / "lora_high_noise.safetensors").exists()
    with pytest.raises(ModelLoadError, match="dit_low_noise"):
        run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, name="both", steps=1), runs)
