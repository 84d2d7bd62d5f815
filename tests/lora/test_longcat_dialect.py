"""LongCat-Video's own LoRA format (its release's lora/*.safetensors).

Module names spell their dots ``___lorahyphen___`` behind a ``lora`` prefix; a fused layer
(``attn.qkv``, ``cross_attn.kv_linear``, ``adaLN_modulation.1``) has one up-projection per output
block (``lora_up.blocks.i``) fed by its slice of the down-projection; ``alpha_scale`` is the
factor itself. Read into one low-rank delta per module, what cannot be read is reported with
the reason, and the delta survives conversion to the other dialects bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from wanflow.lora import read_lora, write_lora

HYPHEN = "___lorahyphen___"


def _key(module: str, tensor: str) -> str:
    return "lora" + HYPHEN + module.replace(".", HYPHEN) + "." + tensor


def _fused(module: str = "blocks.0.attn.qkv", n: int = 3, rank: int = 2, width: int = 8, scale: float = 0.5,
           seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {_key(module, "lora_down.weight"): torch.randn(n * rank, width, generator=g)}
    state |= {_key(module, f"lora_up.blocks.{i}.weight"): torch.randn(width, rank, generator=g) for i in range(n)}
    state[_key(module, "alpha_scale")] = torch.tensor(scale)
    return state


def test_a_fused_layer_s_delta_is_each_output_block_from_its_slice_of_the_down_projection():
    state = _fused(n=2, module="blocks.3.cross_attn.kv_linear", scale=0.25)
    lora = read_lora(state)
    delta = lora.deltas["blocks.3.cross_attn.kv_linear.weight"]
    down = state[_key("blocks.3.cross_attn.kv_linear", "lora_down.weight")]
    ups = [state[_key("blocks.3.cross_attn.kv_linear", f"lora_up.blocks.{i}.weight")] for i in range(2)]
    assert delta.tensor().shape == (16, 8)
    assert torch.equal(delta.tensor()[:8], ups[0] @ down[:2] * 0.25)
    assert torch.equal(delta.tensor()[8:], ups[1] @ down[2:] * 0.25)
    x = torch.randn(5, 8)  # as LongCat's forward computes it: the down's output split across the ups
    slices = (x @ down.T).chunk(2, dim=-1)
    by_forward = torch.cat([h @ up.T for h, up in zip(slices, ups)], dim=-1) * 0.25
    assert torch.allclose(x @ delta.tensor().T, by_forward, atol=1e-5)


def test_a_whole_up_projection_reads_with_its_alpha_scale():
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
    lora = read_lora({_key("blocks.0.ffn.w2", "lora_down.weight"): down, _key("blocks.0.ffn.w2", "lora_up.weight"): up,
                      _key("blocks.0.ffn.w2", "alpha_scale"): torch.tensor(0.5)})
    assert lora.dialect == "longcat"
    assert torch.equal(lora.deltas["blocks.0.ffn.w2.weight"].tensor(), up @ down * 0.5)
    no_scale = read_lora({_key("blocks.0.ffn.w2", "lora_down.weight"): down,
                          _key("blocks.0.ffn.w2", "lora_up.weight"): up})
    assert torch.equal(no_scale.deltas["blocks.0.ffn.w2.weight"].tensor(), up @ down)


def _without(state, suffix):
    return {k: v for k, v in state.items() if not k.endswith(suffix)}


@pytest.mark.parametrize("change, reason", [
    (lambda s: _without(s, "lora_down.weight"), "without their lora_down"),
    (lambda s: _without(s, "lora_up.blocks.1.weight"), "numbered [0, 2]"),
    (lambda s: {**s, _key("blocks.0.attn.qkv", "lora_down.weight"): torch.randn(5, 8)}, "does not feed 3"),
    (lambda s: {**s, _key("blocks.0.attn.qkv", "lora_up.blocks.2.weight"): torch.randn(8, 3)}, "different shapes"),
    (lambda s: {**s, _key("blocks.0.attn.qkv", "alpha"): torch.tensor(4.0)}, "an alpha and an alpha_scale"),
    (lambda s: {**s, _key("blocks.0.attn.qkv", "alpha_scale"): torch.tensor(0.0)}, "must be > 0"),
])
def test_what_cannot_be_read_is_reported_with_the_reason(change, reason):
    state = change(_fused())
    ok = _fused(module="blocks.1.attn.proj", n=1)  # a second, sound module keeps the file a LoRA
    lora = read_lora({**state, **ok})
    assert "blocks.1.attn.proj.weight" in lora.deltas
    assert any(reason in why for why in lora.reasons.values()), lora.reasons
    assert all(k.startswith("lora" + HYPHEN + "blocks" + HYPHEN + "0") for k in lora.unread)


@pytest.mark.parametrize("dialect", ["comfyui", "diffsynth", "diffusers"])
def test_a_longcat_lora_converts_to_other_dialects_with_the_same_delta(tmp_path, dialect):
    lora = read_lora(_fused())
    out = tmp_path / "converted.safetensors"
    write_lora(lora, out, dialect)
    back = read_lora(out)
    assert torch.equal(back.deltas["blocks.0.attn.qkv.weight"].tensor(), lora.deltas["blocks.0.attn.qkv.weight"].tensor())


@pytest.mark.parametrize("alpha", [None, 8.0, 2.0], ids=["no alpha", "alpha = rank/2", "alpha = rank/8"])
def test_written_in_longcat_s_format_it_reads_back_and_longcat_s_forward_applies_it(tmp_path, alpha):
    """Every low-rank pair as LongCat's loader reads one: hyphenated names, one lora_up (its
    n_seperate = 1 for a fused layer too) and alpha_scale, always present (it loads strictly)."""
    from safetensors.torch import load_file

    from wanflow.lora.delta import LoraFile, LowRank

    g = torch.Generator().manual_seed(3)
    deltas = {"blocks.0.attn.qkv.weight": LowRank(torch.randn(16, 8, generator=g), torch.randn(24, 16, generator=g),
                                                  alpha),
              "blocks.1.ffn.w2.weight": LowRank(torch.randn(16, 32, generator=g), torch.randn(8, 16, generator=g),
                                                alpha)}
    out = write_lora(LoraFile("diffsynth", deltas), tmp_path / "l.safetensors", "longcat")
    state = load_file(str(out))
    qkv = "lora" + HYPHEN + "blocks" + HYPHEN + "0" + HYPHEN + "attn" + HYPHEN + "qkv."
    assert {k.removeprefix(qkv) for k in state if k.startswith(qkv)} == {"lora_down.weight", "lora_up.weight",
                                                                        "alpha_scale"}
    scale = 1.0 if alpha is None else alpha / 16
    assert float(state[qkv + "alpha_scale"]) == scale
    back = read_lora(out)
    assert back.dialect == "longcat"
    for name, delta in deltas.items():
        assert torch.equal(back.deltas[name].tensor(), delta.tensor())
    x = torch.randn(3, 8, generator=g)  # LongCat's forward: out + alpha_scale · up(down(x))
    by_forward = (x @ state[qkv + "lora_down.weight"].T @ state[qkv + "lora_up.weight"].T) * float(state[qkv + "alpha_scale"])
    assert torch.allclose(x @ deltas["blocks.0.attn.qkv.weight"].tensor().T, by_forward, atol=1e-5)


def test_a_delta_longcat_s_format_cannot_hold_is_refused(tmp_path):
    from wanflow.lora.delta import Full, LoraFile
    from wanflow.lora.dialects import LoraFormatError

    lora = LoraFile("comfyui", {"blocks.0.attn.proj.bias": Full(torch.zeros(8))})
    with pytest.raises(LoraFormatError, match="holds low-rank pairs only; use --format comfyui"):
        write_lora(lora, tmp_path / "l.safetensors", "longcat")
