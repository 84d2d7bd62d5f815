"""A LoRA merged by wanflow gives diffusers' output with the same LoRA on the same weights.

The LoRA file is written here in diffusers' own format (``transformer.blocks.N.attn1.to_q.lora_A.weight``,
the layout ``save_lora_weights`` writes) and loaded by diffusers through its PEFT path
(``load_lora_adapter``); wanflow gets the same factors under the official names.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.models._dit_fixtures import diffusers_model, inputs, random_state, run_diffusers, tiny_config
from wanflow.lora.apply import attach, merge
from wanflow.lora.delta import Full, LoraFile, LowRank
from wanflow.models.dit import WanDiT

pytest.importorskip("peft")

#: official module -> diffusers module, for the modules this LoRA trains (inside blocks.N. but the head).
DIFFUSERS_NAMES = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
#: max |wanflow - diffusers| relative to max |diffusers output| (the DiT parity tests' bound).
REL_TOL = 1e-5


def lora_pair(cfg, tmp_path, seed: int = 0) -> tuple[LoraFile, str]:
    """The same rank-4 LoRA (with bias deltas on the FFN output) for wanflow and as a diffusers file."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    deltas, tensors, dims = {}, {}, (cfg.dim, cfg.dim)
    for b in range(cfg.num_layers):
        for official, theirs in DIFFUSERS_NAMES.items():
            out, inp = {"ffn.0": (cfg.ffn_dim, cfg.dim), "ffn.2": (cfg.dim, cfg.ffn_dim)}.get(official, dims)
            down, up = rand(4, inp), rand(out, 4)
            deltas[f"blocks.{b}.{official}.weight"] = LowRank(down, up)
            tensors[f"transformer.blocks.{b}.{theirs}.lora_A.weight"] = down
            tensors[f"transformer.blocks.{b}.{theirs}.lora_B.weight"] = up
        bias = rand(cfg.dim)  # PEFT's lora_B bias: a bias delta
        deltas[f"blocks.{b}.ffn.2.bias"] = Full(bias)
        tensors[f"transformer.blocks.{b}.ffn.net.2.lora_B.bias"] = bias
    down, up = rand(4, cfg.dim), rand(4 * cfg.out_dim, 4)
    deltas["head.head.weight"] = LowRank(down, up)
    tensors["transformer.proj_out.lora_A.weight"], tensors["transformer.proj_out.lora_B.weight"] = down, up
    path = tmp_path / "lora.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return LoraFile("diffusers", deltas), str(path)


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_merged_lora_equals_diffusers_peft_lora(tmp_path, scale):
    cfg = tiny_config("t2v")
    state, inp = random_state(cfg, seed=3), inputs(cfg, seed=4)
    lora, path = lora_pair(cfg, tmp_path)
    ref = diffusers_model(cfg, state)
    base = run_diffusers(ref, cfg, **inp)
    ref.load_lora_adapter(path, prefix="transformer", adapter_name="style")
    ref.set_adapters(["style"], weights=[scale])
    assert sum(name.endswith("lora_A.style") for name, _ in ref.named_modules()) == 21  # all of it loaded
    theirs = run_diffusers(ref, cfg, **inp)

    model = WanDiT(cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    with attach(model, [lora], [scale]), torch.no_grad():
        on_the_fly = model(**inp)
    merge(model, [lora], [scale])
    with torch.no_grad():
        merged = model(**inp)
    size = theirs.abs().max()
    assert (merged - theirs).abs().max() <= REL_TOL * size
    assert (on_the_fly - theirs).abs().max() <= REL_TOL * size
    assert (base - theirs).abs().max() > 0.05 * size  # the LoRA matters far beyond the tolerance
