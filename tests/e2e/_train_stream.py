"""What the streamed-training tests of the DiT variants share: a spy on where each trained DiT is
placed, and the check that a LoRA trained with its frozen base streamed (stream, disk) is the
resident run's, bit for bit and under its key."""

from __future__ import annotations

import pytest
import torch

from tests.e2e._run import computed, run
from tests.e2e._train import stored_tensors
from wanflow.memory import train_placement


@pytest.fixture()
def placed(monkeypatch):
    """(tiers, model class, whether any side-module parameter is a placeholder) of each placed DiT."""
    seen = []
    real = train_placement.place_for_training

    def spy(model):
        placement = real(model)
        blocks = {id(p) for b in model.blocks for p in b.parameters()}
        sides = [p for p in model.parameters() if id(p) not in blocks]
        seen.append((tuple(model.tiered.tiers), type(model).__name__, any(p.is_meta for p in sides)))
        return placement

    monkeypatch.setattr(train_placement, "place_for_training", spy)
    return seen


def assert_streams_bit_for_bit(recipe, env, tmp_path, monkeypatch, placed, kind, *more):
    resident = run(recipe, env, "memory.policy=none", *more)
    assert placed == []
    want = stored_tensors(resident, "train")
    for policy, tier in (("stream", "host"), ("disk", "disk")):
        monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / f"cache-{policy}"))  # nothing reused: it trains again
        placed.clear()
        streamed = run(recipe, env, f"memory.policy={policy}", *more)
        assert "train" in computed(streamed)
        assert [(k, meta) for _, k, meta in placed] == [(kind, False)]  # side modules resident
        assert all(tiers == (tier,) * len(tiers) for tiers, _, _ in placed), placed  # a CPU run streams every block
        got = stored_tensors(streamed, "train")
        assert set(got) == set(want)
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, equal_nan=True, msg=f"{policy}: {name}")
        assert streamed.results["train"].key == resident.results["train"].key
