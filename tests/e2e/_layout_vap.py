"""A tiny Video-As-Prompt repository in its real layout, under a models root.

``ByteDance/Video-As-Prompt-Wan2.1-14B/transformer/``: the DiT (main stream and reference stream,
diffusers-named, the reference stream's names with ``_mot_ref``) in three
``diffusion_pytorch_model-0000N-of-00003.safetensors`` shards behind their index, beside the
``WanTransformer3DMOTModel`` config.json. Its umT5, VAE and CLIP are Wan-AI/Wan2.1-I2V-14B-720P's,
which ``_layout`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from tests.e2e._layout import tiny, write_models_root, write_shards
from wanflow.models import vap_keys
from wanflow.models.loading import build_on_meta
from wanflow.models.vap import VapDiT
from wanflow.models.vap_config import VapConfig

REPO = "ByteDance/Video-As-Prompt-Wan2.1-14B"
ENCODERS = "wan2.1-i2v-14b-720p"
SHARDS = 3


def tiny_vap_config() -> VapConfig:
    """The tiny I2V DiT (2 heads of 64) with three blocks, the reference stream joining 0 and 2: a
    plain block runs between joined ones, and the reference caption (read by the reference
    stream's cross-attention after block 0's joint attention) reaches the video at block 2."""
    dit = attrs.evolve(tiny.tiny_dit_config("i2v", 36, 16, clip=True), num_layers=3)
    return VapConfig(dit, mot_layers=(0, 2))


def vap_state(cfg: VapConfig, seed: int) -> dict:
    """wanflow-named weights, seeded like the other tiny DiTs."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: VapDiT(cfg)).state_dict().items()}
    return tiny._seeded(shapes, seed, 0.1)


def config_json(cfg: VapConfig) -> dict:
    """The released config.json's fields, at the tiny sizes."""
    d = cfg.dit
    return {"_class_name": "WanTransformer3DMOTModel", "_diffusers_version": "0.33.1", "added_kv_proj_dim": d.dim,
            "attention_head_dim": d.head_dim, "block_idx_with_mot_ref": list(cfg.mot_layers),
            "cross_attn_norm": True, "eps": d.eps, "ffn_dim": d.ffn_dim, "freq_dim": d.freq_dim,
            "image_dim": 1280, "in_channels": d.in_dim, "num_attention_heads": d.num_heads,
            "num_layers": d.num_layers, "out_channels": d.out_dim, "patch_size": list(d.patch_size),
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": d.text_dim}


def write_vap_repo(root: Path, seed: int = 30) -> Path:
    """The transformer folder of the release, sharded with its index; returns the folder."""

    cfg = tiny_vap_config()
    folder = root / REPO / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_json(cfg), indent=2))
    state = {k: v.contiguous() for k, v in vap_keys.to_diffusers(vap_state(cfg, seed)).items()}
    write_shards(folder, state, SHARDS)
    return folder


def write_vap_models_root(root: Path) -> Path:
    """Wan2.1-I2V-14B-720P (the encoders) and the Video-As-Prompt release."""
    write_models_root(root, (ENCODERS,))
    write_vap_repo(root)
    return root
