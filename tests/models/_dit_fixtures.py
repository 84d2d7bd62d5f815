"""Tiny Wan DiT checkpoints under the official key names, and diffusers' model on the same weights.

Every tensor is randn * 0.1 (modulation included): zero or identity inits would hide bugs.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file
from torch import Tensor

from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import DitConfig
from wanflow.models.dit_keys import COMFYUI_PREFIX, OFFICIAL_TO_DIFFUSERS
from wanflow.models.loading import build_on_meta, rename_keys

#: variant name -> (model_type, in_dim, out_dim, clip); "i2v-a14b" is Wan2.2 I2V (no CLIP).
VARIANTS = {
    "t2v": ("t2v", 16, 16, False),
    "i2v": ("i2v", 36, 16, True),
    "flf2v": ("flf2v", 36, 16, True),
    "ti2v": ("ti2v", 48, 48, False),
    "i2v-a14b": ("i2v", 36, 16, False),
}


def tiny_config(variant: str = "t2v", **overrides) -> DitConfig:
    """dim 128, 2 heads of 64, ffn 256, 2 layers; text_dim stays Wan's 4096."""
    model_type, in_dim, out_dim, clip = VARIANTS[variant]
    cfg = DitConfig(model_type, dim=128, ffn_dim=256, num_heads=2, num_layers=2,
                    in_dim=in_dim, out_dim=out_dim, clip=clip)
    return attrs.evolve(cfg, **overrides)


def random_state(cfg: DitConfig, seed: int = 0) -> dict[str, Tensor]:
    """Official-layout weights, every tensor randn * 0.1 from one seeded generator."""
    meta = build_on_meta(lambda: WanDiT(cfg)).state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in sorted(meta.items())}


def official_config_json(cfg: DitConfig) -> dict:
    """The config.json that ships beside official weights."""
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": cfg.model_type,
        "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim,
        "in_dim": cfg.in_dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
        "out_dim": cfg.out_dim, "text_len": cfg.text_len,
    }


def diffusers_config_json(cfg: DitConfig) -> dict:
    """diffusers' WanTransformer3DModel config for the same architecture."""
    doc = {
        "_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
        "in_channels": cfg.in_dim, "out_channels": cfg.out_dim, "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": cfg.eps,
        "image_dim": 1280 if cfg.clip else None, "added_kv_proj_dim": cfg.dim if cfg.clip else None,
        "rope_max_seq_len": 1024, "pos_embed_seq_len": 514 if cfg.model_type == "flf2v" else None,
    }
    return doc


def write_checkpoint(
    folder: Path, cfg: DitConfig, state: dict[str, Tensor], layout: str = "official",
    shards: int = 1, config: bool = True,
) -> Path:
    """Save in a layout (official/diffusers/comfyui), optionally sharded with an index json."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "diffusers":
        state = rename_keys(state, OFFICIAL_TO_DIFFUSERS)
    elif layout == "comfyui":
        state = {COMFYUI_PREFIX + k: v for k, v in state.items()}
    if config:
        doc = diffusers_config_json(cfg) if layout == "diffusers" else official_config_json(cfg)
        (folder / "config.json").write_text(json.dumps(doc))
    if shards == 1:
        path = folder / "diffusion_pytorch_model.safetensors"
        save_file(state, str(path))
        return path
    return _write_shards(folder, state, shards)


def _write_shards(folder: Path, state: dict[str, Tensor], shards: int) -> Path:
    """Round-robin the keys over shard files and write the index json naming them."""
    keys = sorted(state)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {k: names[i % shards] for i, k in enumerate(keys)}
    for name in names:
        save_file({k: state[k] for k in keys if weight_map[k] == name}, str(folder / name))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def diffusers_model(cfg: DitConfig, state: dict[str, Tensor]):
    """diffusers' WanTransformer3DModel holding the same weights (loaded strictly)."""
    from diffusers import WanTransformer3DModel

    doc = {k: v for k, v in diffusers_config_json(cfg).items() if not k.startswith("_")}
    model = WanTransformer3DModel(**doc)
    model.load_state_dict(rename_keys(state, OFFICIAL_TO_DIFFUSERS), strict=True)
    return model.eval()


def inputs(cfg: DitConfig, seed: int = 1, batch: int = 1, grid=(3, 8, 8), text_tokens: int = 7) -> dict:
    """Seeded model inputs: latents, y, timesteps (B,), short text context, CLIP tokens.

    t < 500: diffusers computes the sinusoid's frequencies in fp32, which drifts from the official
    float64 embedding by ~1e-5 of the output scale near t = 1000 (up to ~7e-6 at t ~ 600), so the
    1e-5 parity tolerance would be measuring diffusers' error rather than ours.
    """
    gen = torch.Generator().manual_seed(seed)
    latent_channels = cfg.out_dim if cfg.in_dim != cfg.out_dim else cfg.in_dim
    out = {
        "x": torch.randn(batch, latent_channels, *grid, generator=gen),
        "t": torch.randint(0, 500, (batch,), generator=gen).float(),
        "context": torch.randn(batch, text_tokens, cfg.text_dim, generator=gen),
    }
    if cfg.in_dim != latent_channels:
        out["y"] = torch.randn(batch, cfg.in_dim - latent_channels, *grid, generator=gen)
    if cfg.clip:
        out["clip_fea"] = torch.randn(batch, cfg.image_len, 1280, generator=gen)
    return out


def run_diffusers(model, cfg: DitConfig, x: Tensor, t: Tensor, context: Tensor,
                  clip_fea: Tensor | None = None, y: Tensor | None = None) -> Tensor:
    """diffusers' forward on our inputs: y joined, context zero-padded to 512, FLF2V pairs split."""
    if y is not None:
        x = torch.cat([x, y], dim=1)
    context = torch.nn.functional.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
    if clip_fea is not None and cfg.model_type == "flf2v":
        clip_fea = clip_fea.reshape(-1, 257, 1280)  # (2B, 257, 1280): diffusers joins the pairs
    with torch.no_grad():
        return model(x, t, context, encoder_hidden_states_image=clip_fea, return_dict=False)[0]
