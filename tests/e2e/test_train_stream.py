"""A LoRA trained with its frozen base streamed (``[memory].policy`` stream or disk) through the real
pipeline: the same bytes as the resident run, validation included, and the same train step key."""

from __future__ import annotations

import pytest
import torch

from tests.e2e._run import computed, run
from tests.e2e._train import stored_tensors, write_dataset, write_train_recipe
from wanflow.memory import train_placement


@pytest.fixture()
def placed(monkeypatch):
    """The tiers each streamed DiT was placed in, in order."""
    seen = []
    real = train_placement.place_for_training

    def spy(model):
        seen.append(tuple(model.tiered.tiers))
        return real(model)

    monkeypatch.setattr(train_placement, "place_for_training", spy)
    return seen


def _recipe(tmp_path):
    metadata = write_dataset(tmp_path / "data")
    return write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=3, checkpoint_every=2,
                              validation_prompts=["a red square moving right"], validate_every=2,
                              validation_samples=1)


def test_a_streamed_lora_is_the_resident_one_bit_for_bit_and_shares_its_key(env, tmp_path, monkeypatch, placed):
    recipe = _recipe(tmp_path)
    resident = run(recipe, env, "memory.policy=none")
    assert placed == []
    want = stored_tensors(resident, "train")
    lora = (resident.archive / "outputs" / "lora.safetensors").read_bytes()
    for policy, tier in (("stream", "host"), ("disk", "disk")):
        monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / f"cache-{policy}"))  # nothing reused: it trains again
        placed.clear()
        streamed = run(recipe, env, f"memory.policy={policy}")
        assert "train" in computed(streamed)
        assert placed and all(tiers == (tier,) * len(tiers) for tiers in placed), placed  # a CPU run streams all
        got = stored_tensors(streamed, "train")
        assert set(got) == set(want) and any(k.startswith("validation/") for k in want)
        for name, tensor in want.items():  # factors, loss and validation history, validation latents
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, equal_nan=True, msg=f"{policy}: {name}")
        assert (streamed.archive / "outputs" / "lora.safetensors").read_bytes() == lora
        # placement is in no key: the resident run, asked again here, reuses the streamed result
        again = run(recipe, env, "memory.policy=none")
        assert "train" not in computed(again)
        assert streamed.results["train"].key == resident.results["train"].key


@pytest.mark.parametrize(("model", "train", "experts"), [("wan2.2-t2v-a14b", {}, 2),
                                                          ("wan2.1-t2v-1.3b", {"task": "direct_distill"}, 1),
                                                          ("wan2.1-i2v-14b-480p", {}, 1),
                                                          ("wan2.2-ti2v-5b", {"width": 64, "height": 64}, 1)])
def test_a14b_direct_distillation_and_image_families_stream_with_the_resident_numbers(env, tmp_path, monkeypatch, placed,
                                                                                model, train, experts):
    metadata = write_dataset(tmp_path / "data", [("red", 1), ("blue", -1)])
    recipe = write_train_recipe(tmp_path, model, metadata, steps=2, checkpoint_every=2, **train)
    want = stored_tensors(run(recipe, env, "memory.policy=none"), "train")
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache-disk"))
    got = stored_tensors(run(recipe, env, "memory.policy=disk"), "train")
    assert len(placed) == experts  # each expert placed
    assert set(got) == set(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, equal_nan=True, msg=name)


def test_the_plan_says_which_blocks_the_train_step_streams(env, tmp_path, capsys):
    from wanflow.cli import main

    recipe = _recipe(tmp_path)
    assert main(["plan", str(recipe), "--set", "memory.policy=disk"]) == 0
    out = capsys.readouterr().out
    assert "  train: dit's frozen base: 0 blocks resident, 2 read from the mapped checkpoint" in out, out
    assert main(["plan", str(recipe)]) == 0
    assert "frozen base" not in capsys.readouterr().out  # auto on the CPU: resident


def test_a_killed_streamed_run_resumes_to_the_resident_run_s_bytes(env, tmp_path, models_root):
    """Killed after a checkpoint while its base streams from disk, resumed (streamed again): the
    LoRA and loss history of the resident run, as a fresh process of the CLI writes them."""
    import json
    import signal

    from tests.e2e.test_training_resume import _archive, _kill_after_a_checkpoint, _start

    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=10, checkpoint_every=2)
    streamed = tmp_path / "disk" / recipe.name
    streamed.parent.mkdir()
    streamed.write_text(recipe.read_text() + '\n[memory]\npolicy = "disk"\n')
    reference = _start(recipe, tmp_path / "cache-a", models_root, tmp_path / "runs-a")
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-2000:]
    killed = _start(streamed, tmp_path / "cache-b", models_root, tmp_path / "runs-b")
    lines = _kill_after_a_checkpoint(killed, 1, 0.0)
    assert killed.returncode == -signal.SIGKILL, "".join(lines[-20:])
    assert any("train.streamed" in line and "tier=disk" in line for line in lines), "".join(lines[-20:])
    resumed = _start(streamed, tmp_path / "cache-b", models_root, tmp_path / "runs-c")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:]
    archive = _archive(tmp_path / "runs-c")
    events = [json.loads(line) for line in (archive / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "step.resume" and e["node"] == "train" for e in events)
    expected = _archive(tmp_path / "runs-a") / "outputs"
    for name in ("lora.safetensors", "loss.csv"):
        assert (archive / "outputs" / name).read_bytes() == (expected / name).read_bytes(), name


def test_a_lora_over_an_fp8_base_streamed_is_the_resident_fp8_run_bit_for_bit(env, tmp_path, monkeypatch, placed):
    """``[memory].fp8`` with the base streamed: host-tier blocks kept in fp8, disk-tier ones
    quantised at each read from the bf16 file; the resident fp8 run's bytes and its key."""
    recipe = _recipe(tmp_path)
    resident = run(recipe, env, "memory.policy=none", "memory.fp8=true")
    assert placed == []
    want = stored_tensors(resident, "train")
    plain = stored_tensors(run(recipe, env, "memory.policy=none"), "train")
    assert any(not torch.equal(plain[k], want[k]) for k in want if k.startswith("dit/"))  # fp8 changes the numbers
    for policy, tier in (("stream", "host"), ("disk", "disk")):
        monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / f"cache-{policy}"))
        placed.clear()
        streamed = run(recipe, env, f"memory.policy={policy}", "memory.fp8=true")
        assert "train" in computed(streamed)
        assert placed and all(tiers == (tier,) * len(tiers) for tiers in placed), placed
        got = stored_tensors(streamed, "train")
        assert set(got) == set(want)
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, equal_nan=True, msg=f"{policy}: {name}")
        assert streamed.results["train"].key == resident.results["train"].key
