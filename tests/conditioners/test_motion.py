"""motion-bucket: speed control's modulation offset as a cached step reading the controller file.

The offset is the controller's output for ``[inputs].motion_bucket`` in fp32 (checked against
DiffSynth's own controller where DiffSynth is installed, and by hand through a controller whose
last layer is zero: the untrained release, which must add nothing).
"""

from __future__ import annotations

from types import SimpleNamespace

import attrs
import pytest
import torch
from safetensors.torch import save_file

from tests.conditioners._standins import family, job
from tests.e2e._layout_fun import motion_controller_state
from wanflow.conditioners import conditioner
from wanflow.engine.step import WeightFile
from wanflow.families.spec import ComponentSpec
from wanflow.steps.cond_kinds import model_call, nodes
from wanflow.steps.cond_motion import MotionOffset

DIM = 128
DECLARED = (conditioner("motion-bucket"),)
PARAMS = {"runtime.device": "cpu", "runtime.dtype": "fp32"}


def offset(path, bucket: int) -> torch.Tensor:
    ctx = SimpleNamespace(params={**PARAMS, "inputs.motion_bucket": bucket}, weight=lambda role: path)
    return MotionOffset().run(ctx)["modulation"]


@pytest.fixture()
def controller(tmp_path):
    state = motion_controller_state(DIM, seed=3)
    save_file(state, str(tmp_path / "model.safetensors"))
    return tmp_path / "model.safetensors", state


def test_the_offset_is_diffsynths_controller_output(controller):
    from tests.models._derivative_fixtures import import_diffsynth

    path, state = controller
    theirs = import_diffsynth().MotionController(dim=DIM)
    theirs.load_state_dict(state, strict=True)
    got = offset(path, 37)
    assert got.shape == (1, 6, DIM) and got.dtype == torch.float32
    with torch.no_grad():
        want = theirs(torch.tensor([37.0])).view(1, 6, DIM)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_an_untrained_controller_adds_nothing_and_the_bucket_matters(controller, tmp_path):
    path, state = controller
    assert not torch.allclose(offset(path, 0), offset(path, 100))
    state["linear.4.weight"].zero_()
    state["linear.4.bias"].zero_()
    save_file(state, str(tmp_path / "untrained.safetensors"))
    assert torch.equal(offset(tmp_path / "untrained.safetensors", 55), torch.zeros(1, 6, DIM))


def test_planning_and_hand_off(controller):
    path, _ = controller
    base = family(*DECLARED)
    fam = attrs.evolve(base, components={**base.components, "motion_controller": ComponentSpec(
        "motion_controller", "x", ("model.safetensors",), "wan2.1-motion-controller")})
    planning = job(fam, {}, **{"inputs.motion_bucket": 40})
    planning = attrs.evolve(planning, weights={**planning.weights,
                                               "motion_controller": {"motion_controller.0": WeightFile(path)}})
    (role, spec), = nodes(planning, DECLARED)
    assert role == "motion" and spec.step.dtype == "fp32" and "inputs.motion_bucket" in spec.params_read
    assert spec.weights["motion_controller"].path == path
    unset = job(fam, {}, **{"inputs.motion_bucket": None})
    assert nodes(unset, DECLARED) == []
    modulation = torch.randn(1, 6, DIM)
    call = model_call(["motion"], {"motion": {"modulation": modulation}})
    assert call.extras.modulation is modulation and call.extras.camera is None
