"""A LoRA trained over a frozen base whose blocks stream equals the resident one bit for bit.

The real build (``build_expert``) and loop (``Trainer``) on a tiny Wan DiT, on the CPU: host-tier
blocks swap between meta placeholders and their host tensors, disk-tier ones read the mapped
checkpoint; the LoRA factors stay resident and are the optimizer's own tensors.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from safetensors.torch import save_file

from wanflow.memory.train_placement import TrainPlacement, streamed_base
from wanflow.train.batch import collate
from wanflow.train.build import build_expert
from wanflow.train.loop import Settings, Trainer
from wanflow.train.order import batch_order

from ..models._dit_fixtures import random_state, tiny_config

CFG = tiny_config("t2v", num_layers=4, text_dim=64)
PARAMS = {"train.method": "lora", "runtime.attention": "sdpa", "train.lora_targets": ["q", "k", "v", "o", "ffn.0"],
          "train.lora_rank": 4, "train.lora_alpha": 4.0, "train.seed": 3, "train.gradient_checkpointing": True,
          "memory.fp8": False}
STEPS = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    save_file({k: v.bfloat16() for k, v in random_state(CFG).items()}, str(path))
    return path


def _samples() -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    return [{"context": torch.randn(1, 6, 64, generator=gen), "x0": torch.randn(1, 16, 2, 4, 4, generator=gen)}
            for _ in range(2)]


def _train(checkpoint, tiers=(), dtype=torch.float32, params=PARAMS):
    place = None
    load = None
    if tiers:
        load, place = streamed_base(tiers)
    expert = build_expert("dit", [checkpoint], params, {}, "cpu", dtype, 0.0, load, None, place)
    samples = _samples()
    trainer = Trainer([expert], Settings(steps=STEPS, learning_rate=1e-2), batch_order(["", ""], (0, 1), 1, 0),
                      lambda idx: collate([samples[i] for i in idx], "cpu"))
    factors = dict(trainer.params)
    trainer.run(lambda done, state: None)
    assert all(trainer.params[k] is p for k, p in factors.items())  # the optimizer's tensors, still in the model
    return expert.model, trainer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tiers", [("host",) * 4, ("disk",) * 4, ("device", "disk", "host", "disk")])
def test_a_streamed_lora_equals_the_resident_one_bit_for_bit(checkpoint, tiers, dtype):
    resident, want = _train(checkpoint, dtype=dtype)
    model, got = _train(checkpoint, tiers, dtype)
    assert set(got.params) == set(want.params) and len(got.params) == 4 * 9 * 2  # self and cross attention q, k, v, o and ffn.0
    for name, p in want.params.items():
        assert torch.equal(got.params[name], p), name
    assert not torch.equal(want.params["dit/blocks.3.self_attn.q.lora_B.default.weight"], torch.zeros(1))
    assert [h[1] for h in got.history] == [h[1] for h in want.history]
    placement = model.placement
    assert isinstance(placement, TrainPlacement)
    # the frozen base streams, the factors do not: offloaded blocks hold placeholders between steps
    for i, block in enumerate(model.blocks):
        frozen = [p for n, p in block.named_parameters() if ".lora_" not in n]
        factors = [p for n, p in block.named_parameters() if ".lora_" in n]
        assert all(p.is_meta for p in frozen) == (tiers[i] != "device")
        assert factors and not any(p.is_meta for p in factors) and all(p.requires_grad for p in factors)


def test_backward_fetches_ahead_in_backward_order(checkpoint):
    model, _ = _train(checkpoint, ("disk",) * 4)
    fetched = model.placement.fetched
    per_step = len(fetched) // STEPS
    one = fetched[:per_step]
    # forward: block 0 at the start, each block the next; its end: the last, which backward recomputes
    # first; backward: each recomputed block the one before it
    assert one == [(0, "forward"), (1, "forward"), (2, "forward"), (3, "forward"), (3, "forward"),
                   (2, "backward"), (1, "backward"), (0, "backward")], one
    assert fetched == one * STEPS


@pytest.mark.parametrize("checkpointing", [True, False])
def test_at_most_two_blocks_of_fetched_weights_live_at_once_with_checkpointing(checkpoint, monkeypatch,
                                                                              checkpointing):
    """What the plan counts (``IN_FLIGHT``): a fetched block's weights live until autograd is done
    with them, so in backward the block whose backward runs and the next one arriving; without
    checkpointing autograd would keep every block's (why the recipe's rules refuse that)."""
    from wanflow.memory import train_placement
    from wanflow.memory.train_stream_estimate import IN_FLIGHT

    alive: dict[tuple, bool] = {}
    fetch, acquire = train_placement.TrainPlacement._fetch, train_placement.TrainPlacement._acquire

    def tracked(self, block, targets, ahead=False):
        tensors, arrived = fetch(self, block, targets, ahead)
        for name, t in tensors.items():  # bf16 file, fp32 compute: each fetch makes new storage
            key = (block.index, name, id(t.untyped_storage()))
            alive[key] = True
            weakref.finalize(t.untyped_storage(), alive.pop, key, None)
        return tensors, arrived

    seen = []

    def counted(self, block, *, faulted):
        acquire(self, block, faulted=faulted)
        for future in self.pending.values():  # the read ahead done: the worst case, whatever the load
            future.result()
        seen.append(len({key[0] for key in alive}))

    monkeypatch.setattr(train_placement.TrainPlacement, "_fetch", tracked)
    monkeypatch.setattr(train_placement.TrainPlacement, "_acquire", counted)
    monkeypatch.setitem(PARAMS, "train.gradient_checkpointing", checkpointing)
    _train(checkpoint, ("disk",) * 4)
    assert seen and max(seen) == (IN_FLIGHT if checkpointing else 4), seen


@pytest.fixture(scope="module")
def scaled(checkpoint, tmp_path_factory):
    """The same tiny DiT as a scaled-fp8 file (its fp8 bytes read as they are by the disk tier)."""
    from wanflow.models.fp8_convert import convert_to_fp8

    return convert_to_fp8(checkpoint, tmp_path_factory.mktemp("fp8"))[0]


@pytest.mark.parametrize("kind", ["bf16", "scaled-fp8"])
@pytest.mark.parametrize("tiers", [("host",) * 4, ("disk",) * 4, ("disk", "device", "host", "disk")])
def test_a_lora_over_an_fp8_base_streamed_equals_the_resident_fp8_one_bit_for_bit(checkpoint, scaled, kind, tiers):
    """``[memory].fp8`` streamed: host-tier blocks kept as fp8, disk-tier ones read as fp8 from a
    scaled file or quantised at each read from a bf16 one; peft's wrapped ``Fp8Linear`` streams
    its weight under the checkpoint's name and keeps its scale buffer resident."""
    from wanflow.models.fp8 import fp8_layers

    fp8 = {**PARAMS, "memory.fp8": True}
    file = checkpoint if kind == "bf16" else scaled
    resident, want = _train(file, dtype=torch.bfloat16, params=fp8)
    model, got = _train(file, tiers, torch.bfloat16, params=fp8)
    assert set(got.params) == set(want.params) and len(got.params) == 4 * 9 * 2
    for name, p in want.params.items():
        assert torch.equal(got.params[name], p), name
    assert [h[1] for h in got.history] == [h[1] for h in want.history]
    assert not torch.equal(want.params["dit/blocks.3.self_attn.q.lora_B.default.weight"], torch.zeros(1))
    layers = fp8_layers(model)  # peft's base_layer: the Fp8Linear, its scale on the device
    assert "blocks.0.self_attn.q.base_layer" in layers and len(layers) == 10 * 4
    assert all(not layer.scale_weight.is_meta for layer in layers.values())
    placement = model.placement
    host = [b for b in placement.blocks if b.tier == "host"]
    assert all(source.dtype == torch.float8_e4m3fn for b in host for name, source in b.source.items()
               if name.endswith(".q.weight"))  # kept in host memory as fp8, under the checkpoint's name
    disk = [b for b in placement.blocks if b.tier == "disk"]
    quantised = {name for b in disk for _, _, name in b.slots if name in placement.convert}
    assert bool(quantised) == (bool(disk) and kind == "bf16")  # a bf16 file's weights quantised at each read
    assert all(b.targets()[f"blocks.{b.index}.self_attn.q.weight"][1] == torch.float8_e4m3fn for b in disk)
