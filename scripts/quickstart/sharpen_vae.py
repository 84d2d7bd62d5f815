"""Sharpen a trained quickstart VAE's outlines: a fine-tune that weights the shape's edge.

    python -m scripts.quickstart.sharpen_vae FROM.ckpt OUT.safetensors [--steps 1200] [--seed 100]

``train_vae``'s loss keeps colour and motion but lets the decoder round every outline: a square
and a triangle come back as blobs whose bounding-box fill is the average shape's, which is what a
decoder that cannot tell the shapes apart under its input noise should paint. This phase starts
from ``train_vae``'s checkpoint (FROM: its ``--checkpoint`` file, or any ``{"vae": state_dict}``)
and adds a heavy L1 weight on a 4-pixel band around the true outline, with less decoder noise,
so the corners the classifier measures are drawn. Three steps of four see 8 lone frames (cheap
spatial training), every fourth two whole clips (the time convolutions). Batches are a pure
function of (seed, step) and the noise comes from one seeded generator, so a run is repeatable.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F

from scripts.quickstart import train_vae as tv
from scripts.quickstart.files import save_weights


@attrs.frozen
class Sharpening:
    """How the outline fine-tune runs; defaults are what ships."""

    steps: int = 1200
    lr: float = 3e-4  # cosine from lr + floor down to floor
    lr_floor: float = 3e-5
    clip_every: int = 4  # every clip_every-th step trains on whole clips, the others on lone frames
    edge_weight: float = 60.0  # extra L1 weight on the band around the outline
    edge_band: int = 5  # the band: dilation minus erosion of the shape's mask by this square kernel
    noise_max: float = 0.1  # decoder input noise, sigma ~ U(0, noise_max) (train_vae: 0.2)
    noise_seed: int = 7


def outline_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """1 on pixels within ``width // 2`` of the outline of a (B, 1, T, H, W) {0, 1} mask, else 0."""
    pad = width // 2
    grown = F.max_pool3d(mask, (1, width, width), 1, (0, pad, pad))
    shrunk = -F.max_pool3d(-mask, (1, width, width), 1, (0, pad, pad))
    return grown - shrunk


def learning_rate(step: int, s: Sharpening) -> float:
    return s.lr * 0.5 * (1 + math.cos(math.pi * step / s.steps)) + s.lr_floor


def loss(vae: tv.VideoVAE, video: torch.Tensor, mask: torch.Tensor, s: Sharpening,
         base: tv.VAETraining, generator: torch.Generator) -> torch.Tensor:
    """train_vae's loss with the outline band weighted and ``s.noise_max`` decoder noise."""
    terms = tv.losses(vae, video, mask, attrs.evolve(base, noise_max=s.noise_max), generator,
                      extra_weight=s.edge_weight * outline_band(mask, s.edge_band))
    return tv.total(terms, base)


def sharpen(vae: tv.VideoVAE, seed: int = 100, s: Sharpening = Sharpening(), log_every: int = 100,
            stop_after: int | None = None) -> tv.VideoVAE:
    """Fine-tune ``vae`` in place; returns it in eval mode. ``stop_after`` ends the run early
    (the learning-rate schedule still spans ``s.steps``)."""
    base = tv.VAETraining()
    generator = torch.Generator().manual_seed(s.noise_seed)
    optimiser = torch.optim.AdamW(vae.train().parameters(), lr=s.lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(s.steps if stop_after is None else min(stop_after, s.steps)):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, s)
        clips = step % s.clip_every == s.clip_every - 1
        video, mask = tv.training_batch(seed, step, *((base.batch, base.window) if clips else (base.image_batch, 1)))
        total = loss(vae, video, mask, s, base, generator)
        optimiser.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        if log_every and (step + 1) % log_every == 0:
            tv._say(f"sharpen step {step + 1}/{s.steps}: loss {float(total.detach()):.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
    return vae.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    from wanflow.models.vae.loader import load_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start", type=Path, help="train_vae's --checkpoint file (or a {'vae': state_dict} file)")
    ap.add_argument("out", type=Path, help="the safetensors file to write")
    ap.add_argument("--steps", type=int, default=Sharpening.steps)
    ap.add_argument("--seed", type=int, default=100, help="seeds the batches (train_vae's were seed 0)")
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--noise-max", type=float, default=Sharpening.noise_max)
    ap.add_argument("--stop-after", type=int, help="stop after this many steps (the schedule spans --steps)")
    ap.add_argument("--keep", type=Path, help="also write {'vae': state_dict} here, a start for another phase")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    vae = tv.VideoVAE(tv.tiny_config(args.dim))
    vae.load_state_dict(torch.load(args.start, weights_only=False)["vae"])
    sharpen(vae, args.seed, attrs.evolve(Sharpening(), steps=args.steps, noise_max=args.noise_max),
            stop_after=args.stop_after)
    if args.keep:
        torch.save({"vae": vae.state_dict()}, args.keep)
    save_weights(vae.state_dict(), args.out)
    for line in tv.evaluate(load_vae(args.out, "wan2.1"), 0).lines():
        tv._say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
