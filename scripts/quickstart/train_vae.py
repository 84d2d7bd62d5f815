"""Train the quickstart's tiny Wan2.1 VAE on shape clips, so its latents carry colour, shape and motion.

    python -m scripts.quickstart.train_vae OUT.safetensors [--seed 0] [--steps 3000] [--dim 8] [--checkpoint F]

The architecture is wanflow's own ``VideoVAE`` (the released Wan2.1 layout at base width
``dim``), so the file it writes loads through wanflow's VAE loader unchanged. The loss is:

- reconstruction: L1 (object pixels weighted up: the shape covers ~5 % of the frame, and its
  colour and outline are what the model is graded on) plus MSE;
- latent scale: the normalised latents ``(mu - mean) / std`` (what ``VideoVAE.encode`` returns,
  with the released per-channel constants, which the loader does not read from the file) are
  pushed to zero mean and unit variance per channel, the scale flow matching assumes;
- decoder robustness: the decoder sees latents with Gaussian noise added, as a DiT's imperfect
  latents will be; ``log_var`` learns to state that noise level, so ``sample=True`` draws it.

Training starts from He-normal weights and zero biases (``initialise``: from torch's default
init the VAE collapses to the mean grey), first on lone frames, then on whole clips. The training
forward runs the encoder and decoder over the whole clip in one uncached pass; the evaluation
uses the chunked ``encode``/``decode`` that wanflow runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from scripts.quickstart.files import save_weights, seed_everything
from scripts.shapes.classify import classify
from scripts.shapes.render import render, sample_spec
from scripts.shapes.vocabulary import all_combos, training_combos
from wanflow.models.vae import WAN21, VAEConfig, VideoVAE
from wanflow.models.vae.normalization import denormalize, normalize

FRAMES, SIZE = 17, 64  # the quickstart's clips: 17 frames of 64x64 -> latents 16 x 5 x 8 x 8
ATTRIBUTES = ("colour", "shape", "motion")


def tiny_config(dim: int = 8) -> VAEConfig:
    """The released Wan2.1 VAE at base width ``dim`` (96 released), its latent statistics kept."""
    return attrs.evolve(WAN21, dim=dim)


@attrs.frozen
class VAETraining:
    """How the VAE is trained; defaults are what ships."""

    steps: int = 3000  # in all, the image steps included
    image_steps: int = 500  # first steps on lone frames (the causal VAE codes frame 0 alone)
    image_batch: int = 8
    batch: int = 2
    window: int = 17  # frames per training clip: a whole quickstart clip (5 latent frames)
    lr: float = 5e-4
    warmup: int = 50  # linear warm-up steps, then a cosine down to lr / 10
    #: Extra L1 weight on the shape's pixels: at 4 whole-clip training blurs the shape into the
    #: background (the classifier finds no object in any frame after 1,100 steps); at 30 the
    #: shape's pixels weigh about as much as the background's and it is kept.
    object_weight: float = 30.0
    stats_weight: float = 0.1  # weight of the unit-scale penalty on the normalised latents
    noise_max: float = 0.2  # decoder input noise: sigma ~ U(0, noise_max), in normalised units
    logvar_sigma: float = 0.1  # the posterior spread log_var learns (normalised units)
    logvar_weight: float = 0.01


# ----------------------------------------------------------------------------- data


def to_video(frames: np.ndarray) -> Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def to_frames(video: Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    pixels = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).numpy()


def training_batch(seed: int, step: int, batch: int, window: int) -> tuple[Tensor, Tensor]:
    """Windows of freshly rendered training-split clips, and a mask of the shape's pixels.

    Returns video (B, 3, window, 64, 64) in [-1, 1] and mask (B, 1, window, 64, 64) in {0, 1};
    a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    combos = training_combos()
    clips, backgrounds = [], []
    for _ in range(batch):
        spec = sample_spec(rng, *combos[rng.integers(len(combos))], frames=FRAMES, height=SIZE, width=SIZE)
        start = int(rng.integers(FRAMES - window + 1))
        clips.append(render(spec)[start:start + window])
        backgrounds.append(spec.background)
    frames = np.stack(clips)  # (B, T, H, W, 3)
    grey = np.asarray(backgrounds, np.int16).reshape(-1, 1, 1, 1, 1)
    mask = np.abs(frames.astype(np.int16) - grey).max(axis=-1) > 8  # (B, T, H, W)
    return to_video(frames), torch.from_numpy(mask)[:, None].float()


# ----------------------------------------------------------------------------- training


def initialise(vae: VideoVAE) -> VideoVAE:
    """He-normal convolution weights and zero biases, in place; returns ``vae``.

    torch's default convolution init (uniform, a third of the variance He keeps) with biases of the
    same size as the signal makes every layer's output largely an input-independent offset; the
    VAE's per-pixel RMSNorm then divides the input's share away. At base width 8 training from that
    init collapses: within 60 steps the encoder's output hardly depends on the clip and the decoder
    paints the dataset's mean grey whatever it is given. He init keeps the input's share, so the
    gradient has a signal to grow.
    """
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.zero_()
    return vae


def losses(vae: VideoVAE, video: Tensor, mask: Tensor, settings: VAETraining,
           generator: torch.Generator, extra_weight: Tensor | None = None) -> dict[str, Tensor]:
    """The loss terms of one batch; ``extra_weight`` (broadcast to the video) adds to the L1 weight
    of each pixel (``sharpen_vae``'s outline band)."""
    cfg = vae.config
    mu, log_var = vae.conv1(vae.encoder(video)).chunk(2, dim=1)  # raw (B, z, t, h, w) each
    z = normalize(mu, cfg.mean, cfg.std)
    mean, var = z.mean(dim=(0, 2, 3, 4)), z.var(dim=(0, 2, 3, 4))  # per channel
    sigma = settings.noise_max * torch.rand(z.shape[0], 1, 1, 1, 1, generator=generator)
    noisy = z + sigma * torch.randn(z.shape, generator=generator)
    out = vae.decoder(vae.conv2(denormalize(noisy, cfg.mean, cfg.std)))
    err = out - video
    std = torch.tensor(cfg.std).view(1, -1, 1, 1, 1)
    spread = torch.log((settings.logvar_sigma * std) ** 2)  # raw-space variance of that spread
    weight = 1 + settings.object_weight * mask
    if extra_weight is not None:
        weight = weight + extra_weight
    return {"recon": (weight * err.abs()).mean() + err.pow(2).mean(),
            "stats": mean.pow(2).mean() + (var - 1).pow(2).mean(),
            "log_var": (log_var - spread).pow(2).mean()}


def total(terms: dict[str, Tensor], settings: VAETraining) -> Tensor:
    return terms["recon"] + settings.stats_weight * terms["stats"] + settings.logvar_weight * terms["log_var"]


def learning_rate(step: int, settings: VAETraining) -> float:
    """Linear warm-up, then a cosine from lr to lr / 10."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    done = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def shape_of_step(step: int, settings: VAETraining) -> tuple[int, int]:
    """(clips, frames) of a step's batch: lone frames first, which trains every spatial layer at
    a fraction of a window's cost, then windows, which add the time convolutions."""
    if step < settings.image_steps:
        return settings.image_batch, 1
    return settings.batch, settings.window


def train(seed: int, settings: VAETraining = VAETraining(), dim: int = 8, log_every: int = 100,
          on_log: Callable[[int, VideoVAE], None] | None = None,
          checkpoint: Path | None = None) -> tuple[VideoVAE, list[float]]:
    """A VAE trained from a seeded init; returns it (eval mode) and the total loss of every step.

    ``on_log(step, vae)``, if given, runs at every log line. With ``checkpoint``, the whole state
    (weights, optimiser, noise generator, losses) is written there at every log line and a run
    finding one resumes from it: batches are a pure function of (seed, step), so a resumed run
    ends with the same weights as an uninterrupted one."""
    seed_everything(seed)
    vae = initialise(VideoVAE(tiny_config(dim))).train()
    generator = torch.Generator().manual_seed(seed + 1)
    optimiser = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    history, start, first = [], time.perf_counter(), 0
    if checkpoint is not None and checkpoint.exists():
        first, history = _resume(checkpoint, vae, optimiser, generator, settings)
        _say(f"vae: resumed at step {first} from {checkpoint}")
    for step in range(first, settings.steps):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, settings)
        video, mask = training_batch(seed, step, *shape_of_step(step, settings))
        terms = losses(vae, video, mask, settings, generator)
        loss = total(terms, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        history.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            parts = " ".join(f"{k} {float(v):.4f}" for k, v in terms.items())
            _say(f"vae step {step + 1}/{settings.steps}: {parts} ({time.perf_counter() - start:.0f} s)")
            if checkpoint is not None:
                _keep(checkpoint, step + 1, vae, optimiser, generator, history, settings)
            if on_log is not None:
                on_log(step + 1, vae)
    return vae.eval().requires_grad_(False), history


def _keep(path: Path, step: int, vae: VideoVAE, optimiser: torch.optim.Optimizer, generator: torch.Generator,
          history: list[float], settings: VAETraining) -> None:
    """The training state after ``step`` steps, written atomically (a kill never leaves half a file)."""
    state = {"step": step, "settings": attrs.asdict(settings), "vae": vae.state_dict(),
             "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "history": history}
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def _resume(path: Path, vae: VideoVAE, optimiser: torch.optim.Optimizer, generator: torch.Generator,
            settings: VAETraining) -> tuple[int, list[float]]:
    state = torch.load(path, weights_only=False)
    if state["settings"] != attrs.asdict(settings):
        raise SystemExit(f"{path}: a checkpoint of other settings ({state['settings']}); delete it or "
                         "train with those settings")
    vae.load_state_dict(state["vae"])
    optimiser.load_state_dict(state["optimiser"])
    generator.set_state(state["generator"])
    return state["step"], list(state["history"])


# ----------------------------------------------------------------------------- evaluation


@attrs.frozen
class VAEReport:
    """How well reconstructions keep what the classifier reads, and the latents' scale."""

    clips: int
    accuracy: dict[str, float]  # per attribute, on decoded reconstructions of every combination
    psnr: float  # dB, mean over clips
    latent_mean: tuple[float, ...]  # per channel, of the normalised latents
    latent_std: tuple[float, ...]
    seconds: float  # encode + decode of one 64x64x17 clip, best of three, one thread

    def lines(self) -> list[str]:
        acc = ", ".join(f"{a} {v:.3f}" for a, v in self.accuracy.items())
        return [f"VAE reconstructions of {self.clips} clips: {acc}; PSNR {self.psnr:.1f} dB",
                (f"normalised latents: |mean| <= {max(map(abs, self.latent_mean)):.2f}, std "
                 f"{min(self.latent_std):.2f}..{max(self.latent_std):.2f} per channel"),
                f"encode + decode of a 64x64x17 clip: {self.seconds:.2f} s on one thread"]


def evaluation_clips(seed: int, per_combo: int) -> list[tuple[tuple[str, str, str], np.ndarray]]:
    """``per_combo`` clips of every one of the 72 combinations, none of them a training batch's."""
    out = []
    for i, combo in enumerate(all_combos()):
        for k in range(per_combo):
            spec = sample_spec(np.random.default_rng([seed, 1_000_003, i, k]), *combo)
            out.append((combo, render(spec)))
    return out


@torch.no_grad()
def reconstruct(vae: VideoVAE, frames: np.ndarray) -> tuple[np.ndarray, Tensor]:
    """A clip through wanflow's chunked encode and decode: (frames, normalised latents)."""
    latents = vae.encode(to_video(frames[None]))
    return to_frames(vae.decode(latents)[0]), latents


def evaluate(vae: VideoVAE, seed: int, per_combo: int = 1) -> VAEReport:
    """Classify reconstructions of every combination; latent statistics; one clip's timing."""
    correct = {a: [] for a in ATTRIBUTES}
    latents, psnrs = [], []
    clips = evaluation_clips(seed, per_combo)
    for combo, frames in clips:
        decoded, z = reconstruct(vae, frames)
        seen = classify(decoded)
        for i, a in enumerate(ATTRIBUTES):
            correct[a].append(getattr(seen, a) == combo[i])
        mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
        psnrs.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        latents.append(z[0].flatten(1))  # (z, t*h*w)
    flat = torch.cat(latents, dim=1)
    return VAEReport(len(clips), {a: float(np.mean(v)) for a, v in correct.items()}, float(np.mean(psnrs)),
                     tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist()), clip_seconds(vae, clips[0][1]))


def clip_seconds(vae: VideoVAE, frames: np.ndarray) -> float:
    """Best of three encode + decode timings of one clip, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            reconstruct(vae, frames)
            times.append(time.perf_counter() - start)
        return min(times)
    finally:
        torch.set_num_threads(before)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    from wanflow.models.vae.loader import load_vae

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the safetensors file to write (e.g. FAMILY/vae/Wan2.1_VAE.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=attrs.fields(VAETraining).steps.default)
    ap.add_argument("--dim", type=int, default=8, help="base width (the released VAE has 96)")
    ap.add_argument("--checkpoint", type=Path, help="keep the training state here; an existing one is resumed")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    vae, _ = train(args.seed, attrs.evolve(VAETraining(), steps=args.steps), args.dim, checkpoint=args.checkpoint)
    save_weights(vae.state_dict(), args.out)
    for line in evaluate(load_vae(args.out, "wan2.1"), args.seed).lines():
        _say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
