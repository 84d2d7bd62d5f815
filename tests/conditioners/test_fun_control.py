"""Wan-Fun Control's input channels (derivatives facts §4.3) as declared conditioners.

diffusers has no Fun Control pipeline, so each layout is computed here by hand from the facts,
with the stand-in VAE E and the control video decoded by ffmpeg directly:
- Wan2.1 (in_dim 48): [E(control) (16), start (16)], start = E(start image) at latent frame 0
  and zeros after it (the authors' code), or E([start, grey…]) on every frame (DiffSynth's);
- Wan2.2 (in_dim 52): [E(control) (16), mask (4), E([start, grey…]) (16)];
- without a start image the start channels (and the Wan2.2 mask) are zeros.
"""

from __future__ import annotations

import pytest
import torch

from tests.conditioners._standins import (
    FRAMES, Z, decoded_video, family, job, pixels, run_node, use_stand_in_vae, write_image, write_video,
)
from wanflow.conditioners import conditioner
from wanflow.steps.cond_kinds import model_call, nodes

WAN21 = (conditioner("control-latents"), conditioner("start-latent"))
WAN21_DIFFSYNTH = (conditioner("control-latents"), conditioner("start-latent", fill="grey"))
WAN22 = (conditioner("control-latents"), conditioner("image-channels", without_image="zeros"))


def y_of(declared, files) -> torch.Tensor:
    """Plan the declared conditioners, run their steps, hand them over: the joined channels."""
    planned = nodes(job(family(*declared), files), declared)
    tensors = {role: run_node(spec) for role, spec in planned}
    call = model_call([role for role, _ in planned], tensors)
    return call.y(slice(0, 3), 1)


@pytest.fixture()
def media(tmp_path):
    files = {"control_video": tmp_path / "depth.mp4", "image": tmp_path / "start.png"}
    write_video(files["control_video"], FRAMES + 2, seed=3)  # longer than the clip: its first frames
    start = write_image(files["image"], 4)
    return files, pixels(start), decoded_video(files["control_video"], FRAMES)


def grey_clip(start: torch.Tensor) -> torch.Tensor:
    """[start, mid-grey × (F − 1)]: (3, F, H, W), grey being 0 in [-1, 1]."""
    return torch.cat([start, torch.zeros(3, FRAMES - 1, *start.shape[2:])], dim=1)


def test_wan21_fun_control_is_control_then_the_start_latent_with_zeros_after(media, monkeypatch):
    vae = use_stand_in_vae(monkeypatch)
    files, start, control = media
    y = y_of(WAN21, files)
    first = vae.encode(start[None])  # (1, 16, 1, h, w): the start image alone
    expected = torch.cat([vae.encode(control[None]),
                          torch.cat([first, torch.zeros(1, Z, 2, *first.shape[3:])], dim=2)], dim=1)
    assert y.shape == (1, 32, 3, 2, 4)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)


def test_wan21_fun_control_diffsynth_fills_with_grey_latents(media, monkeypatch):
    vae = use_stand_in_vae(monkeypatch)
    files, start, control = media
    y = y_of(WAN21_DIFFSYNTH, files)
    expected = torch.cat([vae.encode(control[None]), vae.encode(grey_clip(start)[None])], dim=1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
    authors = y_of(WAN21, files)
    torch.testing.assert_close(y[:, :, :1], authors[:, :, :1])  # frame 0: the same latent either way
    assert not torch.allclose(y[:, 16:, 1:], authors[:, 16:, 1:])


def test_wan22_fun_control_is_control_mask_then_the_image_latents(media, monkeypatch):
    vae = use_stand_in_vae(monkeypatch)
    files, start, control = media
    y = y_of(WAN22, files)
    mask = torch.zeros(1, 4, 3, 2, 4)
    mask[:, :, 0] = 1  # only the start frame is given: all four mask channels of latent frame 0
    expected = torch.cat([vae.encode(control[None]), mask, vae.encode(grey_clip(start)[None])], dim=1)
    assert y.shape == (1, 16 + 4 + 16, 3, 2, 4)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("declared", "zeros"), [(WAN21, 16), (WAN21_DIFFSYNTH, 16), (WAN22, 20)])
def test_without_a_start_image_the_start_channels_are_zeros(media, monkeypatch, declared, zeros):
    vae = use_stand_in_vae(monkeypatch)
    files, _, control = media
    y = y_of(declared, {"control_video": files["control_video"]})
    torch.testing.assert_close(y[:, :16], vae.encode(control[None]), rtol=0, atol=1e-5)
    assert y.shape[1] == 16 + zeros and not y[:, 16:].any()


def test_the_channels_join_in_the_declared_order(media, monkeypatch):
    use_stand_in_vae(monkeypatch)
    files, _, _ = media
    forward, backward = y_of(WAN21, files), y_of(tuple(reversed(WAN21)), files)
    assert torch.equal(backward, torch.cat([forward[:, 16:], forward[:, :16]], dim=1))


def test_a_family_steered_by_a_control_video_needs_one(tmp_path):
    from wanflow.errors import ModelInputError

    with pytest.raises(ModelInputError, match=r"\[inputs\].control_video is not set"):
        nodes(job(family(*WAN21), {}), WAN21)
