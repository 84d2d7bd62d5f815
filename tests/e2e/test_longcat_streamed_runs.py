"""LongCat-Video's plan streams fp8-stored and compiled blocks, through the real pipeline.

The plan of a budget under which only streaming fits places the DiT's blocks on disk, and the run
denoises to the latents of the run that keeps the DiT whole, to the bit, under the same step key
(placement is in no key): with ``[memory].fp8`` (its blocks streamed as fp8, ``memory.fp8_placed``)
and with ``[runtime].compile = "blocks"`` (each block's forward compiled, the placement's hooks
eager). The tiny release's VAE and text encoder outweigh its DiT, and their estimates are the
released models' (whose activations dwarf a tiny DiT), so these tests size those two at a few
bytes: the DiT's step is then the one the budget binds, as it is for the released weights.
"""

from __future__ import annotations

import pytest

from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models, write_recipe

FAMILY = "longcat-video"
SAMPLER = {"solver": "euler", "steps": 2, "shift": 1.0, "cfg": 2.0, "cfg_zero_star": False}
#: Budgets found by scanning the plan in steps of 10 kB, for the 4-block DiT (``longcat_root``).
#: Under this budget (1.02 MB) the fp32 DiT fits neither whole (2.10 MB) nor streamed (1.37 MB),
#: the fp8 DiT not whole (1.14 MB), and the fp8 DiT's blocks streamed from disk do (0.90 MB).
ONLY_FP8_STREAMED_GB = 0.00095
#: Under this one (1.72 MB) the fp32 DiT fits streamed from disk, not whole.
ONLY_STREAMED_GB = 0.0016
#: A 64 x 64 refinement's denoise under this one (1.87 MB): the fp32 DiT fits neither whole (over
#: 2.7 MB) nor streamed (2.22 MB), the fp8 DiT not whole (1.99 MB), its blocks streamed from disk
#: do (1.75 MB).
REFINED_ONLY_FP8_STREAMED_GB = 0.00174


@pytest.fixture(scope="module")
def longcat_root(tmp_path_factory):
    """The tiny release with a 4-block DiT: a CPU run streaming from disk holds two blocks (the one
    computing and the next, read ahead), so a 2-block DiT streamed would hold as much as whole."""
    import attrs

    from tests.e2e import _layout_longcat

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_layout_longcat, "CONFIG", attrs.evolve(_layout_longcat.CONFIG, depth=4))
        return _layout_longcat.write_longcat_models_root(tmp_path_factory.mktemp("longcat-deep-models"))


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool
    from wanflow.memory.sizes import ComponentSize
    from wanflow.steps import longcat_memory

    sizes = longcat_memory.component_sizes
    monkeypatch.setattr(longcat_memory, "component_sizes",
                        lambda files, itemsize, fp8: [ComponentSize(s.name, 1000) for s in sizes(files, itemsize, fp8)])
    monkeypatch.setattr(longcat_memory, "vae_decode_bytes", lambda *a, **k: 1000)
    monkeypatch.setattr(longcat_memory, "text_encode_bytes", lambda *a, **k: 1000)
    model_pool.clear()
    yield use_models(longcat_root, tmp_path, monkeypatch)
    model_pool.clear()


def _recipe(tmp_path, name, **tables):
    folder = tmp_path / name
    folder.mkdir()
    return write_recipe(folder, FAMILY, video={"width": 16, "height": 16, "frames": 9}, sampler=SAMPLER, **tables)


def _plan(path):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    resolved = load_recipe(path)
    return get_registry().pipeline(resolved.model).memory_plan(resolved)


def _spy(monkeypatch) -> list:
    """The DiTs loaded into block tiers (``streamed.load_placed_longcat``), as they are loaded: the
    pool releases a streamed DiT after its step."""
    from wanflow.memory import streamed

    placed, real = [], streamed.load_placed_longcat
    monkeypatch.setattr(streamed, "load_placed_longcat", lambda *a, **kw: placed.append(real(*a, **kw)) or placed[-1])
    return placed


def _fresh(tmp_path, monkeypatch, name: str) -> None:
    """The next run computes anew (placement is in no key, so a shared cache would hit)."""
    from wanflow.memory import pool as model_pool

    model_pool.clear()
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / name))


def test_the_plan_streams_fp8_blocks_where_only_that_fits(longcat_env, tmp_path):
    from wanflow.memory.planner import MemoryPlanError

    limit = {"limit_gb": ONLY_FP8_STREAMED_GB}
    found = _plan(_recipe(tmp_path, "fp8", memory={"fp8": True, **limit}))
    assert found.policy == "disk" and "disk" in found.placement("dit").blocks
    with pytest.raises(MemoryPlanError, match="fp8 storage of the DiT \\(its blocks streamed in fp8\\)"):
        _plan(_recipe(tmp_path, "plain", memory=limit))  # neither whole nor streamed at its compute dtype
    with pytest.raises(MemoryPlanError, match="policy 'disk'"):
        _plan(_recipe(tmp_path, "whole", memory={"fp8": True, "policy": "offload", **limit}))  # nor fp8 whole


def test_a_run_streaming_fp8_blocks_from_disk_makes_the_resident_fp8_latents(longcat_env, tmp_path, monkeypatch):
    from wanflow.models.fp8 import fp8_layers

    resident = run(_recipe(tmp_path, "resident", memory={"fp8": True}), longcat_env)
    _fresh(tmp_path, monkeypatch, "streamed-cache")
    placed = _spy(monkeypatch)
    for policy in ("disk", "auto"):
        streamed = run(_recipe(tmp_path, policy, memory={"fp8": True, "policy": policy,
                                                         "limit_gb": ONLY_FP8_STREAMED_GB}), longcat_env)
        tiers = streamed.plan.get("denoise").spec.step.tiers
        assert streamed.plan.get("denoise").spec.step.residency.policy == "disk" and "disk" in tiers
        if policy == "disk":  # the auto run's plan is the disk run's, and its steps hit the disk run's
            assert "denoise" in computed(streamed)
            assert [[b.tier for b in d.placement.blocks] for d in placed] == [list(tiers)]
            assert fp8_layers(placed[0])  # the blocks streamed are fp8
        assert streamed.results["denoise"].key == resident.results["denoise"].key  # placement is in no key
        assert streamed.results["denoise"].digest == resident.results["denoise"].digest  # the latents, to the bit


def test_a_refinement_streaming_fp8_blocks_makes_the_resident_fp8_refinement(longcat_env, tmp_path, monkeypatch):
    """The 720p refinement denoises with the same DiT (its refinement LoRA attached on the fly to
    fp8 blocks, whole or streamed) under the same plan: both denoises stream their fp8 blocks."""
    from tests.e2e.test_longcat_refine import DENOISE
    from tests.e2e.test_longcat_refine import _recipe as refined
    from wanflow.memory.planner import MemoryPlanError

    def recipe(name, **memory):
        (tmp_path / name).mkdir()
        return refined(tmp_path / name, memory=memory)

    resident = run(recipe("resident", fp8=True), longcat_env)
    limit = REFINED_ONLY_FP8_STREAMED_GB
    with pytest.raises(MemoryPlanError, match="fp8 storage of the DiT \\(its blocks streamed in fp8\\)"):
        _plan(recipe("plain", limit_gb=limit))
    _fresh(tmp_path, monkeypatch, "streamed-cache")
    placed = _spy(monkeypatch)
    streamed = run(recipe("streamed", fp8=True, limit_gb=limit), longcat_env)
    for step in ("denoise", DENOISE):
        assert step in computed(streamed) and "disk" in streamed.plan.get(step).spec.step.tiers
        assert streamed.results[step].key == resident.results[step].key
        assert streamed.results[step].digest == resident.results[step].digest  # the latents, to the bit
    assert placed and all("disk" in [b.tier for b in d.placement.blocks] for d in placed)


def test_a_run_streaming_compiled_blocks_makes_the_compiled_resident_latents(longcat_env, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool
    from wanflow.memory.planner import MemoryPlanError

    if model_pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(model_pool.compile_problems("cpu")))
    if not model_pool.compiled_blocks_stream():
        pytest.skip("torch older than 2.5: compiled blocks are not streamed")
    import torch._dynamo

    torch._dynamo.reset()
    compiled = {"compile": "blocks", "device": "cpu"}
    resident = run(_recipe(tmp_path, "resident", runtime=compiled), longcat_env)
    _fresh(tmp_path, monkeypatch, "streamed-cache")
    placed = _spy(monkeypatch)
    path = _recipe(tmp_path, "streamed", runtime=compiled, memory={"limit_gb": ONLY_STREAMED_GB})
    with pytest.raises(MemoryPlanError, match="policy 'disk'"):  # whole, the DiT does not fit
        _plan(_recipe(tmp_path, "whole", runtime=compiled, memory={"policy": "offload", "limit_gb": ONLY_STREAMED_GB}))
    streamed = run(path, longcat_env)
    tiers = streamed.plan.get("denoise").spec.step.tiers
    assert streamed.plan.get("denoise").spec.step.residency.policy == "disk" and "disk" in tiers
    assert [[b.tier for b in d.placement.blocks] for d in placed] == [list(tiers)]
    assert "denoise" in computed(streamed) and streamed.results["denoise"].key == resident.results["denoise"].key
    assert streamed.results["denoise"].digest == resident.results["denoise"].digest  # the latents, to the bit
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the blocks really compiled
    torch._dynamo.reset()


def test_compiled_blocks_are_planned_whole_where_torch_would_recompile_them(longcat_env, tmp_path, monkeypatch):
    """Before torch 2.5 a compiled block whose parameters are swapped recompiles at every step:
    the plan then sizes the DiT whole and refuses a budget only streaming fits, offering no
    streaming policy."""
    from wanflow.memory import pool as model_pool
    from wanflow.memory.planner import MemoryPlanError

    compiled = {"runtime": {"compile": "blocks", "device": "cpu"}, "memory": {"limit_gb": ONLY_STREAMED_GB}}
    assert "disk" in _plan(_recipe(tmp_path, "now", **compiled)).placement("dit").blocks
    monkeypatch.setattr(model_pool, "compiled_blocks_stream", lambda: False)
    with pytest.raises(MemoryPlanError, match="step 'denoise' needs") as refused:
        _plan(_recipe(tmp_path, "older", **compiled))
    assert not any("policy" in fix for fix in refused.value.fixes)
