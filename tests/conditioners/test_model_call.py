"""The model call: what conditioners hand the DiT, read the same way whatever the family.

A part set twice is refused; per-token timesteps and DiT extras follow each sliding window; the
DiT is given ``extras=`` only when a conditioner contributed one; denoise joins the declared
channels in order and drops the leading frames a conditioner added; a new kind plugs in by being
named and implemented, with no change to denoise.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.e2e._layout import tiny, write_dit
from tests.steps._ctx import Ctx
from tests.steps.test_denoise import PARAMS, UNIPC, texts, weights
from wanflow.conditioners import kinds
from wanflow.models.dit import WanDiT
from wanflow.steps import cond_kinds
from wanflow.steps.cond_call import Implementation, ModelCall
from wanflow.steps.denoise import Denoise
from wanflow.steps.dit_passes import BoundDit


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_a_part_set_twice_is_refused():
    call = ModelCall().with_tokens(rand(1, 257, 1280)).with_extras(reference=rand(1, 16, 2, 2))
    with pytest.raises(ValueError, match="image tokens"):
        call.with_tokens(rand(1, 257, 1280))
    with pytest.raises(ValueError, match="reference"):
        call.with_extras(reference=rand(1, 16, 2, 2))
    with pytest.raises(ValueError, match="starting latent"):
        call.with_start(rand(1, 16, 3, 2, 2)).with_start(rand(1, 16, 3, 2, 2))
    assert call.with_extras(camera=rand(1, 24, 3, 16, 16)).extras.reference is call.extras.reference


def test_clean_frames_take_timestep_zero_only_inside_the_window_that_holds_them():
    call = ModelCall().with_clean_frames(1)
    x, t = torch.zeros(2, 48, 2, 4, 4), torch.tensor(600.0)  # 2 frames of 2x2 tokens, 2 rows
    first, later = call.timesteps(x, t, (1, 2, 2), slice(0, 2)), call.timesteps(x, t, (1, 2, 2), slice(1, 3))
    assert first.tolist() == [[0.0] * 4 + [600.0] * 4] * 2
    assert later.tolist() == [[600.0] * 8] * 2
    assert ModelCall().timesteps(x, t, (1, 2, 2), slice(0, 2)).tolist() == [600.0, 600.0]


class RecordingDit:
    """Stands in for a DiT that takes extras: records the keyword arguments of every call."""

    cfg = SimpleNamespace(patch_size=(1, 2, 2))

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def prepare_context(self, context, tokens):
        return context

    def __call__(self, x, t, context, **kwargs):
        self.calls.append(kwargs)
        return torch.zeros_like(x)


def test_the_dit_gets_extras_only_when_a_conditioner_contributed_some():
    dit, x, t = RecordingDit(), torch.zeros(1, 16, 3, 2, 2), torch.tensor(500.0)
    prompts = {"pos": {"context": rand(1, 4, 8)}}
    BoundDit(dit, prompts, ModelCall(), "cpu").model_fn("pos")(x, t)
    assert "extras" not in dit.calls[-1]  # a base DiT has no such parameter
    camera = rand(1, 24, 3, 16, 16)
    call = ModelCall().with_extras(camera=camera, reference=rand(1, 16, 2, 2, seed=1))
    BoundDit(dit, prompts, call, "cpu").model_fn("pos")(x[:, :, 1:], t, slice(1, 3))
    extras = dit.calls[-1]["extras"]
    assert torch.equal(extras.camera, camera[:, :, 1:3])  # cut to the window's frames
    assert torch.equal(extras.reference, call.extras.reference)  # the reference holds no frames


@pytest.fixture(scope="module")
def control_dit(tmp_path_factory):
    """A tiny DiT with Wan2.1 Fun Control's layout: 16 latent + 16 control + 16 start channels."""
    folder = tmp_path_factory.mktemp("fun-control")
    write_dit(folder, tiny.tiny_dit_config("i2v", 48, 16), seed=4, shards=1)
    return folder


def test_denoise_hands_the_declared_channels_to_the_dit_in_order(control_dit, monkeypatch):
    seen = []
    forward = WanDiT.forward
    monkeypatch.setattr(WanDiT, "forward", lambda self, x, t, ctx, *a, **k: seen.append(k["y"]) or
                        forward(self, x, t, ctx, *a, **k))
    control, start = rand(1, 16, 2, 2, 2, seed=1), rand(1, 16, 2, 2, 2, seed=2)
    step = Denoise(experts=(("dit", 2),), z_dim=16, latent_stride=8, conditions=("control", "start_image"),
                   solver=UNIPC)
    inputs = {**texts(), "control": {"latents": control}, "start_image": {"latents": start}}
    out = step.run(Ctx({**PARAMS, "sampler.cfg": 1.0}, inputs, weights("dit", control_dit)))["latents"]
    assert out.shape == (1, 16, 2, 2, 2) and len(seen) == PARAMS["sampler.steps"]
    assert all(torch.equal(y, torch.cat([control, start], dim=1)) for y in seen)


def test_a_new_kind_plugs_in_without_touching_denoise(control_dit, monkeypatch):
    """A kind that prepends one latent frame (as VACE's reference frames): the DiT samples T + 1
    frames, the result keeps T. Naming it and implementing it is all it takes."""
    monkeypatch.setitem(kinds.KINDS, "lead-frame", kinds.Kind(
        "lead-frame", "lead", "one extra leading latent frame", (), frozenset({"channels", "drop"})))
    monkeypatch.setitem(cond_kinds.IMPLEMENTATIONS, "lead-frame", Implementation(
        node=lambda job, declared: None,
        hand_off=lambda tensors, call: call.with_channels(tensors["y"]).with_dropped_frames(1)))
    frames = []
    forward = WanDiT.forward
    monkeypatch.setattr(WanDiT, "forward", lambda self, x, *a, **k: frames.append(x.shape[2]) or
                        forward(self, x, *a, **k))
    step = Denoise(experts=(("dit", 2),), z_dim=16, latent_stride=8, conditions=("lead",), solver=UNIPC)
    inputs = {**texts(), "lead": {"y": rand(1, 32, 3, 2, 2)}}
    out = step.run(Ctx({**PARAMS, "sampler.cfg": 1.0}, inputs, weights("dit", control_dit)))["latents"]
    assert set(frames) == {3} and out.shape == (1, 16, 2, 2, 2)


@pytest.mark.parametrize("extra", ["channels", "vace_context", "camera"])
def test_conditioning_longer_than_the_latent_is_refused_not_cut(control_dit, extra):
    """A window cuts framed conditioning to its frames, so one more frame than the latent has would
    pass unseen; denoise refuses it before the first step."""
    control, start = rand(1, 16, 2, 2, 2, seed=1), rand(1, 16, 2, 2, 2, seed=2)
    call = ModelCall().with_channels(torch.cat([control, start], dim=1))
    assert call.check_frames(2) is None
    longer = {"channels": lambda c: ModelCall().with_channels(rand(1, 32, 3, 2, 2)),
              "vace_context": lambda c: c.with_extras(vace_context=rand(1, 96, 3, 2, 2)),
              "camera": lambda c: c.with_extras(camera=rand(1, 24, 3, 16, 16))}[extra](call)
    with pytest.raises(RuntimeError, match=r"the latent has 2 frames but the conditioning holds \{'" +
                       (extra if extra != "channels" else r"channels\[0\]") + "': 3}"):
        longer.check_frames(2)
    step = Denoise(experts=(("dit", 2),), z_dim=16, latent_stride=8, conditions=("control", "start_image"),
                   solver=UNIPC)
    if extra == "channels":  # through the step: the control latent one frame too long
        inputs = {**texts(), "control": {"latents": rand(1, 16, 3, 2, 2)}, "start_image": {"latents": start}}
        with pytest.raises(RuntimeError, match="planned for another clip length"):
            step.run(Ctx({**PARAMS, "sampler.cfg": 1.0}, inputs, weights("dit", control_dit)))
