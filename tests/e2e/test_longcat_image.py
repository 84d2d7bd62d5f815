"""LongCat-Video's image-to-video end to end on the tiny release (the authors' generate_i2v).

The image, resized and centre-cropped to the clip, is VAE-encoded alone into one latent frame held
clean as the clip's first; the denoise step equals the DiT and the authors' sampler driven by hand
over the full pass (their grid without the enhance_hf tail, CFG-Zero* at 4); a new image re-runs
its encode and what follows, never the text encodes; a long video may start from an image.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_longcat import REPO, SHIFT
from tests.e2e._posterior import held
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_longcat_runs import _executed
from wanflow.errors import WanflowError

FAMILY = "longcat-video"
NODE = "encode-conditioning:longcat-image"
AFTER = {"denoise", "decode", "save", "save-metadata"}


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, image, frames: int = 9, **inputs):
    import tomlkit

    path = write_recipe(tmp_path, FAMILY, {"image": image}, video={"width": 16, "height": 16, "frames": frames},
                        sampler={"steps": 3})
    doc = tomlkit.parse(path.read_text())
    doc["inputs"].update({k: v if isinstance(v, int) else str(v) for k, v in inputs.items()})
    path.write_text(tomlkit.dumps(doc))
    return path


def test_the_image_is_the_clip_s_first_frame_as_the_authors_sample_it(longcat_env, longcat_root, images, tmp_path):
    from wanflow.memory import pool as model_pool
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity, longcat_schedule
    from wanflow.steps.media import image_tensor

    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    schedule = longcat_schedule(3, SHIFT, enhance_hf=False)  # generate_i2v has no tail
    for _, ex in _executed(_recipe(tmp_path, images["first"]), keep={"decode"}):
        vae = model_pool.vae(ex.plan.get("decode").spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        cond = ex.load(NODE)["latents"]
        expected = held(vae, image_tensor(images["first"], 16, 16)[None], True, 0, NODE)  # the authors' sample
        assert cond.shape == (1, 16, 1, 2, 2) and torch.allclose(cond, expected, atol=1e-5, rtol=0)
        pos, neg = ex.load("encode-text:positive")["context"], ex.load("encode-text:negative")["context"]
        x = initial_noise((1, 16, 3, 2, 2), 0, noise_device="cpu")[:, :, 1:]
        for i, t in enumerate(schedule.timesteps):
            with torch.no_grad():
                vc, vu = (flow_velocity(dit(torch.cat([cond, x], dim=2), t.reshape(1), c, cond_frames=1))[:, :, 1:]
                          for c in (pos, neg))
            s = (vc * vu).sum() / (vu.pow(2).sum() + 1e-8)
            x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (s * vu + 4.0 * (vc - s * vu))
        ours = ex.load("denoise")["latents"]
        assert torch.equal(ours[:, :, :1], cond)
        assert torch.allclose(ours[:, :, 1:], x, rtol=1e-5, atol=1e-5), (ours[:, :, 1:] - x).abs().max()


def test_a_new_image_reencodes_only_it_and_a_long_video_may_start_from_one(longcat_env, images, tmp_path):
    first = run(_recipe(tmp_path, images["first"]), longcat_env)
    assert computed(first) == {"encode-text:positive", "encode-text:negative", NODE} | AFTER
    assert video_shape(first.archive / "outputs" / "video.mp4") == (9, 16, 16)
    other = run(_recipe(tmp_path, images["last"]), longcat_env)
    assert computed(other) == {NODE} | AFTER
    long = run(_recipe(tmp_path, images["last"], longcat_segments=1, longcat_cond_frames=5), longcat_env)
    assert {"denoise:segment-1", "join-segments"} <= computed(long) and "denoise" not in computed(long)
    assert video_shape(long.archive / "outputs" / "video.mp4") == (9 + 4, 16, 16)


@pytest.mark.parametrize("inputs, frames, message", [
    ({"longcat_video": "past.mp4"}, 9, "continues a video or starts from an image, not both"),
    ({}, 1, "leaves no frame to generate after the image"),
])
def test_an_image_that_cannot_work_is_refused_before_anything_runs(longcat_env, images, tmp_path, inputs, frames,
                                                                     message):
    from tests.e2e.test_longcat_runs import _write_video
    from wanflow.recipe import load_recipe

    _write_video(tmp_path / "past.mp4", 11, 21)
    inputs = {k: tmp_path / v for k, v in inputs.items()}
    with pytest.raises(WanflowError, match=message):
        load_recipe(_recipe(tmp_path, images["first"], frames, **inputs))
