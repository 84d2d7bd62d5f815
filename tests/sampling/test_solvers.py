"""Each solver against diffusers' scheduler of the same name on the same σ, and bit-exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from safetensors.torch import load, save

from wanflow.errors import ModelInputError
from wanflow.sampling import SolverState, expert_model, expert_segments, make_schedule, sample


def run_diffusers(scheduler, model, x: torch.Tensor) -> torch.Tensor:
    """The usual diffusers loop: the model sees each scheduler timestep, the scheduler steps."""
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, return_dict=False)[0]
    return x


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def diffusers_unipc(steps: int, shift: float) -> UniPCMultistepScheduler:
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    scheduler.set_timesteps(sigmas=np.linspace(0.999, 0, steps + 1)[:-1])
    return scheduler


def diffusers_dpmpp(steps: int, shift: float) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ 2M midpoint in its flow configuration, put on the official DPM++ grid."""
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero",
    )
    scheduler.set_timesteps(steps)
    official = make_schedule("dpm++", steps, shift)  # its set_timesteps takes no sigmas: set them
    scheduler.sigmas, scheduler.timesteps = official.sigmas.clone(), official.timesteps.clone()
    scheduler.set_begin_index(0)
    return scheduler


def diffusers_euler(steps: int, shift: float) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1])
    return scheduler


def diffusers_flow(steps: int, shift: float) -> FlowMatchEulerDiscreteScheduler:
    """VideoX-Fun's "Flow": the scheduler as its configs build it, on its own grid."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


REFERENCES = {"unipc": diffusers_unipc, "dpm++": diffusers_dpmpp, "euler": diffusers_euler, "flow": diffusers_flow}


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler", "flow"])
@pytest.mark.parametrize("steps, shift", [(50, 5.0), (12, 3.0), (2, 12.0)])
def test_solver_matches_diffusers(solver, steps, shift, latent, toy):
    reference = REFERENCES[solver](steps, shift)
    expected = run_diffusers(reference, toy(), latent.clone())
    schedule = make_schedule(solver, steps, shift)
    model = toy()
    final = sample(solver, model, latent.clone(), schedule).x
    assert relative_error(final, expected) <= 1e-5
    # Official int timesteps are equal; Euler's fp32 ones may differ by an ulp (fp32 linspace).
    np.testing.assert_allclose(model.calls, reference.timesteps.double().numpy(), rtol=1e-6, atol=0)
    assert final.dtype == torch.float32


def test_solvers_differ_from_each_other(latent, toy):
    """Guards the parity test: distinct methods must not coincide on the toy model."""
    schedule = make_schedule("unipc", 12, 3.0)
    finals = {s: sample(s, toy(), latent, schedule).x for s in ("unipc", "dpm++", "euler")}
    assert relative_error(finals["unipc"], finals["euler"]) > 1e-3
    assert relative_error(finals["unipc"], finals["dpm++"]) > 1e-4
    # flow and euler step alike; only their grids differ, and that must show
    grids = {s: sample(s, toy(), latent, make_schedule(s, 12, 3.0)).x for s in ("euler", "flow")}
    assert relative_error(grids["flow"], grids["euler"]) > 1e-3


def roundtrip(state: SolverState) -> SolverState:
    """Through safetensors bytes, as the engine's checkpoint does."""
    return SolverState.from_tensors(load(save(state.to_tensors())))


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler", "flow"])
@pytest.mark.parametrize("k", [1, 2, 7])
def test_interrupted_and_resumed_run_is_bit_identical(solver, k, latent, toy):
    schedule = make_schedule(solver, 10, 5.0)
    whole = sample(solver, toy(), latent, schedule).x
    first = sample(solver, toy(), latent, schedule, stop=k)
    assert first.index == k
    resumed = sample(solver, toy(), None, schedule, state=roundtrip(first))
    assert torch.equal(resumed.x, whole)


def test_callback_sees_every_state_and_a_checkpoint_resumes(latent, toy):
    schedule = make_schedule("unipc", 8, 5.0)
    seen: list[SolverState] = []
    final = sample("unipc", toy(), latent, schedule, callback=seen.append)
    assert [s.index for s in seen] == list(range(1, 9))
    resumed = sample("unipc", toy(), None, schedule, state=roundtrip(seen[4]))
    assert torch.equal(resumed.x, final.x)


def test_expert_segments_run_one_at_a_time_equal_the_routed_run(latent, toy):
    schedule = make_schedule("unipc", 40, 12.0)
    high, low = toy(seed=1), toy(seed=2)
    routed = sample("unipc", expert_model(high, low, 0.875), latent, schedule).x
    assert len(high.calls) == 26 and len(low.calls) == 14
    state, models = None, {"high_noise_model": toy(seed=1), "low_noise_model": toy(seed=2)}
    for seg in expert_segments(schedule, 0.875):
        x = latent if state is None else None
        model = models[seg.expert.value]
        state = sample("unipc", model, x, schedule, start=seg.start, stop=seg.stop, state=state)
    assert torch.equal(state.x, routed)


def test_late_start_matches_diffusers_begin_index(latent, toy):
    """Video-to-video: start at step 5 of 12 with a fresh history, as diffusers' set_begin_index."""
    reference = diffusers_unipc(12, 5.0)
    reference.set_begin_index(5)
    x = latent.clone()
    for t in reference.timesteps[5:]:
        x = reference.step(toy()(x, t), t, x, return_dict=False)[0]
    ours = sample("unipc", toy(), latent.clone(), make_schedule("unipc", 12, 5.0), start=5).x
    assert relative_error(ours, x) <= 1e-5


def test_low_precision_model_output_is_upcast(latent, toy):
    def bf16_model(x, t):
        return toy()(x, t).to(torch.bfloat16)

    state = sample("dpm++", bf16_model, latent.to(torch.bfloat16), make_schedule("dpm++", 4, 5.0))
    assert state.x.dtype == torch.float32 and all(h.dtype == torch.float32 for h in state.history)


def test_misshapen_model_output_is_refused(latent, toy):
    with pytest.raises(ModelInputError, match="shape"):
        sample("euler", lambda x, t: x[:, :2], latent, make_schedule("euler", 4, 5.0))


def test_sample_needs_exactly_one_of_latent_and_state(latent, toy):
    schedule = make_schedule("euler", 4, 5.0)
    with pytest.raises(ModelInputError, match="exactly one"):
        sample("euler", toy(), None, schedule)
    state = sample("euler", toy(), latent, schedule, stop=2)
    with pytest.raises(ModelInputError, match="exactly one"):
        sample("euler", toy(), latent, schedule, state=state)
    with pytest.raises(ModelInputError, match="stop"):
        sample("euler", toy(), None, schedule, state=state, stop=1)
