"""The block-causal denoise step's parts: the VAE re-anchor, the step planned from a Wan denoise
step, and what it refuses before loading anything."""

from __future__ import annotations

import pytest
import torch

from tests.models.vae._fixtures import TINY, latents, random_vae
from tests.steps._ctx import Ctx
from wanflow.engine.step import StepSpec, WeightFile
from wanflow.errors import ModelInputError
from wanflow.steps.decode import Decode
from wanflow.steps.denoise import Denoise
from wanflow.steps.denoise_causal import CausalDenoise, VaeReanchor
from wanflow.steps.pipeline_krea import causal_node


def test_the_anchor_is_the_decoded_frame_before_the_recent_ones_encoded_again():
    vae = random_vae(TINY["wan2.1"], seed=4)
    history = latents(vae, 6, seed=5)  # six clean latent frames, the last two the recent context
    with torch.no_grad():
        pixels = vae.decode(history)  # (1, 3, 21, H, W): the whole history, as the authors stream it
        expected = vae.encode(pixels[:, :, 12:13])  # the oldest of the last 1 + 4·2 decoded frames
        anchor = VaeReanchor(vae, None, "cpu", torch.float32)(history, 2)
    assert anchor.shape == (1, 16, 1, 2, 3)
    torch.testing.assert_close(anchor, expected, rtol=1e-5, atol=1e-5)


def _denoise(**changes) -> Denoise:
    fields = {"experts": (("dit", 1),), "z_dim": 16, "latent_stride": 8, "conditions": ("source",),
              "dtypes": (("dit", "bf16"),), "loras": (("lora.0", "dit", 0.5),), "storage": "fp8",
              "tiers": (("dit", ("device", "host")),)}
    return Denoise(**{**fields, **changes})


def test_the_causal_node_keeps_the_job_and_adds_the_vae_to_the_weights():
    decode = StepSpec("decode", Decode("wan2.1", dtype="fp32", device="cpu"), inputs={"latents": "denoise"},
                      weights={"vae": WeightFile("vae.pth", "local")})
    denoise = StepSpec("denoise", _denoise(), inputs={"pos": "encode-text:positive"},
                       weights={"dit.0": WeightFile("dit.safetensors", "local")}, uses=("x@1",))
    node = causal_node(denoise, decode)
    step = node.step
    assert (node.name, dict(node.inputs), node.uses) == ("denoise", {"pos": "encode-text:positive"}, ("x@1",))
    assert dict(node.weights) == {"dit.0": WeightFile("dit.safetensors", "local"), "vae": WeightFile("vae.pth", "local")}
    assert (step.kind, step.dit_files, step.z_dim, step.latent_stride, step.conditions) == \
        ("denoise-causal", 1, 16, 8, ("source",))
    assert (step.dit_dtype, step.loras, step.storage, step.tiers) == ("bf16", (("lora.0", "dit", 0.5),), "fp8",
                                                                     ("device", "host"))
    assert (step.vae_version, step.vae_dtype, step.vae_device) == ("wan2.1", "fp32", "cpu")
    assert {"sampler.*", "vae.tiled", "vae.tile_size", "vae.tile_stride"} <= set(step.reads)


def test_two_experts_are_refused():
    with pytest.raises(ModelInputError, match="runs one DiT"):
        CausalDenoise.replacing(_denoise(experts=(("dit_high_noise", 1), ("dit_low_noise", 1))), Decode("wan2.1"))


def test_blocks_streamed_by_the_memory_plan_are_refused_before_loading():
    step = CausalDenoise.replacing(_denoise(), Decode("wan2.1"))
    ctx = Ctx({"runtime.device": "cpu", "runtime.dtype": "fp32", "runtime.attention": "sdpa"})
    with pytest.raises(ModelInputError, match="every DiT block on the device"):
        step._dit(ctx)  # no weight file named: it would fail differently if it tried to load
