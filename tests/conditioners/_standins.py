"""Stand-ins shared by the conditioner tests: a small causal "VAE", media files and a planning job.

The stand-in VAE is deliberately simple and independent of wanflow's: 8x8 average pooling, the
first frame alone then groups of four averaged (causal, as the Wan VAE), a fixed 3 -> z channel
map and an offset, so that mid-grey pixels (0) do not encode to zero latents. The conditioner
steps get it through the model pool; the references call it directly.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from wanflow.engine.step import WeightFile
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.memory import pool as model_pool

Z = 16  # latent channels of the Wan2.1 VAE the Fun models use
WIDTH, HEIGHT, FRAMES = 32, 16, 9  # a clip of 9 frames: 3 latent frames of 2x4 latents
PARAMS = {"video.width": WIDTH, "video.height": HEIGHT, "video.frames": FRAMES, "vae.tiled": False,
          "vae.tile_size": (30, 52), "vae.tile_stride": (15, 26), "runtime.device": "cpu",
          "runtime.dtype": "fp32", "runtime.attention": "sdpa", "sampler.noise_device": "cpu",
          "sampler.denoising_strength": 1.0, "sampler.strength_schedule": "rescale"}


class StandInVae:
    """encode((1, 3, F, H, W) in [-1, 1]) -> (1, Z, 1 + (F-1)/4, H/8, W/8)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(11)
        self.mix = torch.randn(Z, 3, generator=g)
        self.offset = torch.linspace(0.25, 1.0, Z)

    def encode(self, pixels: torch.Tensor, tile: object = None) -> torch.Tensor:
        x = pixels.float()
        b, c, f, h, w = x.shape
        x = x.view(b, c, f, h // 8, 8, w // 8, 8).mean(dim=(4, 6))  # (B, 3, F, h, w)
        groups = [x[:, :, :1]] + [x[:, :, i:i + 4].mean(dim=2, keepdim=True) for i in range(1, f, 4)]
        x = torch.cat(groups, dim=2)  # (B, 3, T, h, w)
        return torch.einsum("zc,bcthw->bzthw", self.mix, x) + self.offset.view(1, Z, 1, 1, 1)


def use_stand_in_vae(monkeypatch) -> StandInVae:
    vae = StandInVae()
    monkeypatch.setattr(model_pool, "vae", lambda *args, **kwargs: vae)
    return vae


def write_image(path: Path, seed: int, mode: str = "RGB") -> np.ndarray:
    """A random image of the clip's size (no resize, no crop); returns its RGB pixels."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def write_video(path: Path, frames: int, seed: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    from wanflow.output import save_mp4

    rng = np.random.default_rng(seed)
    save_mp4(rng.integers(0, 256, (frames, size[1], size[0], 3), dtype=np.uint8), path, 8, {}, quality=0)


def decoded_video(path: Path, frames: int) -> torch.Tensor:
    """(3, F, H, W) in [-1, 1], decoded by ffmpeg directly (not through wanflow's reader)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    out = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for _, f in zip(range(frames), reader)]
    reader.close()
    return pixels(np.stack(out))


def pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) or (H, W, 3) -> (3, F, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.asarray(frames, np.float32) / 127.5 - 1.0)
    x = x[None] if x.ndim == 3 else x
    return x.permute(3, 0, 1, 2)


def family(*conditioners, clip: bool = False) -> FamilySpec:
    components = {"vae": ComponentSpec("vae", "x", ("vae",), "wan2.1-vae")}
    if clip:
        components["image_encoder"] = ComponentSpec("image_encoder", "x", ("clip",), "clip-vit-h-14")
    return FamilySpec("test-fun", "conditioners under test", components, {},
                      frozenset({"image", "end_image", "control_video", "video"}), conditioners=tuple(conditioners))


def job(fam: FamilySpec, files: dict[str, Path], **values: object):
    """The pipeline's planning job over ``fam``, with the given input files and recipe values."""
    from wanflow.steps.pipeline import _Job

    resolved = SimpleNamespace(family=fam, path=Path("r.toml"), recipe=SimpleNamespace(models={}),
                               values={**PARAMS, **{f"inputs.{k}": str(v) for k, v in files.items()}, **values})
    weights = {"vae": {"vae.0": WeightFile(Path("vae.pth"))}}
    if "image_encoder" in fam.components:
        weights["image_encoder"] = {"image_encoder.0": WeightFile(Path("clip.pth"))}
    return _Job(resolved, weights, catalog=None)


def run_node(spec, params: dict | None = None) -> dict[str, torch.Tensor]:
    """Run one planned node's step with its files (the Ctx stand-in serves files and weights)."""
    from tests.steps._ctx import Ctx

    served = {**spec.files, **{role: w.path for role, w in spec.weights.items()}}
    return spec.step.run(Ctx({**PARAMS, **(params or {})}, {}, served))
