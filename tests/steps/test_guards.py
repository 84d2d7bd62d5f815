"""Behaviours a refactor of the steps could silently lose, checked over the real Wan pipeline.

Each test plans and runs a recipe through the family's real pipeline on tiny weights in the
official ModelScope layouts, then compares what a node computed with what the models compute
when called directly with the recipe's settings: the VAE tiling of decode and of the
conditioning encode, the FLF2V frame mask, TI2V's first-frame clamp, the A14B expert boundary and
the recipe digest carried by the video.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from tests.e2e._layout import REPOS, write_models_root
from tests.e2e.conftest import use_models, write_images, write_recipe
from wanflow.engine.cache import Cache
from wanflow.engine.execute import Executor
from wanflow.engine.runner import plan_job
from wanflow.models.dit import WanDiT
from wanflow.models.vae import TileSpec
from wanflow.models.vae.loader import load_vae
from wanflow.output import load_image, read_mp4_metadata, to_model_image, to_uint8_frames
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe
from wanflow.sampling import Expert, expert_for

I2V, FLF2V, A14B, TI2V = "wan2.1-i2v-14b-480p", "wan2.1-flf2v-14b-720p", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b"
#: A tile grid that really cuts the 4x4 latent of a 32x32 video: 3x3 overlapping 2x2 tiles.
TILES = {"tiled": True, "tile_size": [2, 2], "tile_stride": [1, 1]}
#: Tiling off, with the same small tiles given: ``tiled = false`` alone must turn it off.
UNTILED = {**TILES, "tiled": False}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_root(tmp_path_factory.mktemp("models"), (I2V, FLF2V, A14B, TI2V))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("inputs"), seed=10)


@pytest.fixture()
def env(models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny repositories, offline, a fresh cache; returns a work folder."""
    use_models(models_root, tmp_path, monkeypatch)
    return tmp_path


@attrs.frozen
class DitCall:
    """What one DiT evaluation saw: the noisy latent, the timestep(s), and which weights ran."""

    x: torch.Tensor  # (B, z, T, h, w)
    t: torch.Tensor  # (B,) or per token (B, L)
    patch_bias: torch.Tensor  # patch_embedding.bias: tells the two A14B experts apart


@pytest.fixture()
def dit_calls(monkeypatch: pytest.MonkeyPatch) -> list[DitCall]:
    """Every WanDiT evaluation of the test, in order (the model still computes as usual)."""
    calls: list[DitCall] = []
    forward = WanDiT.forward
    signature = inspect.signature(forward)

    def recording(self: WanDiT, *args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(self, *args, **kwargs).arguments
        calls.append(DitCall(bound["x"].detach().clone(), bound["t"].detach().clone(),
                             self.patch_embedding.bias.detach().float().clone()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WanDiT, "forward", recording)
    return calls


def recipe_for(folder: Path, family: str, inputs: dict[str, Path] | None = None, **tables: dict) -> Path:
    """A small recipe (tests/e2e's: 32x32, 5 frames, 2 steps), computed in fp32 on the CPU so that
    the models called directly here compute bit for bit what the steps computed."""
    return write_recipe(folder, family, inputs, runtime={"device": "cpu", "dtype": "fp32"}, **tables)


def executed(recipe: Path, *sets: str) -> dict[str, Any]:
    """Every node's output after running the recipe's plan (the cache is ``WANFLOW_CACHE``)."""
    resolved = load_recipe(recipe, sets=sets)
    with Cache() as cache:
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        ex = Executor(plan, cache)
        ex.run()
        return {ps.name: ex.load(ps.name) for ps in plan.steps}


def vae_of(family: str) -> Any:
    """The family's VAE loaded on its own from the repository file, fp32 on the CPU."""
    repo = REPOS[family]
    return load_vae(repo_folder(family) / f"Wan{repo.vae[3:]}_VAE.pth", repo.vae, dtype=torch.float32)


def repo_folder(family: str) -> Path:
    """The family's repository under the models root the test points ``WANFLOW_MODELS`` at."""
    return Path(os.environ["WANFLOW_MODELS"]) / "Wan-AI" / REPOS[family].name


def clip_of(frames: int, width: int, height: int, first: Path, last: Path | None = None) -> torch.Tensor:
    """The clip an I2V/FLF2V VAE encodes: (1, 3, F, H, W), the image(s) at the ends, zeros between."""
    pictures = [torch.from_numpy(to_model_image(load_image(p, width, height))) for p in (first, last) if p]
    gap = torch.zeros(3, frames - len(pictures), height, width)
    return torch.cat([pictures[0], gap, *pictures[1:]], dim=1)[None]


def expected_mask(frames: int, given: set[int], h: int, w: int) -> torch.Tensor:
    """(4, T, h, w): the official layout, written out: the first pixel frame counts 4 times, then
    each latent frame holds 4 consecutive pixel frames; 1 where that pixel frame is given."""
    pixel = [1.0 if i in given else 0.0 for i in range(frames)]
    expanded = [pixel[0]] * 4 + pixel[1:]  # F + 3 entries, 4 per latent frame
    per_latent = torch.tensor(expanded).view(-1, 4).T  # (4, T)
    return per_latent[:, :, None, None].expand(4, per_latent.shape[1], h, w)


# ----------------------------------------------------------------------------- VAE tiling


def test_decode_uses_the_recipes_tiles(env, images):
    """The decode node equals the VAE's tiled decode of the denoised latent at the recipe's tile
    size and stride, which differs from an untiled decode (all the default tiles give a latent
    this small) and from a decode with another stride."""
    recipe = recipe_for(env, I2V, {"image": images["first"]}, vae=TILES)
    out = executed(recipe)
    latents = out["denoise"]["latents"]
    vae = vae_of(I2V)

    def frames(tile: TileSpec | None) -> torch.Tensor:
        with torch.no_grad():
            return torch.from_numpy(to_uint8_frames(vae.decode(latents, tile=tile)[0]))

    recipe_tiles = frames(TileSpec((2, 2), (1, 1)))
    assert not torch.equal(recipe_tiles, frames(None))  # tiling shows in the frames
    assert not torch.equal(recipe_tiles, frames(TileSpec((2, 2), (2, 2))))  # and so does the stride
    assert torch.equal(out["decode"]["frames"], recipe_tiles)


def test_decode_untiled_when_the_recipe_says_so(env, images):
    recipe = recipe_for(env, I2V, {"image": images["first"]}, vae=UNTILED)
    out = executed(recipe)
    with torch.no_grad():
        untiled = vae_of(I2V).decode(out["denoise"]["latents"])[0]
    assert torch.equal(out["decode"]["frames"], torch.from_numpy(to_uint8_frames(untiled)))


@pytest.mark.parametrize("vae", [TILES, UNTILED], ids=["tiled", "untiled"])
def test_encode_conditioning_uses_the_recipes_tiles(env, images, vae):
    """The image latent inside ``y`` equals the VAE's encode of [image, zeros…] with the
    recipe's tiling (and differs from the other tiling, so the comparison can tell them apart)."""
    recipe = recipe_for(env, I2V, {"image": images["first"]}, vae=vae)
    y = executed(recipe)["encode-conditioning:image"]["y"]
    model, clip = vae_of(I2V), clip_of(5, 32, 32, images["first"])
    spec = TileSpec(tuple(TILES["tile_size"]), tuple(TILES["tile_stride"]))
    with torch.no_grad():
        tiled, untiled = model.encode(clip, tile=spec), model.encode(clip)
    assert not torch.allclose(tiled, untiled, rtol=1e-3, atol=1e-3)
    assert torch.equal(y[:, 4:], tiled if vae["tiled"] else untiled)


# ----------------------------------------------------------------------------- the frame mask


@pytest.mark.parametrize(("family", "names", "given"), [
    (FLF2V, ("first", "last"), {0, 8}),
    (I2V, ("first",), {0}),
])
def test_image_conditioning_marks_exactly_the_given_frames(env, images, family, names, given):
    """FLF2V marks its first and last pixel frames (the last one in the 4th channel of the last
    latent frame) and nothing between; I2V only the first. The latent part holds the images at
    those frames, zeros elsewhere."""
    inputs = dict(zip(("image", "end_image"), (images[n] for n in names)))
    recipe = recipe_for(env, family, inputs, video={"frames": 9, "width": 16, "height": 16}, vae=UNTILED)
    y = executed(recipe)["encode-conditioning:image"]["y"]  # (1, 4 + 16, 3, 2, 2)
    assert y.shape == (1, 20, 3, 2, 2)
    assert torch.equal(y[0, :4], expected_mask(9, given, 2, 2))
    with torch.no_grad():
        latent = vae_of(family).encode(clip_of(9, 16, 16, *(images[n] for n in names)))
    assert torch.equal(y[:, 4:], latent)


# ----------------------------------------------------------------------------- TI2V


def test_ti2v_first_frame_is_the_image_latent_at_every_model_call(env, images, dit_calls):
    """The first latent frame is clamped to the image latent before the first step (the model's
    first call already sees it), after every step (every later call) and in the result."""
    recipe = recipe_for(env, TI2V, {"image": images["first"]}, video={"width": 32, "height": 32},
                        sampler={"steps": 3})
    out = executed(recipe)
    z0 = out["encode-conditioning:image"]["z0"]  # (1, 48, 1, 2, 2)
    assert z0.shape == (1, 48, 1, 2, 2) and z0.abs().max() > 0

    def first_frame_is_z0(x: torch.Tensor) -> bool:  # (B, 48, T, 2, 2): B = 2 when CFG is batched
        return torch.equal(x[:, :, :1].float(), z0.expand(x.shape[0], -1, -1, -1, -1))

    assert len({float(c.t.max()) for c in dit_calls}) == 3  # one timestep per step
    assert first_frame_is_z0(dit_calls[0].x), "the first step saw the noise, not the image latent"
    for i, call in enumerate(dit_calls):
        assert first_frame_is_z0(call.x), f"model call {i}"
        assert call.x[:, :, 1:].abs().max() > 0  # the other frames are being denoised
    assert torch.equal(out["denoise"]["latents"][:, :, :1], z0)


# ----------------------------------------------------------------------------- A14B


def test_a_timestep_equal_to_the_boundary_is_high_noise():
    """The official rule: Wan2.2 ``wan/text2video.py`` takes ``high_noise_model`` ``if t.item() >=
    boundary`` (boundary = ``cfg.boundary`` x 1000), as diffusers' ``pipeline_wan.py`` does with
    ``t >= boundary_timestep``: a timestep equal to the boundary is high noise."""
    assert expert_for(875, 0.875) is Expert.HIGH_NOISE
    assert expert_for(torch.tensor(875), 0.875) is Expert.HIGH_NOISE
    assert expert_for(874, 0.875) is Expert.LOW_NOISE
    assert expert_for(900.0, 0.9) is Expert.HIGH_NOISE


def test_a14b_step_at_the_boundary_runs_on_the_high_noise_expert(env, dit_calls):
    """Wan2.2's ``wan/text2video.py`` (``t.item() >= boundary``) and diffusers' ``pipeline_wan.py``
    (``t >= boundary_timestep``) give a step whose timestep equals boundary x 1000 to the
    high-noise expert. The boundary is set to the second step's timestep, read off a first run."""
    recipe = recipe_for(env, A14B, sampler={"steps": 3, "shift": 5.0})
    executed(recipe)
    timesteps = list(experts_by_step(dit_calls))
    assert len(timesteps) == 3 and timesteps[0] > timesteps[1] > timesteps[2]
    boundary = timesteps[1] / 1000
    assert boundary * 1000 == timesteps[1]  # the equality case really happens

    dit_calls.clear()
    executed(recipe, f"sampler.boundary={boundary!r}")
    ran = experts_by_step(dit_calls)
    assert ran == {timesteps[0]: {"high"}, timesteps[1]: {"high"}, timesteps[2]: {"low"}}


def experts_by_step(calls: list[DitCall]) -> dict[float, set[str]]:
    """Timestep -> the experts ("high"/"low", by the weights they hold) evaluated at it, in step order."""
    stored = {name: expert_bias(A14B, f"{name}_noise_model") for name in ("high", "low")}
    assert not torch.equal(stored["high"], stored["low"])
    out: dict[float, set[str]] = {}
    for call in calls:
        names = {name for name, bias in stored.items() if torch.equal(call.patch_bias, bias)}
        assert len(names) == 1, "a DiT holding neither expert's weights ran"
        out.setdefault(float(call.t.flatten()[0]), set()).update(names)
    return out


def expert_bias(family: str, folder: str) -> torch.Tensor:
    """``patch_embedding.bias`` as stored in one expert's folder (sharded, with its index)."""
    from safetensors import safe_open

    root = repo_folder(family) / folder
    index = json.loads((root / "diffusion_pytorch_model.safetensors.index.json").read_text())
    with safe_open(str(root / index["weight_map"]["patch_embedding.bias"]), "pt") as f:
        return f.get_tensor("patch_embedding.bias").float()


# ----------------------------------------------------------------------------- the recipe digest


def test_the_videos_recipe_digest_follows_the_recipe(env, tmp_path, monkeypatch):
    """Recipes that differ (seed, prompt) carry different digests in the mp4 and its sidecar; the
    same recipe written again, run on another cache, carries the same digest."""

    def digests(recipe: Path, *sets: str) -> tuple[str, str]:
        out = executed(recipe, *sets)
        video = tmp_path / "video.mp4"
        video.write_bytes(out["save"])
        return read_mp4_metadata(video)["recipe_digest"], json.loads(out["save-metadata"])["recipe_digest"]

    (env / "a").mkdir()
    first = recipe_for(env / "a", A14B, sampler={"steps": 1, "cfg": 1.0})
    base = digests(first)
    assert base[0] and base[0] == base[1]  # the mp4 and its sidecar agree
    assert digests(first, "sampler.seed=1")[0] != base[0]
    assert digests(first, "prompt.text=a blue cube")[0] != base[0]

    (env / "b").mkdir()
    again = recipe_for(env / "b", A14B, sampler={"steps": 1, "cfg": 1.0})
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "other-cache"))
    assert digests(again) == base
