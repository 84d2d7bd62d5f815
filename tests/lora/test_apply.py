"""LoRAs merged into a tiny Wan DiT and applied on the fly: both equal the delta added by hand.

The reference is always the base state dict with scale·ΔW added by hand, ΔW computed here from
the raw factors with each kind's formula (never through ``Delta.tensor()``), so a wrong formula,
a wrong scale or a delta put on the wrong parameter shows as a different output.
"""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import inputs, random_state, tiny_config
from wanflow.errors import ModelLoadError
from wanflow.lora.apply import attach, merge, on_device, patched_value
from wanflow.lora.delta import Full, LoHa, LoKr, LoraFile, LowRank
from wanflow.models.dit import WanDiT

#: attach vs merge, max |difference| relative to max |output|, as docs/lora.md states them
#: (measured on tiny T2V and I2V DiTs, 3 seeds: fp32 <= 5.3e-7; bf16 <= 1.1e-2, the size of the
#: bf16 merged model's own distance from the fp32 reference, 0.6-0.9e-2).
ATTACH_TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2}
#: merge vs the delta added by hand, both in fp32.
MERGE_TOL = 1e-5


def every_kind(cfg, seed: int = 0) -> tuple[LoraFile, dict[str, torch.Tensor]]:
    """A LoRA with every delta kind, and its ΔW (scale 1) computed by hand from the same factors."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    dim, ffn, deltas, hand = cfg.dim, cfg.ffn_dim, {}, {}

    def put(name, delta, by_hand):
        deltas[name], hand[name] = delta, by_hand

    for b in range(cfg.num_layers):  # LowRank without alpha (scale 1) on self-attention and FFN
        linears = {f"self_attn.{p}": (dim, dim) for p in "qkvo"} | {"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
        for part, (out, inp) in linears.items():
            down, up = rand(4, inp), rand(out, 4)
            put(f"blocks.{b}.{part}.weight", LowRank(down, up), up @ down)
    down, up = rand(4, dim), rand(dim, 4)  # alpha 2 at rank 4: scale 1/2
    put("blocks.0.cross_attn.q.weight", LowRank(down, up, 2.0), up @ down / 2)
    w1a, w1b, w2a, w2b = (5 * rand(*s) for s in ((dim, 2), (2, dim), (dim, 2), (2, dim)))
    put("blocks.0.cross_attn.o.weight", LoHa(w1a, w1b, w2a, w2b, alpha=1.0),  # alpha 1 at rank 2
        (w1a @ w1b) * (w2a @ w2b) / 2)
    w1, w2 = rand(8, 16), rand(16, 8)  # LoKr, both factors whole: scale 1
    put("blocks.1.cross_attn.v.weight", LoKr(w1=w1, w2=w2), torch.kron(w1, w2))
    w1, w2a, w2b = rand(8, 8), rand(16, 2), rand(2, 16)  # LoKr, w2 factorised, alpha 1 at rank 2
    put("blocks.1.cross_attn.o.weight", LoKr(w1=w1, w2a=w2a, w2b=w2b, alpha=1.0),
        torch.kron(w1, w2a @ w2b) / 2)
    down, up = rand(4, cfg.in_dim, 1, 2, 2), rand(dim, 4, 1, 1, 1)  # LowRank on the patch conv
    put("patch_embedding.weight", LowRank(down, up),
        (up.flatten(1) @ down.flatten(1)).reshape(dim, cfg.in_dim, 1, 2, 2))
    fulls = {"blocks.0.self_attn.q.bias": (dim,), "blocks.1.ffn.2.bias": (dim,),
             "blocks.0.modulation": (1, 6, dim), "head.modulation": (1, 2, dim),
             "blocks.1.norm3.weight": (dim,), "blocks.0.cross_attn.norm_q.weight": (dim,)}
    for name, shape in fulls.items():  # Full deltas on biases, modulation and norms
        diff = rand(*shape)
        put(name, Full(diff), diff)
    return LoraFile("test", deltas), hand


def base_model(cfg, dtype=torch.float32) -> WanDiT:
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg, seed=3), strict=True)
    return model.eval().set_compute_dtype(dtype)


def by_hand(cfg, *loras: tuple[dict[str, torch.Tensor], float]) -> WanDiT:
    """The base model whose fp32 state dict had each scale·ΔW added by hand."""
    state = random_state(cfg, seed=3)
    for hand, scale in loras:
        for name, delta in hand.items():
            state[name] = state[name] + scale * delta
    model = WanDiT(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def run(model, inp) -> torch.Tensor:
    with torch.no_grad():
        return model(**inp)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, state) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(
        now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in state.items())


@pytest.fixture(scope="module")
def cfg():
    return tiny_config("t2v")


@pytest.fixture(scope="module")
def inp(cfg):
    return inputs(cfg, seed=4)


def test_merge_equals_the_delta_added_by_hand(cfg, inp):
    lora, hand = every_kind(cfg)
    model = base_model(cfg)
    base = run(model, inp)
    report = merge(model, [lora], [0.7])
    assert len(report.loras[0].patched) == len(lora.deltas) == 23
    merged, expected = run(model, inp), run(by_hand(cfg, (hand, 0.7)), inp)
    assert rel_err(merged, expected) < MERGE_TOL
    assert rel_err(base, expected) > 0.05  # the LoRA changes the output far beyond the tolerance


@pytest.mark.parametrize("name", ["blocks.0.modulation", "blocks.1.cross_attn.v.weight",
                                  "blocks.0.cross_attn.o.weight", "patch_embedding.weight"])
def test_each_kind_alone_moves_the_output_as_by_hand(cfg, inp, name):
    lora, hand = every_kind(cfg)
    model = base_model(cfg)
    merge(model, [LoraFile("test", {name: lora.deltas[name]})], [1.5])
    expected, base = run(by_hand(cfg, ({name: hand[name]}, 1.5)), inp), run(base_model(cfg), inp)
    assert rel_err(run(model, inp), expected) < MERGE_TOL
    assert rel_err(base, expected) > 100 * MERGE_TOL


def test_two_loras_apply_in_order_and_add_up(cfg, inp):
    (first, hand1), (second, hand2) = every_kind(cfg, seed=1), every_kind(cfg, seed=2)
    merged = base_model(cfg)
    merge(merged, [first, second], [0.5, -0.8])
    expected = run(by_hand(cfg, (hand1, 0.5), (hand2, -0.8)), inp)
    assert rel_err(run(merged, inp), expected) < MERGE_TOL
    model = base_model(cfg)
    attached = attach(model, [first, second], [0.5, -0.8])
    assert rel_err(run(model, inp), expected) < ATTACH_TOL[torch.float32]
    attached.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attach_equals_merge_and_leaves_the_weights(cfg, inp, dtype):
    lora, _ = every_kind(cfg)
    merged = base_model(cfg, dtype)
    merge(merged, [lora], [0.7])
    model = base_model(cfg, dtype)
    before = snapshot(model)
    handle = attach(model, [lora], [0.7])
    on_the_fly = run(model, inp)
    assert same_state(model, before)  # nothing written, even after a forward
    assert rel_err(on_the_fly, run(merged, inp)) < ATTACH_TOL[dtype]
    assert rel_err(on_the_fly, run(base_model(cfg, dtype), inp)) > 0.05
    handle.remove()


def test_attach_then_remove_is_the_base_bit_for_bit(cfg, inp):
    lora, _ = every_kind(cfg)
    model = base_model(cfg, torch.bfloat16)
    before, base = snapshot(model), run(model, inp)
    handle = attach(model, [lora], [1.0])
    assert not torch.equal(run(model, inp), base)
    handle.remove()
    assert torch.equal(run(model, inp), base)
    assert same_state(model, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_stacked_attachments_come_off_in_either_order(cfg, inp):
    (first, _), (second, _) = every_kind(cfg, seed=1), every_kind(cfg, seed=2)
    model = base_model(cfg)
    before, base = snapshot(model), run(model, inp)
    both = attach(model, [first, second], [0.5, 0.5])
    together = run(model, inp)
    both.remove()
    one, two = attach(model, [first], [0.5]), attach(model, [second], [0.5])
    assert rel_err(run(model, inp), together) < ATTACH_TOL[torch.float32]
    one.remove()  # the first one out, while the second stays
    assert rel_err(run(model, inp), run(by_hand(cfg), inp)) > 0.05
    two.remove()
    assert torch.equal(run(model, inp), base)
    one, two = attach(model, [first], [0.5]), attach(model, [second], [0.5])
    run(model, inp)
    two.remove()  # last in, first out
    one.remove()
    assert torch.equal(run(model, inp), base) and same_state(model, before)


def test_a_failing_forward_still_puts_the_parameters_back(cfg):
    lora, _ = every_kind(cfg)
    model = base_model(cfg)
    modulation = model.blocks[0].modulation
    handle = attach(model, [lora], [1.0])
    with pytest.raises(TypeError), torch.no_grad():  # no context: the block's forward fails
        model.blocks[0](torch.zeros(1, 4, cfg.dim), None, None, None, 0, "sdpa")
    assert model.blocks[0]._parameters["modulation"] is modulation
    handle.remove()


def test_scale_zero_is_the_base_model(cfg, inp):
    lora, _ = every_kind(cfg)
    model = base_model(cfg, torch.bfloat16)
    before, base = snapshot(model), run(model, inp)
    merge(model, [lora], [0.0])
    assert same_state(model, before)
    with attach(model, [lora], [0.0]):
        assert torch.equal(run(model, inp), base)


def test_fp32_islands_keep_their_dtype(cfg, inp):
    lora, _ = every_kind(cfg)
    seen = []
    model = base_model(cfg, torch.bfloat16)
    with attach(model, [lora], [1.0]):  # a pre-hook registered after attach's sees the value it put
        hook = model.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(m.modulation))
        run(model, inp)
        hook.remove()
    assert seen[0].dtype == torch.float32 and not torch.equal(seen[0], model.blocks[0].modulation)
    merge(model, [lora], [1.0])
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["blocks.0.modulation"] == dtypes["head.modulation"] == torch.float32
    assert dtypes["blocks.0.self_attn.q.weight"] == dtypes["blocks.0.self_attn.q.bias"] == torch.bfloat16
    assert torch.equal(seen[0], model.blocks[0].modulation)  # attach's value is merge's, bit for bit


def test_bf16_merge_rounds_once_after_summing_in_fp32():
    weight = torch.full((2, 2), 1.0, dtype=torch.bfloat16)  # bf16 step at 1.0: 2**-7
    small = Full(torch.full((2, 2), 0.3 * 2**-7))  # each alone rounds away in bf16
    merged = patched_value(weight, [(small, 1.0), (small, 1.0)])
    assert merged.dtype == torch.bfloat16
    assert torch.equal(merged, torch.full((2, 2), 1.0 + 2**-7, dtype=torch.bfloat16))
    stepwise = (weight + small.diff.bfloat16()) + small.diff.bfloat16()
    assert torch.equal(stepwise, weight)  # what adding in bf16, LoRA by LoRA, would have kept


def test_delta_is_built_on_the_parameters_device():
    param = torch.empty(4, 3, device="meta")
    delta = LowRank(torch.randn(2, 3), torch.randn(4, 2))
    assert patched_value(param, [(delta, 1.0)]).device.type == "meta"
    moved = on_device(delta, torch.device("meta"))
    assert moved.down.device.type == moved.up.device.type == "meta" and delta.down.device.type == "cpu"


def test_merge_refuses_before_changing_any_weight(cfg):
    lora, _ = every_kind(cfg)
    for_1_3b = LowRank(torch.ones(1, 1536), torch.ones(1536, 1))
    wrong = LoraFile("test", {"blocks.0.self_attn.q.weight": for_1_3b})
    model = base_model(cfg)
    before = snapshot(model)
    with pytest.raises(ModelLoadError, match="Wan2.1 T2V-1.3B"):
        merge(model, [lora, wrong], [1.0, 1.0])
    assert same_state(model, before)
    with pytest.raises(ModelLoadError):
        attach(model, [lora, wrong], [1.0, 1.0])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_low_rank_linear_deltas_are_never_materialised(cfg, inp, monkeypatch):
    lora, _ = every_kind(cfg)
    linears = LoraFile("test", {n: d for n, d in lora.deltas.items()
                                if isinstance(d, LowRank) and n != "patch_embedding.weight"})
    merged = base_model(cfg)
    merge(merged, [linears], [0.9])
    model = base_model(cfg)

    def refuse(self):
        raise AssertionError("ΔW of a Linear LoRA was built")

    monkeypatch.setattr(LowRank, "tensor", refuse)
    with attach(model, [linears], [0.9]):
        assert rel_err(run(model, inp), run(merged, inp)) < ATTACH_TOL[torch.float32]
