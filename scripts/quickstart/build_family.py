"""Build the quickstart family's folder: trained text encoder and VAE, the DiT's starting point, the tokenizer.

    python -m scripts.quickstart.build_family [--out /work/quickstart-family] [--seed 0]

Writes OUT/text_encoder/, OUT/vae/, OUT/dit/ and OUT/tokenizer/ (the layout of
``wanflow/assets/wanflow-tiny``, which the ``wanflow-tiny`` family's file globs read), every
weight file in bf16 under the official keys. The text encoder and the VAE are trained and then
checked through wanflow's own loaders (held-out captions; reconstructions of all 72
combinations); the DiT is only initialised: wanflow's training stage trains it. Prints the
accuracies, the timings and every file's size. Same seed, same bytes (on one machine: CPU
kernels may round differently elsewhere).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import attrs
import torch

from scripts.quickstart import init_dit, train_text_encoder, train_vae
from scripts.quickstart.files import save_weights
from wanflow.models.dit_config import DitConfig

ASSETS = Path(__file__).resolve().parents[2] / "wanflow" / "assets" / "wanflow-tiny"
TEXT_ENCODER_FILE = Path("text_encoder") / "models_t5_umt5-xxl-enc-bf16.safetensors"
VAE_FILE = Path("vae") / "Wan2.1_VAE.safetensors"


@attrs.frozen
class FamilySettings:
    """Everything the family's files depend on besides the seed; defaults are what ships."""

    text: train_text_encoder.TextTraining = attrs.field(factory=train_text_encoder.TextTraining)
    vae: train_vae.VAETraining = attrs.field(factory=train_vae.VAETraining)
    vae_dim: int = 8  # VAE base width (released: 96)
    dit: DitConfig = attrs.field(factory=init_dit.quickstart_config)
    check: bool = True  # evaluate the trained components through wanflow's loaders


def build(out: Path, seed: int = 0, settings: FamilySettings = FamilySettings()) -> list[str]:
    """Write the family under ``out``; returns the report's lines (also printed as they come)."""
    from wanflow.models.text_encoder import TextEncoder
    from wanflow.models.vae.loader import load_vae

    report: list[str] = []

    def say(line: str) -> None:
        report.append(line)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    shutil.copytree(ASSETS / "tokenizer", out / "tokenizer", dirs_exist_ok=True)

    start = time.perf_counter()
    model, heads, _ = train_text_encoder.train(seed, settings.text, log_every=0)
    path = save_weights(train_text_encoder.official_state(model), out / TEXT_ENCODER_FILE)
    say(f"text encoder trained in {time.perf_counter() - start:.0f} s ({settings.text.steps} steps)")
    if settings.check:
        encoder = TextEncoder.from_checkpoint(path, out / "tokenizer", dtype=torch.float32)
        for line in train_text_encoder.evaluate(encoder, heads).lines():
            say(line)

    start = time.perf_counter()
    # The VAE trains for an hour or two on a CPU: its whole state is kept beside the family's
    # folders (no family glob reads it), and a killed build resumes it where it stopped.
    checkpoint = out / "vae-training.ckpt"
    vae, _ = train_vae.train(seed, settings.vae, settings.vae_dim, log_every=100, checkpoint=checkpoint)
    checkpoint.unlink(missing_ok=True)  # done: the folder holds the family's files only
    path = save_weights(vae.state_dict(), out / VAE_FILE)
    say(f"VAE trained in {time.perf_counter() - start:.0f} s ({settings.vae.steps} steps)")
    if settings.check:
        for line in train_vae.evaluate(load_vae(path, "wan2.1"), seed).lines():
            say(line)

    init_dit.write_dit(out / "dit", settings.dit, seed)
    cfg = settings.dit
    say(f"DiT initialised: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, ffn {cfg.ffn_dim}")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    for p in files:
        say(f"{p.stat().st_size:>10}  {p.relative_to(out)}")
    say(f"{sum(p.stat().st_size for p in files):>10}  in all")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/work/quickstart-family"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-steps", type=int, default=attrs.fields(train_text_encoder.TextTraining).steps.default)
    ap.add_argument("--vae-steps", type=int, default=attrs.fields(train_vae.VAETraining).steps.default)
    ap.add_argument("--vae-dim", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = FamilySettings(attrs.evolve(train_text_encoder.TextTraining(), steps=args.text_steps),
                              attrs.evolve(train_vae.VAETraining(), steps=args.vae_steps), args.vae_dim)
    build(args.out, args.seed, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
