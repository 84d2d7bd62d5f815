"""The denoise step of a tiny T2V and a tiny I2V family against a loop built from diffusers.

The loop uses diffusers' ``WanTransformer3DModel`` (our official-layout weights converted through
the key table) and its ``UniPCMultistepScheduler`` on the official grid; for I2V the conditioning
``y`` is built as diffusers' pipeline builds it (frame mask, ``AutoencoderKLWan`` latent of the image
followed by zeros). The text features and CLIP tokens are the pipeline's own upstream outputs, the
noise the same seeded draw. Relative tolerance 1e-4 (fp32 on CPU).
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.e2e.conftest import write_recipe
from tests.models._dit_fixtures import diffusers_model
from wanflow.engine.cache import Cache
from wanflow.engine.execute import Executor
from wanflow.engine.runner import plan_job
from wanflow.models.dit_loader import config_beside
from wanflow.models.checkpoint_files import open_state_dict
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe

STEPS, SHIFT, CFG = 3, 5.0, 5.0
OUTPUT_NODES = {"decode", "save", "save-metadata", "save-frames"}


def executed(recipe):
    """The executor after running the real plan up to denoise (its nodes' outputs are loadable)."""
    resolved = load_recipe(recipe)
    with Cache() as cache:
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        plan = attrs.evolve(plan, steps=tuple(s for s in plan.steps if s.name not in OUTPUT_NODES))
        ex = Executor(plan, cache)
        ex.run()
        yield resolved, ex


def padded(context: torch.Tensor) -> torch.Tensor:
    """diffusers' pipeline pads the prompt features with zeros to 512 tokens."""
    return F.pad(context, (0, 0, 0, 512 - context.shape[1]))  # (1, 512, D)


def diffusers_y(resolved, ex) -> torch.Tensor:
    """I2V conditioning as diffusers' pipeline builds it: frame mask, then AutoencoderKLWan's latent."""
    from tests.models.vae._fixtures import diffusers_twin
    from wanflow.output import load_image, to_model_image
    from wanflow.memory import pool as model_pool

    v = resolved.values
    frames, h, w = v["video.frames"], v["video.height"], v["video.width"]
    vae_file = ex.plan.get("encode-conditioning:image").spec.weights["vae"].path
    twin = diffusers_twin(model_pool.vae(vae_file, "wan2.1", torch.float32, "cpu"))
    image = torch.from_numpy(to_model_image(load_image(v["inputs.image"], w, h)))[None]  # (1, 3, 1, H, W)
    video = torch.cat([image, image.new_zeros(1, 3, frames - 1, h, w)], dim=2)
    with torch.no_grad():
        latent = twin.encode(video).latent_dist.mode()
    mean = torch.tensor(twin.config.latents_mean).view(1, -1, 1, 1, 1)
    latent = (latent - mean) / torch.tensor(twin.config.latents_std).view(1, -1, 1, 1, 1)
    mask = torch.ones(1, 1, frames, h // 8, w // 8)
    mask[:, :, 1:] = 0
    mask = torch.cat([mask[:, :, :1].repeat_interleave(4, dim=2), mask[:, :, 1:]], dim=2)
    mask = mask.view(1, -1, 4, h // 8, w // 8).transpose(1, 2)  # (1, 4, T, h, w)
    return torch.cat([mask, latent], dim=1)


def reference(resolved, ex) -> torch.Tensor:
    """CFG + UniPC over diffusers' transformer, from the same noise and conditioning."""
    from diffusers import UniPCMultistepScheduler

    files = [w.path for w in ex.plan.get("denoise").spec.weights.values() if w.path.suffix == ".safetensors"]
    state = {k: v.float() for f in files for k, v in open_state_dict(f).items()}
    cfg = config_beside(files[0], state)
    model = diffusers_model(cfg, state)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT)
    scheduler.set_timesteps(sigmas=np.linspace(0.999, 0, STEPS + 1)[:-1])
    context = {n: padded(ex.load(f"encode-text:{n}")["context"]) for n in ("positive", "negative")}
    y = diffusers_y(resolved, ex) if cfg.in_dim != cfg.out_dim else None
    clip = ex.load("encode-image")["clip"] if cfg.clip else None
    x = torch.randn((1, 16, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        inp = x if y is None else torch.cat([x, y], dim=1)
        with torch.no_grad():
            cond, uncond = (model(inp, t.expand(1), context[n], encoder_hidden_states_image=clip,
                                  return_dict=False)[0] for n in ("positive", "negative"))
        x = scheduler.step(uncond + CFG * (cond - uncond), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize(("family", "image"), [("wan2.1-t2v-14b", False), ("wan2.1-i2v-14b-480p", True)])
def test_denoise_matches_diffusers_loop(family, image, env, images, tmp_path):
    recipe = write_recipe(tmp_path, family, {"image": images["first"]} if image else None,
                          sampler={"solver": "unipc", "steps": STEPS, "shift": SHIFT, "cfg": CFG})
    for resolved, ex in executed(recipe):
        ours = ex.load("denoise")["latents"]
        expected = reference(resolved, ex)
        assert ours.shape == expected.shape == (1, 16, 2, 4, 4)
        error = float((ours - expected).norm() / expected.norm())
        print(f"{family}: relative error {error:.2e}")
        assert error < 1e-4, error
