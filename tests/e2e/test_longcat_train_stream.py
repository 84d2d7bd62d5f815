"""LongCat-Video's LoRA trained with its frozen base streamed (``[memory].policy`` stream or disk),
through the real pipeline: the resident run's bytes and its key, its base stored in fp8 or not.

A continuation sample's clean frames run through the same blocks (``wanflow.train.longcat``), so
the streamed blocks serve every token of the clip."""

from __future__ import annotations

import pytest

from tests.e2e import _train_stream
from tests.e2e import test_longcat_train as longcat
from tests.e2e._train_stream import assert_streams_bit_for_bit
from tests.e2e.test_longcat_train import _recipe, _row

venv_runs, media = longcat.venv_runs, longcat.media  # the LongCat training tests' fixtures
placed = _train_stream.placed  # the spy on where each trained DiT is placed


@pytest.mark.parametrize("fp8", [False, True])
def test_a_streamed_longcat_lora_is_the_resident_one_bit_for_bit_and_shares_its_key(venv_runs, tmp_path, media,
                                                                                  monkeypatch, placed, fp8):
    recipe = _recipe(tmp_path, [_row(), _row("clips/past.mp4")], frames=9, cond=5, steps=2, learning_rate=0.05)
    storage = ("memory.fp8=true",) if fp8 else ()
    assert_streams_bit_for_bit(recipe, venv_runs, tmp_path, monkeypatch, placed, "LongCatDiT", *storage)


@pytest.mark.parametrize("fp8", [False, True])
def test_the_plan_streams_the_fewest_blocks_that_fit_at_their_stored_bytes(longcat_root, fp8):
    """A device run's streamed blocks leave the device for the host, two in flight, each at its
    stored bytes (fp8 blocks at one byte an element); a CPU run's policy picks the tiers."""
    import attrs

    from tests.e2e._layout_longcat import REPO
    from wanflow.memory.planner import Budgets
    from wanflow.memory.sizes import component_size, read_headers
    from wanflow.memory.train_stream_estimate import IN_FLIGHT
    from wanflow.models.longcat_config import from_shapes, keeps_fp32
    from wanflow.steps.longcat_train_memory import LongCatTrainJob
    from wanflow.steps.train_stream_plan import planned_train_step

    files = sorted((longcat_root / REPO / "dit").glob("*.safetensors"))
    tensors = read_headers(files)
    config = from_shapes({k: t.shape for k, t in tensors.items()}, "the tiny DiT")
    train = LongCatTrainJob(config=config, tensors=tensors, dit_files={"dit": files}, grid=(3, 4, 4),
                            bucket="32x32x9", itemsize=2, device_run=True, accumulation=1,
                            targets=("attn.qkv", "ffn.w2"), rank=4, method="lora", batch=1, checkpointing=True,
                            offload=False, fp8=fp8, streamable=True)
    size = component_size("dit", tensors, 2, keeps_fp32=keeps_fp32, blocks=True)
    blocks = (size.as_fp8() if fp8 else size).block_bytes
    layers = config.depth
    resident, found = train.peak(), train.peak(streamed=layers)
    away, flight = sum(blocks), IN_FLIGHT * max(blocks)
    assert found.device_bytes == resident.device_bytes - away + flight
    assert found.host_bytes == resident.host_bytes + away
    cpu = attrs.evolve(train, device_run=False)  # a CPU run streams every block; auto keeps them resident
    for policy, tier in (("stream", "host"), ("disk", "disk")):
        assert planned_train_step(None, cpu, Budgets(None, 1 << 40), policy).tiers == (("dit", (tier,) * layers),)
    assert not getattr(planned_train_step(None, cpu, Budgets(None, 1 << 40), "auto"), "tiers", ())


def test_the_plan_says_which_blocks_the_train_step_streams(venv_runs, tmp_path, media, capsys):
    from wanflow.cli import main

    recipe = _recipe(tmp_path, [_row()], steps=2)
    assert main(["plan", str(recipe), "--set", "memory.policy=disk"]) == 0
    out = capsys.readouterr().out
    assert "  train: dit's frozen base: 0 blocks resident, 2 read from the mapped checkpoint" in out, out
    assert main(["plan", str(recipe)]) == 0
    assert "frozen base" not in capsys.readouterr().out  # auto on the CPU: resident
