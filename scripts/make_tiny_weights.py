"""Write the quickstart's tiny Wan weights (wanflow/assets/wanflow-tiny/) from a seed, deterministically.

    python scripts/make_tiny_weights.py [--out wanflow/assets/wanflow-tiny] [--seed 0]

Every file has the official key names and layouts, so the tiny family runs through exactly the
code paths of a real one: a Wan T2V DiT (safetensors + config.json), a umT5 encoder under the
official ``models_t5_umt5-xxl-enc`` keys, a byte-level tokenizer (ByT5: no vocabulary file) and
a Wan2.1 VAE. The weights are seeded, not trained: the video they make is coloured noise.
The builders here are also used by the end-to-end tests to lay out tiny official repositories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import DitConfig
from wanflow.models.loading import build_on_meta
from wanflow.models.vae import WAN21, WAN22, VAEConfig, VideoVAE

TEXT_DIM = 64  # d_model of the tiny umT5, hence the DiT's text_dim
TINY_VAE = {"wan2.1": attrs.evolve(WAN21, dim=8), "wan2.2": attrs.evolve(WAN22, dim=8, dec_dim=12)}
CLIP_WIDTH = 1280  # fixed by the DiT's image embedding (ViT-H/14 width)


def tiny_dit_config(model_type: str = "t2v", in_dim: int = 16, out_dim: int = 16,
                    clip: bool = False) -> DitConfig:
    """dim 128 in 2 heads of 64, ffn 256, 2 layers, reading the tiny umT5's 64-wide features."""
    return DitConfig(model_type, dim=128, ffn_dim=256, num_heads=2, num_layers=2, in_dim=in_dim,
                     out_dim=out_dim, text_dim=TEXT_DIM, clip=clip)


def _seeded(shapes: dict[str, tuple[int, ...]], seed: int, scale: float) -> dict[str, torch.Tensor]:
    """randn·scale for every tensor in key order; norm weights near 1 (as trained models have them)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(shapes):
        t = torch.randn(shapes[k], generator=g) * scale
        out[k] = 1.0 + t if ("norm" in k and k.endswith("weight")) or k.endswith(".gamma") else t
    return out


def dit_state(cfg: DitConfig, seed: int) -> dict[str, torch.Tensor]:
    """Official-layout DiT weights (``blocks.N.self_attn.q.weight`` …)."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: WanDiT(cfg)).state_dict().items()}
    return _seeded(shapes, seed, 0.1)


def dit_config_json(cfg: DitConfig) -> dict:
    """The official config.json that ships beside the weights (``patch_size`` stated only where
    it is not every release's [1, 2, 2], so the seeded checkpoints' files stay as they were)."""
    doc = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": cfg.model_type,
           "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim,
           "in_dim": cfg.in_dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
           "out_dim": cfg.out_dim, "text_len": cfg.text_len, "text_dim": cfg.text_dim}
    if tuple(cfg.patch_size) != (1, 2, 2):
        doc["patch_size"] = list(cfg.patch_size)
    return doc


def umt5_state(seed: int, vocab: int = 384, layers: int = 2, heads: int = 4, d_kv: int = 16,
               d_ff: int = 128) -> dict[str, torch.Tensor]:
    """umT5 encoder weights under the official keys; the vocabulary covers ByT5's 384 ids."""
    d, inner = TEXT_DIM, heads * d_kv
    shapes = {"token_embedding.weight": (vocab, d), "norm.weight": (d,)}
    for i in range(layers):
        p = f"blocks.{i}."
        shapes |= {p + "norm1.weight": (d,), p + "norm2.weight": (d,), p + "attn.o.weight": (d, inner),
                   p + "pos_embedding.embedding.weight": (32, heads), p + "ffn.gate.0.weight": (d_ff, d),
                   p + "ffn.fc1.weight": (d_ff, d), p + "ffn.fc2.weight": (d, d_ff)}
        shapes |= {p + f"attn.{n}.weight": (inner, d) for n in "qkv"}
    return _seeded(shapes, seed, 0.3)


def vae_state(config: VAEConfig, seed: int) -> dict[str, torch.Tensor]:
    """Official-layout VAE weights of a (tiny) config."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: VideoVAE(config)).state_dict().items()}
    return _seeded(shapes, seed, 0.1)


def clip_state(seed: int, layers: int = 1, mlp: int = 128, patch: int = 2,
               image: int = 32) -> dict[str, torch.Tensor]:
    """open-clip ViT weights under the official ``visual.*`` keys: 257 tokens of width 1280."""
    w, v = CLIP_WIDTH, "visual."
    shapes = {v + "patch_embedding.weight": (w, 3, patch, patch), v + "cls_embedding": (1, 1, w),
              v + "pos_embedding": (1, (image // patch) ** 2 + 1, w), v + "pre_norm.weight": (w,),
              v + "pre_norm.bias": (w,), v + "post_norm.weight": (w,), v + "post_norm.bias": (w,)}
    for i in range(layers):
        p = f"{v}transformer.{i}."
        shapes |= {p + "norm1.weight": (w,), p + "norm1.bias": (w,), p + "norm2.weight": (w,),
                   p + "norm2.bias": (w,), p + "attn.to_qkv.weight": (3 * w, w), p + "attn.to_qkv.bias": (3 * w,),
                   p + "attn.proj.weight": (w, w), p + "attn.proj.bias": (w,), p + "mlp.0.weight": (mlp, w),
                   p + "mlp.0.bias": (mlp,), p + "mlp.2.weight": (w, mlp), p + "mlp.2.bias": (w,)}
    return _seeded(shapes, seed, 0.02)


def write_tokenizer(folder: Path) -> None:
    """A ByT5 tokenizer folder: byte-level, so it needs no vocabulary file."""
    from transformers import ByT5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    ByT5Tokenizer().save_pretrained(str(folder))


def write_quickstart(out: Path, seed: int = 0) -> list[Path]:
    """The wanflow-tiny family's files under ``out`` (dit/, text_encoder/, tokenizer/, vae/)."""
    cfg = tiny_dit_config()
    files = {
        out / "dit" / "diffusion_pytorch_model.safetensors": dit_state(cfg, seed),
        out / "text_encoder" / "models_t5_umt5-xxl-enc-bf16.safetensors": umt5_state(seed + 1),
        out / "vae" / "Wan2.1_VAE.safetensors": vae_state(TINY_VAE["wan2.1"], seed + 2),
    }
    for path, state in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    config = out / "dit" / "config.json"
    config.write_text(json.dumps(dit_config_json(cfg), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_tokenizer(out / "tokenizer")
    return sorted(p for p in out.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "wanflow" / "assets" / "wanflow-tiny"
    parser.add_argument("--out", type=Path, default=default)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_quickstart(args.out, args.seed):
        sys.stdout.write(f"{path.stat().st_size:>10}  {path}\n")


if __name__ == "__main__":
    main()
