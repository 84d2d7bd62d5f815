"""Write the quickstart DiT's starting point: a Wan T2V DiT sized for 64x64x17 clips, adaLN-Zero style.

    python -m scripts.quickstart.init_dit OUT_FOLDER [--seed 0] [--dim 256] [--layers 4] [--heads 4] [--ffn 1024]

OUT_FOLDER gets ``diffusion_pytorch_model.safetensors`` (official keys) and ``config.json``.
The latents of a 64x64x17 clip are 16 x 5 x 8 x 8, i.e. 80 tokens of (1, 2, 2) patches; the
text context is the tiny umT5's 64-wide features. The initialisation is the usual DiT practice
expressed in Wan's official tensors:

- every linear and the patch embedding: Xavier-uniform weights, zero biases;
- the time embedding's layers: normal(0, 0.02), as DiT does for its timestep MLP;
- adaLN-Zero: ``time_projection`` (which produces every block's shift/scale/gate) and each
  block's additive ``modulation`` start at zero, so every gate is 0 and every block's
  self-attention and feed-forward add nothing; cross-attention, which Wan leaves ungated, gets
  a zero output projection; the head's output projection is zero. So every block starts as the
  identity and the first prediction is exactly zero, and the gradients open the gates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from scripts.make_tiny_weights import TEXT_DIM, dit_config_json
from scripts.quickstart.files import save_weights, seed_everything
from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import DitConfig

WEIGHTS = "diffusion_pytorch_model.safetensors"


def quickstart_config(dim: int = 256, layers: int = 4, heads: int = 4, ffn: int = 1024) -> DitConfig:
    """A Wan T2V DiT reading 16 latent channels and the tiny umT5's TEXT_DIM-wide features."""
    return DitConfig("t2v", dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers, in_dim=16,
                     out_dim=16, text_dim=TEXT_DIM)


def initialise(model: WanDiT) -> WanDiT:
    """DiT-style init in place (see the module docstring); returns the model."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                nn.init.zeros_(module.bias)
        for layer in model.time_embedding:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        zeros = [model.time_projection[1].weight, model.time_projection[1].bias,
                 model.head.head.weight, model.head.head.bias, model.head.modulation]
        for block in model.blocks:
            zeros += [block.modulation, block.cross_attn.o.weight, block.cross_attn.o.bias]
        for tensor in zeros:
            tensor.zero_()
    return model


def initial_dit(cfg: DitConfig, seed: int) -> WanDiT:
    """A freshly initialised DiT: the same seed draws the same weights."""
    seed_everything(seed)
    return initialise(WanDiT(cfg))


def write_dit(folder: Path, cfg: DitConfig, seed: int) -> list[Path]:
    """The DiT's weights (bf16, official keys) and its official config.json under ``folder``."""
    weights = save_weights(initial_dit(cfg, seed).state_dict(), folder / WEIGHTS)
    config = folder / "config.json"
    config.write_text(json.dumps(dit_config_json(cfg), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [config, weights]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the DiT folder to write (e.g. FAMILY/dit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    args = ap.parse_args(argv)
    for path in write_dit(args.out, quickstart_config(args.dim, args.layers, args.heads, args.ffn), args.seed):
        sys.stdout.write(f"{path.stat().st_size:>10}  {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
