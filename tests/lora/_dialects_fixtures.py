"""LoRA files written by hand in every dialect, for a tiny Wan2.1 I2V DiT, with ΔW computed by hand.

Each builder spells its dialect's keys literally (prefix, module spelling, factor names, alpha)
rather than through wanflow's writer, so a reader that misnames, mis-scales or misplaces a
delta disagrees with the expected ΔW. Every factor is randn * 0.1 from one seeded generator.
"""

from __future__ import annotations

import json

import attrs
import torch
from torch import Tensor

from tests.models._dit_fixtures import tiny_config
from wanflow.models.dit import WanDiT
from wanflow.models.loading import build_on_meta

RANK = 4
CFG = tiny_config("i2v")  # has k_img / v_img / norm_k_img and img_emb

#: Official module -> diffusers module, written out (not taken from wanflow's table).
DIFFUSERS_NAMES = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "head.head": "proj_out", "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")
TOP_LINEARS = ("head.head", "text_embedding.0", "time_embedding.2", "time_projection.1",
               "img_emb.proj.1", "img_emb.proj.3")


def shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter of the tiny I2V DiT, official names."""
    return {k: tuple(v.shape) for k, v in build_on_meta(lambda: WanDiT(CFG)).state_dict().items()}


def modules() -> list[str]:
    """The Linear modules the hand-written LoRAs change (official names)."""
    blocks = [f"blocks.{b}.{m}" for b in range(CFG.num_layers) for m in BLOCK_LINEARS]
    return blocks + list(TOP_LINEARS)


def diffusers_name(module: str) -> str:
    if module.startswith("blocks."):
        _, b, rest = module.split(".", 2)
        return f"blocks.{b}.{DIFFUSERS_NAMES[rest]}"
    return DIFFUSERS_NAMES[module]


@attrs.frozen
class Factors:
    """One LoRA as down/up pairs per official module, from one seed."""

    down: dict[str, Tensor]
    up: dict[str, Tensor]


def factors(seed: int = 0, dtype: torch.dtype = torch.float32) -> Factors:
    gen = torch.Generator().manual_seed(seed)
    table = shapes()
    down, up = {}, {}
    for m in modules():
        out, inp = table[m + ".weight"]
        down[m] = (torch.randn(RANK, inp, generator=gen) * 0.1).to(dtype)
        up[m] = (torch.randn(out, RANK, generator=gen) * 0.1).to(dtype)
    return Factors(down, up)


def by_hand(f: Factors, m: str, scale: float = 1.0) -> Tensor:
    """ΔW = up @ down · scale, in fp32."""
    return (f.up[m].float() @ f.down[m].float()) * scale


@attrs.frozen
class HandMade:
    """A LoRA state dict in one dialect, its header metadata, and ΔW per official parameter."""

    dialect: str
    state: dict[str, Tensor]
    expected: dict[str, Tensor]
    metadata: dict[str, str] = attrs.field(factory=dict)


def lowrank_file(dialect: str, key_of, alpha: float | None = None, seed: int = 0) -> HandMade:
    """A plain low-rank LoRA whose keys `key_of(module, 'down'|'up'|'alpha')` spells."""
    f = factors(seed)
    state, expected = {}, {}
    for m in modules():
        state[key_of(m, "down")], state[key_of(m, "up")] = f.down[m], f.up[m]
        if alpha is not None:
            state[key_of(m, "alpha")] = torch.tensor(alpha)
        expected[m + ".weight"] = by_hand(f, m, 1.0 if alpha is None else alpha / RANK)
    return HandMade(dialect, state, expected)


def diffsynth() -> HandMade:
    names = {"down": "lora_A.default.weight", "up": "lora_B.default.weight"}
    return lowrank_file("diffsynth", lambda m, role: f"{m}.{names[role]}")


def raw_peft() -> HandMade:
    names = {"down": "lora_A.weight", "up": "lora_B.weight"}
    return lowrank_file("peft", lambda m, role: f"base_model.model.{m}.{names[role]}")


def diffusion_pipe() -> HandMade:
    names = {"down": "lora_A.weight", "up": "lora_B.weight"}
    return lowrank_file("comfyui", lambda m, role: f"diffusion_model.{m}.{names[role]}")


def musubi(alpha: float = 1.0) -> HandMade:
    names = {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha"}
    return lowrank_file("musubi", lambda m, role: f"lora_unet_{m.replace('.', '_')}.{names[role]}", alpha)


def videox_fun(alpha: float = 8.0) -> HandMade:
    names = {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha"}
    return lowrank_file("videox-fun", lambda m, role: f"lora_unet__{m.replace('.', '_')}.{names[role]}", alpha)


def diffusers(with_metadata: bool = False) -> HandMade:
    """diffusers names; with metadata, PEFT's lora_alpha 8 (scale 2) and one module at alpha 2."""
    names = {"down": "lora_A.weight", "up": "lora_B.weight"}
    made = lowrank_file("diffusers", lambda m, role: f"transformer.{diffusers_name(m)}.{names[role]}")
    state, expected = dict(made.state), dict(made.expected)
    bias = torch.randn(CFG.dim, generator=torch.Generator().manual_seed(5)) * 0.1
    state["transformer.blocks.1.attn1.to_q.lora_B.bias"] = bias  # PEFT lora_bias: a bias delta
    expected["blocks.1.self_attn.q.bias"] = bias
    if not with_metadata:
        return HandMade("diffusers", state, expected)
    config = {"r": RANK, "lora_alpha": 8, "alpha_pattern": {"^blocks.0.attn2.add_k_proj": 2},
              "target_modules": sorted({diffusers_name(m) for m in modules()}), "lora_bias": True}
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()})}
    expected = {p: d * (0.5 if p == "blocks.0.cross_attn.k_img.weight" else 2.0) for p, d in expected.items()}
    return HandMade("diffusers", state, expected, meta)


def lightx2v() -> HandMade:
    """lora_down/up under diffusion_model., plus full deltas: .diff_b, .diff, .diff_m."""
    names = {"down": "lora_down.weight", "up": "lora_up.weight"}
    made = lowrank_file("comfyui", lambda m, role: f"diffusion_model.{m}.{names[role]}")
    state, expected = dict(made.state), dict(made.expected)
    gen = torch.Generator().manual_seed(7)
    full = {  # key -> official parameter, shape
        "diffusion_model.blocks.0.self_attn.q.diff_b": ("blocks.0.self_attn.q.bias", (CFG.dim,)),
        "diffusion_model.blocks.1.ffn.2.diff_b": ("blocks.1.ffn.2.bias", (CFG.dim,)),
        "diffusion_model.blocks.0.cross_attn.norm_k_img.diff": ("blocks.0.cross_attn.norm_k_img.weight", (CFG.dim,)),
        "diffusion_model.blocks.1.norm3.diff": ("blocks.1.norm3.weight", (CFG.dim,)),
        "diffusion_model.blocks.1.norm3.diff_b": ("blocks.1.norm3.bias", (CFG.dim,)),
        "diffusion_model.blocks.0.diff_m": ("blocks.0.modulation", (1, 6, CFG.dim)),
        "diffusion_model.head.modulation.diff": ("head.modulation", (1, 2, CFG.dim)),
        "diffusion_model.patch_embedding.diff": ("patch_embedding.weight", (CFG.dim, CFG.in_dim, 1, 2, 2)),
    }
    for key, (param, shape) in full.items():
        state[key] = torch.randn(*shape, generator=gen) * 0.1
        expected[param] = state[key]
    return HandMade("comfyui", state, expected)


def lycoris() -> HandMade:
    """LoHa under musubi names and LoKr under diffusion_model. names, with the LyCORIS alpha rules."""
    gen = torch.Generator().manual_seed(11)
    dim, ffn = CFG.dim, CFG.ffn_dim

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    state, expected = {}, {}
    for b in range(CFG.num_layers):  # LoHa, rank 2, alpha 1: scale 1/2
        w1a, w1b, w2a, w2b = rand(dim, 2), rand(2, dim), rand(dim, 2), rand(2, dim)
        stem = f"lora_unet_blocks_{b}_self_attn_v"
        state |= {f"{stem}.hada_w1_a": w1a, f"{stem}.hada_w1_b": w1b, f"{stem}.hada_w2_a": w2a,
                  f"{stem}.hada_w2_b": w2b, f"{stem}.alpha": torch.tensor(1.0)}
        expected[f"blocks.{b}.self_attn.v.weight"] = (w1a @ w1b) * (w2a @ w2b) * 0.5
    w1, w2a, w2b = rand(16, 8), rand(ffn // 16, 3), rand(3, dim // 8)  # LoKr, w2 factorised: α/r = 6/3
    stem = "diffusion_model.blocks.0.ffn.0"
    state |= {f"{stem}.lokr_w1": w1, f"{stem}.lokr_w2_a": w2a, f"{stem}.lokr_w2_b": w2b,
              f"{stem}.alpha": torch.tensor(6.0)}
    expected["blocks.0.ffn.0.weight"] = torch.kron(w1, w2a @ w2b) * 2.0
    w1, w2 = rand(8, 16), rand(dim // 8, ffn // 16)  # LoKr, both whole: scale 1 whatever alpha says
    stem = "diffusion_model.blocks.1.ffn.2"
    state |= {f"{stem}.lokr_w1": w1, f"{stem}.lokr_w2": w2, f"{stem}.alpha": torch.tensor(4.0)}
    expected["blocks.1.ffn.2.weight"] = torch.kron(w1, w2)
    return HandMade("comfyui+musubi", state, expected)


#: Every hand-made dialect, by the name tests show.
ALL = {
    "diffsynth": diffsynth,
    "peft": raw_peft,
    "diffusers": diffusers,
    "diffusers-metadata": lambda: diffusers(with_metadata=True),
    "diffusion-pipe": diffusion_pipe,
    "lightx2v": lightx2v,
    "musubi": musubi,
    "videox-fun": videox_fun,
    "lycoris": lycoris,
}
