"""Compiled blocks streamed by the memory plan, on the DiTs that are more than Wan's.

``test_compile_switch`` proves it for the Wan DiT; these DiTs run more than their blocks, where a
compiled, streamed block could recompile or break: Animate's face blocks run after their DiT
blocks, S2V's audio injectors after theirs (both side modules resident, outside the placement),
and LongCat runs its blocks outside its forward too, to cache the conditioning frames' keys and
values (``cache_conditioning``: no forward hook of the model around them). Each DiT, loaded into
tiers through the pool (``memory.streamed.load_placed_*``) with its blocks compiled, runs twice:
the second run compiles nothing, and both equal the compiled resident DiT to the bit, with the
blocks stored at the compute dtype or in fp8.
"""

from __future__ import annotations

import pytest
import torch

from wanflow.memory import pool as model_pool


@pytest.fixture()
def compiles():
    if model_pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(model_pool.compile_problems("cpu")))
    if not model_pool.compiled_blocks_stream():
        pytest.skip("torch older than 2.5: compiled blocks are not streamed")
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # reset() keeps them: an earlier test's graph breaks would count here
    model_pool.clear()
    yield
    model_pool.clear()
    torch._dynamo.reset()


def _animate(folder):
    """Five blocks, a face block after block 0 (one per five); a call of the DiT on seeded inputs."""
    from tests.models._animate_fixtures import inputs, seeded_state, tiny_config, write_checkpoint
    from wanflow.models.animate import AnimateExtras

    cfg = tiny_config(num_layers=5)
    path = write_checkpoint(folder, seeded_state(cfg, seed=1))
    inp = inputs(cfg, seed=2)

    def call(model):
        extras = AnimateExtras(pose=inp["pose"], face=inp["face"])
        return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], extras=extras)

    return [path], ("disk", "host", "device", "disk", "host"), call


def _s2v(folder):
    """Three blocks, audio injectors after blocks 0 and 2; a call with audio, reference, pose and motion."""
    from tests.models.test_s2v_loading import released_layout
    from tests.models.test_s2v_model import inputs, run, seeded_state

    dit = released_layout(folder, seeded_state())
    data = inputs()
    return sorted(dit.iterdir()), ("disk", "device", "host"), lambda model: run(model, data)


def _longcat(folder):
    """Two blocks; a continuation through the KV cache: the conditioning frames' pass (the blocks
    called by ``cache_conditioning``), then the forward over the frames to denoise."""
    from tests.models.test_longcat_loading import released_layout
    from tests.models.test_longcat_model import tiny, video

    dit = released_layout(folder, tiny(seed=11).state_dict())
    x, context = video(frames=3)

    def call(model):
        cache = model.cache_conditioning(x[:, :, :1])
        return model(x[:, :, 1:], torch.tensor([420.0]), context, torch.tensor([5]), cache=cache)

    return sorted(dit.iterdir()), ("disk", "host"), call


@pytest.mark.parametrize("storage", ["compute", "fp8"])
@pytest.mark.parametrize("variant", [_animate, _s2v, _longcat], ids=["animate", "s2v", "longcat"])
def test_compiled_streamed_blocks_equal_the_compiled_resident_ones_without_recompiling(tmp_path, compiles, variant,
                                                                                     storage):
    from torch._dynamo.utils import counters

    from wanflow.memory.dit_variants import variant_of

    files, tiers, call = variant(tmp_path / "dit")
    assert variant_of(files) is not None  # loaded through its own row of the variant table
    resident = model_pool.dit(files, torch.float32, "cpu", "sdpa", storage=storage, compile_mode="blocks")
    with torch.no_grad():
        expected = call(resident)
    streamed = model_pool.dit(files, torch.float32, "cpu", "sdpa", storage=storage, tiers=tiers,
                              compile_mode="blocks")
    assert [b.tier for b in streamed.placement.blocks] == list(tiers)
    with torch.no_grad():
        first = call(streamed)
        graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
        recompiles = sum(counters["recompiles"].values())
        second = call(streamed)
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs  # nothing compiled again
    assert sum(counters["recompiles"].values()) == recompiles and counters["frames"]["total"] == frames
    assert not counters["graph_break"]  # the placement's hooks stay outside the graph
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert all(b.tier == "device" or not b.present for b in streamed.placement.blocks)  # streamed blocks left


def test_longcat_s_conditioning_pass_streamed_from_disk_equals_the_resident_one(tmp_path):
    """Eager, every block from disk: the conditioning pass (a few tokens) reads the weights as the
    resident model's do, so the keys, values and the step equal the resident DiT's to the bit."""
    files, _, call = _longcat(tmp_path / "dit")
    resident = model_pool.dit(files, torch.float32, "cpu", "sdpa")
    streamed = model_pool.dit(files, torch.float32, "cpu", "sdpa", tiers=("disk", "disk"))
    with torch.no_grad():
        assert torch.equal(call(streamed), call(resident))
    model_pool.clear()
