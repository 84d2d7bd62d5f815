"""The train step's plan with the frozen base's blocks streamed: what moves off the device, what
the host holds instead, how many blocks each policy streams, and what a refusal offers."""

from __future__ import annotations

import attrs
import pytest
from safetensors.torch import save_file

from wanflow.memory.planner import Budgets, MemoryPlanError
from wanflow.memory.sizes import component_size, read_headers
from wanflow.memory.train_stream_estimate import IN_FLIGHT
from wanflow.steps.memory_plan import TrainJob, dit_keeps_fp32
from wanflow.steps.train_stream_plan import TrainStepPeak, planned_train_step

from ..models._dit_fixtures import random_state, tiny_config

CFG = tiny_config("t2v", num_layers=6, text_dim=64)
HOST = 1 << 40


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> TrainJob:
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    save_file({k: v.bfloat16() for k, v in random_state(CFG).items()}, str(path))
    return TrainJob(config=CFG, dit_files={"dit": [path]}, grid=(2, 8, 8), bucket="64x64x5", itemsize=2,
                    device_run=True, accumulation=1, targets=("q", "k", "v", "o"), rank=4, method="lora", batch=1,
                    checkpointing=True, offload=False, streamable=True)


def _blocks(job: TrainJob) -> tuple[int, ...]:
    size = component_size("dit", read_headers(job.dit_files["dit"]), 2, keeps_fp32=dit_keeps_fp32, blocks=True)
    return size.block_bytes


@pytest.mark.parametrize("streamed", [1, 3, 6])
def test_streamed_blocks_leave_the_device_for_the_host_but_two_in_flight(job, streamed):
    resident, found = job.peak(), job.peak(streamed=streamed)
    blocks = _blocks(job)
    away, flight = sum(blocks[-streamed:]), min(IN_FLIGHT * max(blocks[-streamed:]), sum(blocks[-streamed:]))
    assert found.device_bytes == resident.device_bytes - away + flight
    assert found.host_bytes == resident.host_bytes + away  # the host tier holds them for the whole run
    assert (found.state, found.activations) == (resident.state, resident.activations)  # factors stay resident
    disk = job.peak(streamed=streamed, stream_tier="disk")
    assert disk.device_bytes == found.device_bytes and disk.host_bytes == resident.host_bytes + flight  # staging


def test_a_cpu_run_saves_memory_only_reading_blocks_from_disk(job):
    cpu = attrs.evolve(job, device_run=False)
    resident = cpu.peak()
    assert cpu.peak(streamed=6).host_bytes == resident.host_bytes  # the host tier is the weights themselves
    saved = sum(_blocks(job)) - IN_FLIGHT * max(_blocks(job))
    assert cpu.peak(streamed=6, stream_tier="disk").host_bytes == resident.host_bytes - saved
    for policy, tier in (("stream", "host"), ("disk", "disk")):
        found = planned_train_step(None, cpu, Budgets(None, HOST), policy)
        assert found.tiers == (("dit", (tier,) * 6),)
    assert not getattr(planned_train_step(None, cpu, Budgets(None, HOST), "auto"), "tiers", ())


@pytest.mark.parametrize("policy", ["auto", "stream", "disk"])
def test_the_policy_streams_the_fewest_blocks_that_fit(job, policy):
    tier = "disk" if policy == "disk" else "host"
    # a budget that holds the step with three blocks streamed, not with two
    budget = (job.peak(streamed=3, stream_tier=tier).device_bytes + job.peak(streamed=2, stream_tier=tier).device_bytes) // 2
    found = planned_train_step(None, job, Budgets(budget, HOST), policy)
    assert isinstance(found, TrainStepPeak) and found.device_bytes <= budget
    assert found.tiers == (("dit", ("device",) * 3 + (tier,) * 3),)
    roomy = planned_train_step(None, job, Budgets(job.peak().device_bytes, HOST), policy)
    assert not getattr(roomy, "tiers", ())  # the resident step fits: nothing streams


def test_a_resident_step_that_does_not_fit_is_offered_streaming(job):
    budget = (job.peak(streamed=3).device_bytes + job.peak(streamed=2).device_bytes) // 2
    with pytest.raises(MemoryPlanError) as refused:
        planned_train_step("r.toml", job, Budgets(budget, HOST), "none")
    assert '[memory].policy = "stream" (the frozen base\'s last 3 of 6 blocks streamed' in str(refused.value)
    assert any(f.startswith('[memory].policy = "stream"') for f in refused.value.fixes)
    full = attrs.evolve(job, streamable=False)  # what cannot stream is not offered it
    with pytest.raises(MemoryPlanError) as refused:
        planned_train_step("r.toml", full, Budgets(budget, HOST), "auto")
    assert not any("policy" in f for f in refused.value.fixes)


def test_a_step_that_does_not_fit_even_streamed_is_refused_with_the_streamed_numbers(job):
    smallest = job.peak(streamed=6).device_bytes
    with pytest.raises(MemoryPlanError) as refused:
        planned_train_step("r.toml", job, Budgets(smallest - 1, HOST), "stream")
    text = str(refused.value)
    assert text.startswith("r.toml: [train]: the train step needs ")
    assert f"{smallest / 2**30:.2f} GiB of device memory" in text


def test_a14b_streams_each_expert(job):
    both = attrs.evolve(job, dit_files={"dit_high_noise": job.dit_files["dit"], "dit_low_noise": job.dit_files["dit"]})
    budget = both.peak(streamed=4).device_bytes
    found = planned_train_step(None, both, Budgets(budget, HOST), "stream")
    assert dict(found.tiers) == {r: ("device",) * 2 + ("host",) * 4 for r in ("dit_high_noise", "dit_low_noise")}


def test_a_dit_that_cannot_stream_refuses_an_explicit_streaming_policy(job):
    """What the recipe's rules cannot see (a DiT variant told by its files) is refused at planning."""
    variant = attrs.evolve(job, streamable=False)
    for policy in ("stream", "disk"):
        with pytest.raises(MemoryPlanError, match=rf'^r.toml: \[memory\].policy = "{policy}": the DiT this run '
                                                  "trains does not stream its frozen blocks while training"):
            planned_train_step("r.toml", variant, Budgets(None, HOST), policy)
    assert not getattr(planned_train_step("r.toml", variant, Budgets(None, HOST), "auto"), "tiers", ())


def test_fp8_stored_blocks_stream_at_their_fp8_bytes(job):
    """``[memory].fp8``: the streamed blocks are fp8 (a byte an element; their row scales stay
    resident, counted outside the blocks), so streaming moves half a bf16 block's bytes."""
    fp8 = attrs.evolve(job, fp8=True)
    size = component_size("dit", read_headers(job.dit_files["dit"]), 2, keeps_fp32=dit_keeps_fp32, blocks=True)
    blocks = size.as_fp8().block_bytes
    assert sum(blocks) < sum(size.block_bytes) * 0.6
    resident, found = fp8.peak(), fp8.peak(streamed=4)
    away, flight = sum(blocks[-4:]), IN_FLIGHT * max(blocks[-4:])
    assert found.device_bytes == resident.device_bytes - away + flight
    assert found.host_bytes == resident.host_bytes + away
    budget = (fp8.peak(streamed=3).device_bytes + fp8.peak(streamed=2).device_bytes) // 2
    found = planned_train_step(None, fp8, Budgets(budget, HOST), "stream")
    assert found.tiers == (("dit", ("device",) * 3 + ("host",) * 3),)
