"""Placement never changes the numbers, drops what it offloads, and peaks where the planner says.

Peaks are live tensor bytes (`_ledger.LiveBytes`): at tiny sizes the process's RSS is mostly
the interpreter and torch, so what the placement and the forward hold is counted directly.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanflow.memory import estimates, placement, planner, sizes
from wanflow.memory.placement import apply_placement
from wanflow.memory.streamed import load_placed_dit, open_dit_views
from wanflow.models.dit import keeps_fp32
from wanflow.models.dit_loader import load_dit

from ..models._dit_fixtures import inputs, random_state, tiny_config
from ..models._memory_probes import mapped_rss_kib
from ._ledger import LiveBytes, track_copies

CFG = tiny_config("t2v", num_layers=4, text_dim=64)
CYCLES = [("device",) * 4, ("host",) * 4, ("disk",) * 4, ("device", "host", "disk", "host"),
          ("disk", "device", "host", "disk")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    save_file({k: v.bfloat16() for k, v in random_state(CFG).items()}, str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_tier_cycle_gives_the_resident_output_bit_for_bit(checkpoint, dtype):
    inp = inputs(CFG)
    with torch.no_grad():
        want = load_dit(checkpoint, CFG, dtype=dtype)(**inp)
    model = load_dit(checkpoint, CFG, dtype=dtype)
    views = open_dit_views([checkpoint])
    for tiers in CYCLES:  # each placement applied to the model the last one restored
        handle = apply_placement(model, tiers, "cpu", checkpoint=views)
        with torch.no_grad():
            outs = [model(**inp), model(**inp)]  # every offloaded block in and out twice
            prepared = model.prepare_context(inp["context"])  # blocks faulted in one by one
            outs.append(model(inp["x"], inp["t"], prepared))
        assert all(torch.equal(out, want) for out in outs), tiers
        handle.remove()
    assert not any(p.is_meta for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(**inp), want)


def test_disk_blocks_hold_no_weight_memory_after_a_forward(tmp_path):
    cfg = tiny_config("t2v", num_layers=4, dim=256, ffn_dim=1024, num_heads=2, text_dim=64)
    path = tmp_path / "dit.safetensors"
    save_file({k: v.bfloat16() for k, v in random_state(cfg).items()}, str(path))
    inp = inputs(cfg)
    model, _ = load_placed_dit([path], cfg, ("device", "disk", "disk", "disk"), torch.bfloat16)
    streamed_kib = sum(p.numel() * 2 for b in model.blocks[1:] for p in b.parameters()) // 1024
    before = mapped_rss_kib(path)  # pages at the edges of the tensors loaded may stay
    with torch.no_grad():
        model(**inp)
    for i, block in enumerate(model.blocks):
        assert all(p.is_meta for p in block.parameters()) == (i > 0)
    # the streamed blocks' pages are dropped; the kernel's fault-around may map up to 64 KiB
    # of cached neighbours at each end of a block, which belong to no streamed tensor
    assert mapped_rss_kib(path) - before <= 2 * 64 * 3 < streamed_kib // 10
    with torch.no_grad():
        prepared = model.prepare_context(inp["context"])
    present = [i for i, b in enumerate(model.blocks) if i and not any(p.is_meta for p in b.parameters())]
    assert present == [3]  # faulted in one at a time: only the last stays until the next forward
    with torch.no_grad():
        model(inp["x"], inp["t"], prepared)
    assert all(p.is_meta for b in model.blocks[1:] for p in b.parameters())


def test_a_leaf_called_outside_its_block_faults_the_block_in(checkpoint):
    model, _ = load_placed_dit([checkpoint], CFG, ("disk",) * 4, torch.float32)
    with torch.no_grad():
        out = model.blocks[2].cross_attn.k(torch.ones(1, 3, CFG.dim))
    assert not model.blocks[2].cross_attn.k.weight.is_meta and torch.isfinite(out).all()


def test_disk_tier_needs_the_checkpoint(checkpoint):
    model = load_dit(checkpoint, CFG)
    with pytest.raises(ValueError, match="checkpoint"):
        apply_placement(model, ("disk",) * 4)
    with pytest.raises(ValueError, match="expected 4 tiers"):
        apply_placement(model, ("device",) * 3)


@pytest.mark.parametrize("tiers", [("device",) * 4, ("device", "disk", "disk", "disk"), ("disk",) * 4])
def test_predicted_peak_is_within_20_percent_of_the_measured_one(checkpoint, tiers, monkeypatch):
    grid = (5, 16, 16)
    size = sizes.component_size("dit", sizes.read_header(checkpoint), 4, keeps_fp32=keeps_fp32,
                                blocks=True)
    activation = estimates.dit_forward_bytes(CFG, grid, 4)
    tight = size.non_block_bytes + sum(size.block_bytes[:tiers.count("device")]) + activation
    budget = tight + (planner.CPU_STREAM_BLOCKS * max(size.block_bytes) if "disk" in tiers else 0)
    found = planner.plan(planner.Budgets(None, budget), "disk", [size],
                         [planner.StepDemand("forward", ("dit",), activation)])
    assert found.placement("dit").blocks == tiers
    model, _ = load_placed_dit([checkpoint], CFG, tiers, torch.float32)
    copies = track_copies(monkeypatch, placement)  # the block read ahead is copied on the reader thread
    with torch.no_grad(), LiveBytes(model, copies) as ledger:
        model(**inputs(CFG, grid=grid))
    assert ledger.peak == pytest.approx(found.peaks[0].host_bytes, rel=0.2)


def test_a_cpu_disk_run_holds_two_streamed_blocks_as_the_planner_counts(checkpoint, monkeypatch):
    """The block computing and the next, read ahead, are both copies out of the map: measured, not
    assumed (a dispatch mode does not see the reader thread, so the copies are counted apart)."""
    model, _ = load_placed_dit([checkpoint], CFG, ("disk",) * 4, torch.float32)
    block = sum(p.numel() * 4 for p in load_dit(checkpoint, CFG).blocks[0].parameters())
    copies = track_copies(monkeypatch, placement)
    with torch.no_grad(), LiveBytes(model, copies) as ledger:
        model(**inputs(CFG, grid=(5, 16, 16)))
    assert ledger.peak_elsewhere == planner.CPU_STREAM_BLOCKS * block == 2 * block
    model, _ = load_placed_dit([checkpoint], CFG, ("host",) * 4, torch.float32)
    with torch.no_grad(), LiveBytes(model, copies) as ledger:  # host-tier CPU blocks are used in place
        model(**inputs(CFG, grid=(5, 16, 16)))
    assert ledger.peak_elsewhere == 0
    size = sizes.component_size("dit", sizes.read_header(checkpoint), 4, keeps_fp32=keeps_fp32, blocks=True)
    assert planner._dit_footprint(size, 0, cpu=True) - size.non_block_bytes == 2 * max(size.block_bytes)
