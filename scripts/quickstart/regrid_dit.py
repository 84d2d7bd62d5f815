"""Re-grid a trained quickstart DiT to finer patches: the starting point of the fine-grid training run.

    python -m scripts.quickstart.regrid_dit SOURCE_FOLDER OUT_FOLDER [--patch 1 1 1]

Why: a 64x64 clip's latents are 8x8 a frame, so the (1, 2, 2)-patched DiT sees 4x4 tokens and a
shape of three latent cells is about 2x2 tokens. Colour and motion are learned at that grid, but
a square's corners are decided inside a token (the head paints a 2x2 latent patch per token),
and after 5,000 steps the squares still came out as balls. Patching (1, 1, 1) gives 8x8 tokens a
frame (four times the tokens, about three times the training step on this machine).

Nothing the trained DiT knows has to be thrown away: every tensor but the patch embedding and
the head's output projection keeps its shape and is copied. The new patch embedding is the old
kernel summed over the patch, so a latent region that is constant over an old patch embeds to
the same token as before; the new head's output projection is the old one averaged over the
patch's positions, so each finer token starts by painting the mean of what its old patch
painted. The RoPE grid positions of the finer tokens are twice as dense, which the training run
adapts to. Weights are written in float32 (the training stage's dtype on CPU) with an official
config.json stating the new patch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "diffusion_pytorch_model.safetensors"


def regrid(state: dict[str, torch.Tensor], old: tuple[int, int, int], new: tuple[int, int, int],
           out_dim: int) -> dict[str, torch.Tensor]:
    """``state`` (official keys, patch ``old``) as a DiT patching ``new``; each of new's sizes must
    divide old's. Only ``patch_embedding`` and ``head.head`` change shape."""
    if any(o % n for o, n in zip(old, new)):
        raise ValueError(f"patch {list(new)} does not divide the trained patch {list(old)}")
    ratio = [o // n for o, n in zip(old, new)]
    out = {k: v.float().clone() for k, v in state.items()}
    kernel = out["patch_embedding.weight"]  # (dim, in, pt, ph, pw)
    dim, channels = kernel.shape[:2]
    # Split every axis of the kernel into (new cell, position inside the old patch) and sum the latter.
    split = kernel.reshape(dim, channels, new[0], ratio[0], new[1], ratio[1], new[2], ratio[2])
    out["patch_embedding.weight"] = split.sum(dim=(3, 5, 7)).contiguous()
    for name in ("head.head.weight", "head.head.bias"):
        rows = out[name]  # rows ordered (pt, ph, pw, C), C fastest
        tail = rows.shape[1:]
        grid = rows.reshape(new[0], ratio[0], new[1], ratio[1], new[2], ratio[2], out_dim, *tail)
        out[name] = grid.mean(dim=(1, 3, 5)).reshape(-1, *tail).contiguous()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a trained DiT folder (config.json + weights)")
    ap.add_argument("out", type=Path, help="the DiT folder to write")
    ap.add_argument("--patch", type=int, nargs=3, default=[1, 1, 1])
    args = ap.parse_args(argv)
    doc = json.loads((args.source / "config.json").read_text(encoding="utf-8"))
    old = tuple(doc.get("patch_size", [1, 2, 2]))
    state = regrid(load_file(str(args.source / WEIGHTS)), old, tuple(args.patch), doc.get("out_dim", 16))
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / WEIGHTS))
    doc["patch_size"] = list(args.patch)
    (args.out / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for path in (args.out / "config.json", args.out / WEIGHTS):
        sys.stdout.write(f"{path.stat().st_size:>10}  {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
