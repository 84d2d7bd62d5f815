"""The VACE context (derivatives facts §3.2) as the vace-context conditioner assembles it.

Oracle: diffusers' ``WanVACEPipeline`` — its ``preprocess_conditions`` (reference letterboxing),
``prepare_video_latents`` and ``prepare_masks`` called on a stand-in ``self`` whose VAE is the
stand-in E (returned un-normalised, with a latents mean and std diffusers applies itself). Two
references are checked against a hand computation (diffusers reverses them: its order given the
references reversed is ours). Files are written once and read by both sides from the same pixels.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conditioners._standins import (
    FRAMES, HEIGHT, WIDTH, Z, StandInVae, family, job, pixels, run_node, use_stand_in_vae, write_video,
)
from wanflow.conditioners import conditioner
from wanflow.errors import ModelInputError
from wanflow.steps.cond_kinds import model_call, nodes

VACE = (conditioner("vace-context"),)
LATENT_FRAMES = (FRAMES - 1) // 4 + 1
MEAN, STD = torch.linspace(-0.5, 0.5, Z), torch.linspace(0.5, 2.0, Z)


def context_of(files: dict, **values) -> tuple[dict, object]:
    """Plan the conditioner for a job with these [inputs.vace] files and values, run its step."""
    vals = {f"inputs.vace.{k}": str(v) for k, v in files.items()}
    vals |= {f"inputs.vace.{k}": v for k, v in values.items()}
    ((role, spec),) = nodes(job(family(*VACE), {}, **vals), VACE)
    assert role == "vace"
    return run_node(spec), spec


def diffusers_self(vae: StandInVae) -> SimpleNamespace:
    """What WanVACEPipeline's preparation methods read of ``self``."""
    from diffusers.video_processor import VideoProcessor

    def encode(video):
        raw = vae.encode(video) * STD.view(1, Z, 1, 1, 1) + MEAN.view(1, Z, 1, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: raw))

    config = SimpleNamespace(latents_mean=MEAN.tolist(), latents_std=STD.tolist(), z_dim=Z)
    return SimpleNamespace(vae=SimpleNamespace(dtype=torch.float32, encode=encode, config=config),
                           _execution_device=torch.device("cpu"), vae_scale_factor_temporal=4,
                           vae_scale_factor_spatial=8, video_processor=VideoProcessor(vae_scale_factor=8),
                           transformer=SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2))),
                           transformer_2=None)


def diffusers_context(vae: StandInVae, frames, mask, references) -> torch.Tensor:
    """diffusers' conditioning latents: its preprocessing, video latents and mask latents."""
    from diffusers import WanVACEPipeline as P

    me, cpu = diffusers_self(vae), torch.device("cpu")
    video, masks, refs = P.preprocess_conditions(me, frames, mask, references, 1, HEIGHT, WIDTH, FRAMES,
                                                 torch.float32, cpu)
    latents = P.prepare_video_latents(me, video, masks, refs, None, cpu)
    return torch.cat([latents, P.prepare_masks(me, masks, refs, None)], dim=1)


def decoded_frames(path) -> list:
    """The video's frames as PIL images, decoded by ffmpeg directly."""
    import imageio_ffmpeg
    from PIL import Image

    reader = imageio_ffmpeg.read_frames(str(path))
    w, h = next(reader)["size"]
    out = [Image.frombytes("RGB", (w, h), bytes(f)) for _, f in zip(range(FRAMES), reader)]
    reader.close()
    return out


@pytest.fixture()
def media(tmp_path):
    """A video, a soft grey mask (one PNG held for every frame) and two references of other sizes."""
    from PIL import Image

    rng = np.random.default_rng(5)
    write_video(tmp_path / "clip.mp4", FRAMES + 2, seed=6)
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(rng.integers(0, 256, (24, 16, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    Image.fromarray(rng.integers(0, 256, (8, 24, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    return SimpleNamespace(video=tmp_path / "clip.mp4", mask=tmp_path / "mask.png", refs=(tmp_path / "tall.png",
                           tmp_path / "wide.png"))


def test_one_reference_matches_diffusers(media, monkeypatch):
    from PIL import Image

    vae = use_stand_in_vae(monkeypatch)
    out, _ = context_of({"video": media.video, "mask": media.mask, "reference": media.refs[0]})
    grey = Image.open(media.mask).convert("RGB")
    expected = diffusers_context(vae, decoded_frames(media.video), [grey] * FRAMES, Image.open(media.refs[0]))
    assert out["context"].shape == (1, 2 * Z + 64, 1 + LATENT_FRAMES, HEIGHT // 8, WIDTH // 8)
    torch.testing.assert_close(out["context"], expected, rtol=0, atol=1e-5)
    assert out["references"].tolist() == [1]


def test_no_reference_matches_diffusers(media, monkeypatch):
    from PIL import Image

    vae = use_stand_in_vae(monkeypatch)
    out, _ = context_of({"video": media.video, "mask": media.mask})
    grey = Image.open(media.mask).convert("RGB")
    expected = diffusers_context(vae, decoded_frames(media.video), [grey] * FRAMES, None)
    assert out["context"].shape[2] == LATENT_FRAMES
    torch.testing.assert_close(out["context"], expected, rtol=0, atol=1e-5)
    assert out["references"].tolist() == [0]


def test_no_video_is_a_grey_video_with_everything_to_generate(monkeypatch):
    vae = use_stand_in_vae(monkeypatch)
    out, spec = context_of({})
    expected = diffusers_context(vae, None, None, None)  # diffusers: zeros video, ones mask
    torch.testing.assert_close(out["context"], expected, rtol=0, atol=1e-5)
    assert torch.equal(out["context"][:, 2 * Z:], torch.ones(1, 64, LATENT_FRAMES, HEIGHT // 8, WIDTH // 8))
    assert dict(spec.files) == {}


def hand_mask_latents(mask: torch.Tensor) -> torch.Tensor:
    """(1, 64, T, h, w) from (F, H, W), written out: channel dy·8 + dx holds pixel (8y + dy, 8x + dx);
    latent frame t takes pixel frame floor((t + 0.5)·F / T) (nearest-exact)."""
    frames, h, w = mask.shape[0], mask.shape[1] // 8, mask.shape[2] // 8
    t_out = (frames + 3) // 4
    out = torch.zeros(1, 64, t_out, h, w)
    for t in range(t_out):
        src = min(int((t + 0.5) * frames / t_out), frames - 1)
        for dy in range(8):
            for dx in range(8):
                out[0, dy * 8 + dx, t] = mask[src, dy::8, dx::8]
    return out


def letterboxed(path, width: int, height: int) -> torch.Tensor:
    """(3, 1, H, W): the image scaled to fit (bilinear), centred on white."""
    import torch.nn.functional as F
    from PIL import Image

    image = pixels(np.asarray(Image.open(path).convert("RGB")))[:, 0]  # (3, h, w)
    scale = min(height / image.shape[1], width / image.shape[2])
    fit = int(image.shape[1] * scale), int(image.shape[2] * scale)
    canvas = torch.ones(3, height, width)
    top, left = (height - fit[0]) // 2, (width - fit[1]) // 2
    canvas[:, top:top + fit[0], left:left + fit[1]] = F.interpolate(image[None], size=fit, mode="bilinear",
                                                                    align_corners=False)[0]
    return canvas[:, None]


def by_hand(vae: StandInVae, video: torch.Tensor, mask: torch.Tensor, refs: list, cut: bool) -> torch.Tensor:
    """The context from the facts: [E(v·(1−m)), E(v·m), mask latents], each reference in front."""
    m = (mask > 0.5).float() if cut else mask
    inactive, reactive = vae.encode((video * (1 - m))[None]), vae.encode((video * m)[None])
    frames = [torch.cat([inactive, reactive, hand_mask_latents(mask)], dim=1)]
    for ref in reversed(refs):
        latent = vae.encode(ref[None])
        frames.insert(0, torch.cat([latent, torch.zeros_like(latent), torch.zeros(1, 64, 1, *latent.shape[3:])], 1))
    return torch.cat(frames, dim=2)


def mask_pixels(path) -> torch.Tensor:
    from PIL import Image

    grey = torch.from_numpy(np.asarray(Image.open(path), np.float32) / 255.0)
    return grey.expand(FRAMES, *grey.shape)  # (F, H, W), held for every frame


def video_pixels(path) -> torch.Tensor:
    return torch.cat([pixels(np.asarray(f)) for f in decoded_frames(path)], dim=1)  # (3, F, H, W)


def test_two_references_in_the_given_order(media, monkeypatch):
    from PIL import Image

    vae = use_stand_in_vae(monkeypatch)
    out, spec = context_of({"video": media.video, "mask": media.mask}, reference=[str(r) for r in media.refs])
    refs = [letterboxed(r, WIDTH, HEIGHT) for r in media.refs]
    expected = by_hand(vae, video_pixels(media.video), mask_pixels(media.mask), refs, cut=True)
    assert out["context"].shape[2] == 2 + LATENT_FRAMES
    torch.testing.assert_close(out["context"], expected, rtol=0, atol=1e-5)
    assert out["references"].tolist() == [2]
    assert [spec.files[f"vace.reference.{i}"] for i in range(2)] == list(media.refs)
    # diffusers puts each later reference in front: given them reversed, it builds our order
    grey = Image.open(media.mask).convert("RGB")
    reversed_refs = [Image.open(r) for r in reversed(media.refs)]
    diffusers = diffusers_context(vae, decoded_frames(media.video), [grey] * FRAMES, reversed_refs)
    torch.testing.assert_close(out["context"], diffusers, rtol=0, atol=1e-5)


def test_diffsynths_soft_mask_and_stretched_reference(media, monkeypatch):
    from PIL import Image

    vae = use_stand_in_vae(monkeypatch)
    out, _ = context_of({"video": media.video, "mask": media.mask, "reference": media.refs[0]},
                        binarize_mask=False, reference_resize="stretch")
    stretched = pixels(np.asarray(Image.open(media.refs[0]).convert("RGB").resize((WIDTH, HEIGHT), Image.BICUBIC)))
    expected = by_hand(vae, video_pixels(media.video), mask_pixels(media.mask), [stretched], cut=False)
    torch.testing.assert_close(out["context"], expected, rtol=0, atol=1e-5)
    authors, _ = context_of({"video": media.video, "mask": media.mask, "reference": media.refs[0]})
    assert not torch.allclose(out["context"][:, :, 1:, :2 * Z], authors["context"][:, :, 1:, :2 * Z], atol=1e-3)
    assert not torch.allclose(out["context"][:, :, :1], authors["context"][:, :, :1], atol=1e-3)


def test_a_mask_video_is_read_frame_by_frame_and_resampled_nearest_exact(media, tmp_path, monkeypatch):
    """Each pixel frame its own mask (its red channel): latent frame t takes pixel frame
    floor((t + 0.5)·F/T) = 1, 4, 7 of 9, not 0, 3, 6 (plain nearest)."""
    from wanflow.output import save_mp4

    vae = use_stand_in_vae(monkeypatch)
    rng = np.random.default_rng(8)
    save_mp4(rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8), tmp_path / "mask.mp4", 8, {},
             quality=0)
    out, _ = context_of({"video": media.video, "mask": tmp_path / "mask.mp4"})
    mask = (video_pixels(tmp_path / "mask.mp4")[0] + 1) / 2  # (F, H, W): the red channel in [0, 1]
    expected = by_hand(vae, video_pixels(media.video), mask, [], cut=True)
    torch.testing.assert_close(out["context"], expected, rtol=0, atol=1e-5)


def test_the_hand_off_sets_the_context_the_scale_and_the_dropped_frames(media, monkeypatch):
    use_stand_in_vae(monkeypatch)
    out, spec = context_of({"video": media.video, "reference": media.refs[1]}, scale=0.6)
    assert spec.step.scale == 0.6
    call = model_call(["vace"], {"vace": out})
    assert call.extras.vace_context is out["context"]
    assert call.extras.vace_scale == pytest.approx(0.6)
    assert call.drop_frames == 1
    assert call.channels == () and call.start is None
    plain, _ = context_of({"video": media.video})
    assert model_call(["vace"], {"vace": plain}).drop_frames == 0


def test_a_mask_without_its_video_is_refused(media):
    with pytest.raises(ModelInputError, match=r"\[inputs.vace\].mask is set without \[inputs.vace\].video"):
        nodes(job(family(*VACE), {}, **{"inputs.vace.mask": str(media.mask)}), VACE)


def test_without_an_inputs_vace_table_the_step_takes_the_recipes_defaults():
    import attrs

    from wanflow.recipe.schema import Vace
    from wanflow.steps.cond_vace import EncodeVaceContext

    step = attrs.fields_dict(EncodeVaceContext)
    assert {n: step[n].default for n in ("binarize_mask", "reference_resize", "scale")} == {
        "binarize_mask": Vace().binarize_mask, "reference_resize": Vace().reference_resize, "scale": Vace().scale}
    ((_, spec),) = nodes(job(family(*VACE), {}), VACE)
    assert (spec.step.binarize_mask, spec.step.reference_resize, spec.step.scale) == (True, "letterbox", 1.0)
