"""Wan-Fun InP's conditioning (derivatives facts §4.2) as declared conditioners, against diffusers.

Fun InP is image-channels and clip-tokens with options, no new code: y = [mask (4), VAE([start,
zeros…, end])], the last latent frame's mask [0, 0, 0, 1] with an end image; CLIP of the start
image alone; zeros for both without an image. diffusers' ``WanImageToVideoPipeline.prepare_latents``
assembles the same y (FLF2V / Fun InP layout) and is the reference, over one stand-in VAE.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conditioners._standins import (
    FRAMES, HEIGHT, WIDTH, Z, family, job, pixels, run_node, use_stand_in_vae, write_image,
)
from wanflow.conditioners import conditioner
from wanflow.memory import pool as model_pool
from wanflow.steps.cond_kinds import model_call, nodes

FUN_INP = (conditioner("clip-tokens", images="first", without_image="zeros"),
           conditioner("image-channels", without_image="zeros"))


def diffusers_condition(vae, start: torch.Tensor, end: torch.Tensor | None) -> torch.Tensor:
    """diffusers' I2V/FLF2V condition [mask 4, latents], over the stand-in VAE (mean 0, std 1)."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline

    class Vae(torch.nn.Module):  # what the pipeline asks of its AutoencoderKLWan
        dtype, device = torch.float32, torch.device("cpu")
        config = SimpleNamespace(latents_mean=[0.0] * Z, latents_std=[1.0] * Z, z_dim=Z)

        def encode(self, video):
            return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: vae.encode(video)))

    stand_in = SimpleNamespace(config=SimpleNamespace(expand_timesteps=False), vae=Vae(),
                               vae_scale_factor_temporal=4, vae_scale_factor_spatial=8)
    _, condition = WanImageToVideoPipeline.prepare_latents(
        stand_in, start[None], 1, Z, HEIGHT, WIDTH, FRAMES, torch.float32, torch.device("cpu"),
        torch.Generator().manual_seed(0), None, None if end is None else end[None])
    return condition


def test_fun_inp_channels_with_an_end_image_equal_diffusers(tmp_path, monkeypatch):
    vae = use_stand_in_vae(monkeypatch)
    files = {"image": tmp_path / "start.png", "end_image": tmp_path / "end.png"}
    start, end = write_image(files["image"], 1), write_image(files["end_image"], 2)
    planned = dict(nodes(job(family(FUN_INP[1]), files), (FUN_INP[1],)))
    y = run_node(planned["y"])["y"]
    expected = diffusers_condition(vae, pixels(start)[:, 0], pixels(end)[:, 0])
    assert y.shape == (1, 4 + Z, 3, 2, 4)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    assert y[0, :4, -1, 0, 0].tolist() == [0, 0, 0, 1]  # only the last pixel frame of the last latent frame
    assert y[0, :4, 0].eq(1).all() and y[0, :4, 1].eq(0).all()
    only_start = diffusers_condition(vae, pixels(start)[:, 0], None)
    assert not torch.allclose(y, only_start)  # the end image matters, so the comparison can tell


def test_fun_inp_clip_sees_only_the_start_image(tmp_path, monkeypatch):
    files = {"image": tmp_path / "start.png", "end_image": tmp_path / "end.png"}
    start, _ = write_image(files["image"], 1), write_image(files["end_image"], 2)
    seen = []

    class Encoder:
        def encode(self, images):
            seen.append(images.clone())
            return torch.ones(images.shape[0], 257, 1280)

    monkeypatch.setattr(model_pool, "image_encoder", lambda *args, **kwargs: Encoder())
    fun = dict(nodes(job(family(*FUN_INP, clip=True), files), FUN_INP))
    assert set(fun["clip"].files) == {"image"}
    assert run_node(fun["clip"])["clip"].shape == (1, 257, 1280)
    torch.testing.assert_close(seen[0], pixels(start)[:, 0][None], rtol=0, atol=1e-6)
    flf2v = conditioner("clip-tokens")  # the official FLF2V: both images
    both = dict(nodes(job(family(flf2v, clip=True), files), (flf2v,)))
    assert both["clip"].step.roles == ("image", "end_image")


def test_fun_inp_without_an_image_hands_over_zeros(tmp_path):
    fam = family(*FUN_INP, clip=True)
    planned = dict(nodes(job(fam, {}), FUN_INP))
    assert list(planned) == ["clip", "y"]
    tensors = {role: run_node(spec) for role, spec in planned.items()}
    call = model_call(("clip", "y"), tensors)
    assert call.tokens.shape == (1, 257, 1280) and not call.tokens.any()
    assert call.channels[0].shape == (1, 4 + Z, 3, 2, 4) and not call.channels[0].any()
    i2v = (conditioner("clip-tokens"), conditioner("image-channels"))  # the image is required: nothing
    assert nodes(job(family(*i2v, clip=True), {}), i2v) == []


@pytest.mark.parametrize("bad", [{"images": "last"}, {"without_image": "noise"}, {"fill": "zeros"}])
def test_a_bad_option_is_refused_where_the_family_declares_it(bad):
    with pytest.raises(ValueError, match="clip-tokens"):
        conditioner("clip-tokens", **bad)
