"""The planner on synthetic sizes: every policy, the boundaries, the A14B experts, the refusals."""

from __future__ import annotations

import pytest

from wanflow.errors import WanflowError
from wanflow.memory.planner import (
    DEVICE_SWAP_BLOCKS,
    GIB,
    Budgets,
    MemoryPlanError,
    StepDemand,
    plan,
)
from wanflow.memory.sizes import ComponentSize

MIB = 1024**2
#: A 14B-like DiT: 40 blocks of 700 MiB and 460 MiB outside them; fp8 halves the blocks.
DIT = ComponentSize("dit", 460 * MIB + 40 * 700 * MIB, (700 * MIB,) * 40, 300 * MIB,
                    460 * MIB + 40 * 352 * MIB, (352 * MIB,) * 40)
TEXT = ComponentSize("text_encoder", 10 * GIB, (), 500 * MIB)
VAE = ComponentSize("vae", 250 * MIB, (), 50 * MIB)
ACT = {"encode_text": 200 * MIB, "denoise": 4 * GIB, "decode": 3 * GIB}
STEPS = [StepDemand("encode_text", ("text_encoder",), ACT["encode_text"]),
         StepDemand("denoise", ("dit",), ACT["denoise"]),
         StepDemand("decode", ("vae",), ACT["decode"])]
ALL = [DIT, TEXT, VAE]
TOTAL = DIT.weight_bytes + TEXT.weight_bytes + VAE.weight_bytes


def peaks(found):
    return {p.step: (p.device_bytes, p.host_bytes) for p in found.peaks}


def test_none_keeps_everything_resident_and_sums_it():
    found = plan(Budgets(80 * GIB, 100 * GIB), "none", ALL, STEPS)
    assert {p.name: p.home for p in found.placements} == dict.fromkeys(["dit", "text_encoder", "vae"], "device")
    assert peaks(found)["denoise"] == (TOTAL + ACT["denoise"], 0)


def test_auto_takes_none_exactly_at_the_boundary_and_offload_one_byte_below():
    need = TOTAL + ACT["denoise"]
    assert plan(Budgets(need, 100 * GIB), "auto", ALL, STEPS).policy == "none"
    below = plan(Budgets(need - 1, 100 * GIB), "auto", ALL, STEPS)
    assert below.policy == "offload"
    # one component at a time on the device; every component waits in host memory
    assert peaks(below)["denoise"] == (DIT.weight_bytes + ACT["denoise"], TOTAL)
    assert peaks(below)["decode"] == (VAE.weight_bytes + ACT["decode"], TOTAL)


def test_stream_keeps_as_many_blocks_as_fit_beside_the_swap_buffers():
    budget = 24 * GIB
    found = plan(Budgets(budget, 64 * GIB), "auto", ALL, STEPS)
    assert found.policy == "stream"
    dit = found.placement("dit")
    room = budget - ACT["denoise"] - DIT.non_block_bytes - DEVICE_SWAP_BLOCKS * 700 * MIB
    assert dit.resident_blocks == room // (700 * MIB) == 26
    assert dit.blocks == ("device",) * 26 + ("host",) * 14
    device, host = peaks(found)["denoise"]
    assert device == DIT.non_block_bytes + 28 * 700 * MIB + ACT["denoise"] <= budget
    assert host == TOTAL


def test_disk_fills_the_host_budget_with_blocks_first_then_streams_the_rest():
    found = plan(Budgets(24 * GIB, 8 * GIB), "auto", ALL, STEPS)
    assert found.policy == "disk"
    dit = found.placement("dit")
    # 8 GiB less two pinned staging blocks holds 9 of the 14 swapped blocks
    assert dit.blocks == ("device",) * 26 + ("host",) * 9 + ("disk",) * 5
    assert found.placement("text_encoder").home == "disk"  # 10 GiB did not fit beside the blocks
    assert all(host <= 8 * GIB for _, host in peaks(found).values())
    more = plan(Budgets(24 * GIB, 8 * GIB + 700 * MIB), "disk", ALL, STEPS).placement("dit")
    assert more.blocks.count("host") == dit.blocks.count("host") + 1


def test_cpu_only_disk_streams_the_blocks_that_do_not_fit_the_ram_budget():
    found = plan(Budgets(None, 4 * GIB), "disk", [DIT], [StepDemand("denoise", ("dit",), 100 * MIB)])
    dit = found.placement("dit")
    # 4096 MiB - 100 of activations - 460 outside the blocks - two streamed blocks (the one computing
    # and the next, read ahead, both copied out of the map): 3 blocks
    assert dit.blocks == ("device",) * 3 + ("disk",) * 37
    assert found.peaks[0].device_bytes is None
    assert found.peaks[0].host_bytes == 460 * MIB + (3 + 2) * 700 * MIB + 100 * MIB
    assert "3 resident, 37 streamed from disk" in "\n".join(found.explain())


def test_cpu_only_offload_and_stream_hold_one_model_at_a_time():
    for policy in ("offload", "stream"):
        found = plan(Budgets(None, 40 * GIB), policy, ALL, STEPS)
        assert peaks(found)["denoise"] == (None, DIT.weight_bytes + ACT["denoise"])
        assert found.placement("dit").resident_blocks == 40


def test_a14b_inactive_expert_leaves_the_device_and_host_ram_when_the_budget_says_so():
    high, low = (ComponentSize(n, DIT.weight_bytes, DIT.block_bytes, DIT.largest_tensor_bytes)
                 for n in ("dit_high_noise", "dit_low_noise"))
    steps = [StepDemand("denoise", ("dit_high_noise", "dit_low_noise"), ACT["denoise"])]
    found = plan(Budgets(40 * GIB, 64 * GIB), "auto", [high, low], steps)
    assert found.policy == "offload"
    device, host = found.peaks[0].device_bytes, found.peaks[0].host_bytes
    assert device == DIT.weight_bytes + ACT["denoise"]  # one expert on the device, not two
    assert host == 2 * DIT.weight_bytes  # both wait in host memory
    tight = plan(Budgets(40 * GIB, 16 * GIB), "auto", [high, low], steps)
    assert tight.policy == "disk" and tight.peaks[0].host_bytes <= 16 * GIB
    assert {tight.placement(n).home for n in ("dit_high_noise", "dit_low_noise")} == {"disk"}


def test_refusal_gives_the_numbers_and_a_slower_policy_first():
    with pytest.raises(MemoryPlanError) as err:
        plan(Budgets(24 * GIB, 64 * GIB), "none", ALL, STEPS)
    assert isinstance(err.value, WanflowError)
    text = str(err.value)
    assert "step 'denoise' needs 42.04 GiB of device memory" in text and "budget is 24.00 GiB" in text
    assert "the cheapest change that fits: policy 'stream'" in text
    assert err.value.fixes[:2] == ["policy 'stream'", "policy 'disk'"]


def test_refusal_names_the_host_budget_that_would_fit():
    steps = [StepDemand("denoise", ("dit",), 100 * MIB)]
    with pytest.raises(MemoryPlanError) as err:
        plan(Budgets(None, 1 * GIB), "disk", [DIT], steps)
    fix = err.value.fixes[0]
    assert fix.startswith("a host budget of ")
    needed = float(fix.split()[-2]) * GIB
    assert plan(Budgets(None, int(needed) + MIB), "disk", [DIT], steps).policy == "disk"
    with pytest.raises(MemoryPlanError):
        plan(Budgets(None, int(needed) - 16 * MIB), "disk", [DIT], steps)


def test_refusal_offers_fp8_and_the_cpu_for_what_only_they_fix():
    steps = [StepDemand("denoise", ("dit",), 100 * MIB)]
    with pytest.raises(MemoryPlanError) as err:  # all blocks resident: fp8 halves them
        plan(Budgets(20 * GIB, 64 * GIB), "offload", [DIT], steps)
    assert "fp8 storage of the DiT" in err.value.fixes
    with pytest.raises(MemoryPlanError) as err:  # the 10 GiB text encoder on an 8 GiB device
        plan(Budgets(8 * GIB, 64 * GIB), "auto", ALL, STEPS)
    assert "'text_encoder' computing on the CPU" in err.value.fixes
    moved = plan(Budgets(8 * GIB, 64 * GIB), "auto", ALL, STEPS, host_compute=frozenset({"text_encoder"}))
    assert moved.placement("text_encoder").on_host
    assert peaks(moved)["encode_text"][0] == 0  # nothing of the text encoder on the device


def test_fp8_is_offered_where_it_fits_only_by_streaming_its_blocks():
    """fp8 blocks stream (memory.fp8_placed): a budget that neither the bf16 blocks streamed nor
    the fp8 DiT whole fits, but its fp8 blocks streamed do, is planned so under auto and offered
    as the fix under a bf16 run."""
    steps = [StepDemand("denoise", ("dit",), 100 * MIB)]
    budget = DIT.non_block_bytes + DEVICE_SWAP_BLOCKS * 352 * MIB + 100 * MIB + 16 * MIB
    fp8_streamed = plan(Budgets(budget, 64 * GIB), "auto", [DIT.as_fp8()], steps)
    assert fp8_streamed.policy == "stream"
    assert any(tier != "device" for tier in fp8_streamed.placement("dit").blocks)
    with pytest.raises(MemoryPlanError):  # fp8 whole does not fit
        plan(Budgets(budget, 64 * GIB), "offload", [DIT.as_fp8()], steps)
    with pytest.raises(MemoryPlanError) as err:  # nor do the bf16 blocks streamed
        plan(Budgets(budget, 64 * GIB), "stream", [DIT], steps)
    assert "fp8 storage of the DiT (its blocks streamed in fp8)" in err.value.fixes


def test_explain_prints_each_component_and_each_step_against_its_budget():
    lines = plan(Budgets(24 * GIB, 64 * GIB), "auto", ALL, STEPS).explain()
    assert lines[0] == "memory policy stream (auto); budgets: device 24.00 GiB, host 64.00 GiB"
    assert "  dit: kept in host memory, copied in for its step; blocks: 26 resident, 14 copied in block by block from host memory" in lines
    assert sum(line.startswith("  step ") for line in lines) == 3
