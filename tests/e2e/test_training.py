"""Training end to end on tiny official-layout families: what a user of `[train]` relies on."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import structlog
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.e2e._run import computed, run
from tests.e2e._train import write_dataset, write_train_recipe
from tests.e2e.conftest import write_recipe


def _history(outcome) -> list[dict[str, str]]:
    text = (outcome.archive / "outputs" / "loss.csv").read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _tensors(path) -> dict:
    return load_file(str(path))


def test_lora_training_lowers_the_held_out_loss_and_the_lora_changes_generation(env, tmp_path):
    # the same clip twice: one copy trains, the other is held out, so the validation loss
    # measures (at fixed draws) how well the model has learnt that clip
    metadata = write_dataset(tmp_path / "data", [("red", 1), ("red", 1)])
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=30, learning_rate=5e-3,
                                validate_every=10, validation_samples=1, checkpoint_every=10)
    outcome = run(recipe, env)
    rows = _history(outcome)
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(rows) == 30 and len(val) == 3
    assert val[-1] < 0.8 * val[0], val
    lora = outcome.archive / "outputs" / "lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert "blocks.0.self_attn.q.lora_A.default.weight" in keys  # DiffSynth's layout
    assert header["wanflow.method"] == "lora" and header["wanflow.steps"] == "30"
    assert header["wanflow.base_model"].startswith("wan2.1-t2v-1.3b")

    (tmp_path / "with-lora").mkdir()
    a = run(write_recipe(tmp_path, "wan2.1-t2v-1.3b"), env)
    b = run(write_recipe(tmp_path / "with-lora", "wan2.1-t2v-1.3b", lora=[{"path": str(lora)}]), env)
    assert (a.archive / "outputs" / "video.mp4").read_bytes() != (b.archive / "outputs" / "video.mp4").read_bytes()


def test_a_second_run_with_another_learning_rate_re_encodes_nothing(env, tmp_path, capsys):
    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, validation_prompts=["a red square moving right"])
    first = run(recipe, env)
    encodes = {n for n in first.results if n.startswith("train/")}
    assert len(encodes) == 9  # 4 prompts, 4 clips, 1 validation prompt
    from wanflow.cli import main

    assert main(["explain", str(recipe), "--set", "train.learning_rate=0.002"]) == 0
    lines = capsys.readouterr().out.splitlines()
    verdict = {line.split()[0]: line for line in lines if line.strip() and not line.startswith(" ")}
    assert all(verdict[n].split()[1] == "hit" for n in encodes), lines
    assert "miss because [train].learning_rate 0.001 → 0.002" in verdict["train"]
    second = run(recipe, env, "train.learning_rate=0.002")
    assert not computed(second) & encodes
    assert "train" in computed(second)
    third = run(recipe, env, "train.width=16", "train.height=16")  # a changed crop re-encodes the clips only
    assert {n for n in computed(third) if n.startswith("train/")} == {f"train/x0:{i}" for i in range(4)}


def test_validation_prompt_shares_its_encode_with_a_generation_of_that_prompt(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, validation_prompts=["a red ball bouncing"])
    run(recipe, env)
    generation = run(write_recipe(tmp_path, "wan2.1-t2v-1.3b"), env)  # its prompt is "a red ball bouncing"
    assert "encode-text:positive" not in computed(generation)


def test_a14b_trains_both_experts_in_one_run_and_writes_a_lora_for_each(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    outcome = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", metadata, steps=12), env)
    outputs = outcome.archive / "outputs"
    for expert in ("high_noise", "low_noise"):
        tensors = _tensors(outputs / f"lora_{expert}.safetensors")
        ups = [t for k, t in tensors.items() if ".lora_B." in k]
        assert ups and any(bool(t.abs().sum() > 0) for t in ups), f"the {expert} expert never trained"


def test_full_fine_tuning_exports_every_weight_under_the_official_names(env, tmp_path, models_root):
    metadata = write_dataset(tmp_path / "data")
    outcome = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, method="full", steps=2), env)
    trained = _tensors(outcome.archive / "outputs" / "dit.safetensors")
    base_file = next((models_root / "Wan-AI" / "Wan2.1-T2V-1.3B").glob("diffusion_pytorch_model*.safetensors"))
    base = _tensors(base_file)
    assert set(trained) == set(base)
    changed = [k for k in base if not np.array_equal(trained[k].float().numpy(), base[k].float().numpy())]
    assert "blocks.0.self_attn.q.weight" in changed


def test_lora_init_continues_from_a_file_and_a_preset_lora_changes_what_is_learnt(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    first = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="first"), env)
    lora = first.archive / "outputs" / "lora.safetensors"
    # a vanishing learning rate: the exported adapter is the file it started from
    resumed = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="init", lora_init=str(lora),
                                     learning_rate=1e-30, steps=1), env)
    start, end = _tensors(lora), _tensors(resumed.archive / "outputs" / "lora.safetensors")
    assert set(start) == set(end)
    assert all(np.allclose(start[k].numpy(), end[k].numpy(), atol=1e-6) for k in start)
    # differential: the same training over base + preset learns something else
    plain = _tensors(run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="plain", steps=2), env)
                     .archive / "outputs" / "lora.safetensors")
    preset = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="plain", steps=2,
                                    preset_lora=str(lora)), env)
    diff = _tensors(preset.archive / "outputs" / "lora.safetensors")
    assert "train" in computed(preset)
    assert any(not np.array_equal(plain[k].numpy(), diff[k].numpy()) for k in plain)


def test_direct_distillation_trains_a_few_step_student(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    outcome = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, task="direct_distill", steps=3), env)
    rows = _history(outcome)
    assert len(rows) == 3 and all(np.isfinite(float(r["loss"])) for r in rows)
    ups = [t for k, t in _tensors(outcome.archive / "outputs" / "lora.safetensors").items() if ".lora_B." in k]
    assert any(bool(t.abs().sum() > 0) for t in ups)


@pytest.mark.parametrize("model, encodes", [
    ("wan2.1-i2v-14b-480p", {"text", "x0", "y", "clip"}),
    ("wan2.1-flf2v-14b-720p", {"text", "x0", "y", "clip"}),
    ("wan2.2-i2v-a14b", {"text", "x0", "y"}),
    ("wan2.2-ti2v-5b", {"text", "x0"}),
])
def test_image_families_train_on_their_first_frame_conditioning(env, tmp_path, model, encodes):
    metadata = write_dataset(tmp_path / "data", [("red", 1), ("blue", -1)])
    size = {"width": 64, "height": 64} if model == "wan2.2-ti2v-5b" else {}
    outcome = run(write_train_recipe(tmp_path, model, metadata, steps=2, **size), env)
    kinds = {n.split("/")[1].split(":")[0] for n in outcome.results if n.startswith("train/")}
    assert kinds == encodes
    exports = sorted(p.name for p in (outcome.archive / "outputs").glob("lora*.safetensors"))
    assert exports == (["lora_high_noise.safetensors", "lora_low_noise.safetensors"] if "a14b" in model
                       else ["lora.safetensors"])
    if model.startswith("wan2.1-flf2v"):  # the last frame is given too: its frame mask marks it
        plan = {s.name: s for s in outcome.plan.steps}
        assert [r for r, _ in plan["train/y:0"].spec.step.images] == ["image", "end_image"]


def test_fp8_storage_of_the_frozen_base_trains_an_fp32_adapter(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    plain = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="bf", steps=2), env)
    fp8 = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="bf", steps=2), env, "memory.fp8=true")
    assert "train" in computed(fp8)  # fp8 storage changes the numbers: its own key
    a = _tensors(plain.archive / "outputs" / "lora.safetensors")
    b = _tensors(fp8.archive / "outputs" / "lora.safetensors")
    assert all(t.dtype == torch.float32 for t in b.values())  # the adapter is never stored in fp8
    downs = [k for k in a if ".lora_A." in k]
    # the same fp32 initialisation, trained over a base rounded to fp8: close, not equal
    assert any(not torch.equal(a[k], b[k]) for k in downs)
    assert all(torch.allclose(a[k], b[k], atol=0.05) for k in downs)


def test_a_clip_damaged_after_validation_is_skipped_and_reported_not_fatal(env, tmp_path, monkeypatch):
    import wanflow.steps.train_plan as train_plan
    from wanflow.train import load_dataset

    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=2)
    checked = {}

    def dataset_then_damage(resolved):  # the dataset passes its checks, then a file breaks
        from wanflow.steps.train_data import sizing_of

        found = load_dataset(metadata, sizing=sizing_of(resolved), accepted_inputs=resolved.family.accepted_inputs)
        (tmp_path / "data" / "clips" / "1_green.mp4").write_bytes(b"\0" * 2048)
        checked["done"] = True
        return found

    monkeypatch.setattr(train_plan, "training_dataset", dataset_then_damage)
    with structlog.testing.capture_logs() as logs:
        outcome = run(recipe, env)
    assert checked and (outcome.archive / "outputs" / "lora.safetensors").exists()
    skipped = [e for e in logs if e["event"] == "train.samples_skipped"]
    assert [(e["count"], e["samples"]) for e in skipped] == [(1, [1])]
    assert any(e["event"] == "train.sample_unreadable" and "1_green.mp4" in e["files"] for e in logs)


def test_training_is_refused_when_no_sample_can_be_decoded(env, tmp_path, monkeypatch):
    import wanflow.steps.train_plan as train_plan
    from wanflow.errors import ModelInputError
    from wanflow.train import load_dataset

    metadata = write_dataset(tmp_path / "data", [("red", 1)])
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=2)

    def dataset_then_damage(resolved):
        from wanflow.steps.train_data import sizing_of

        found = load_dataset(metadata, sizing=sizing_of(resolved), accepted_inputs=resolved.family.accepted_inputs)
        (tmp_path / "data" / "clips" / "0_red.mp4").write_bytes(b"\0" * 2048)
        return found

    monkeypatch.setattr(train_plan, "training_dataset", dataset_then_damage)
    with pytest.raises(ModelInputError, match="none of the 1 training samples' media could be decoded"):
        run(recipe, env)


def test_offloaded_activations_go_through_save_on_cpu_and_change_no_number_or_key(env, tmp_path, monkeypatch):
    metadata = write_dataset(tmp_path / "data")
    plain = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="act", steps=2), env)
    used = []
    real = torch.autograd.graph.save_on_cpu

    def recording(*args, **kwargs):
        used.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", recording)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "another-cache"))  # the same key must run again
    offloaded = run(write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, name="act", steps=2,
                                       offload_activations=True), env)
    assert len(used) == 2  # one per optimizer step's micro-batch
    assert offloaded.results["train"].key == plain.results["train"].key  # placement is not keyed
    a, b = (o.archive / "outputs" / "lora.safetensors" for o in (plain, offloaded))
    assert a.read_bytes() == b.read_bytes()


def test_checkpointing_cadence_and_activation_recompute_do_not_rekey_training(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=2)
    run(recipe, env)
    again = run(recipe, env, "train.checkpoint_every=1", "train.gradient_checkpointing=false")
    assert not computed(again) & {"train", "export:dit"}
    assert "train" in computed(run(recipe, env, "train.seed=1"))


def test_caption_dropout_encodes_the_empty_prompt_once_and_changes_only_the_train_step(env, tmp_path):
    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata)
    plain = run(recipe, env)
    dropout = run(recipe, env, "train.caption_dropout=0.5")
    assert "train/text:empty" not in plain.results
    assert "train/text:empty" in computed(dropout) and "train" in computed(dropout)
    assert not {n for n in computed(dropout) if n.startswith("train/") and n != "train/text:empty"}
    again = run(recipe, env, "train.caption_dropout=0.5")
    assert not computed(again)
