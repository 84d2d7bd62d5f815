"""The plan the Wan pipeline builds for the quickstart family: nodes, and the params each reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanflow.engine.plan import plan
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe
from wanflow.steps.pipeline import PIPELINES

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"


#: Guidance on, so the plan holds the negative encode too (the tiny family samples at cfg 1).
GUIDED = ("sampler.cfg=3.0", "prompt.negative=blurry, static")


def planned(*sets: str) -> dict:
    """node -> PlannedStep of the quickstart with guidance and ``--set`` overrides (files hashed by
    path only)."""
    resolved = load_recipe(QUICKSTART, sets=GUIDED + sets)
    specs = get_registry().pipeline(resolved.model).steps(resolved)
    return {s.name: s for s in plan(resolved.values, specs, "t", lambda p: str(p)).steps}


def readers(nodes: dict, key: str) -> set[str]:
    return {name for name, s in nodes.items() if key in s.params}


def test_the_registry_serves_the_wan_pipeline_for_every_family():
    registry = get_registry()
    for family in ("wanflow-tiny", "wan2.2-ti2v-5b"):
        bound = registry.pipeline(family)
        assert type(bound) is type(PIPELINES["wan"]) and bound.catalog is registry


def test_quickstart_nodes_and_their_edges():
    nodes = planned()
    assert list(nodes) == ["encode-text:positive", "encode-text:negative", "denoise", "decode",
                           "save", "save-metadata"]
    assert dict(nodes["denoise"].spec.inputs) == {"pos": "encode-text:positive", "neg": "encode-text:negative"}
    assert nodes["save"].spec.archive_as == "video.mp4"
    assert {r.split(".")[0] for r in nodes["denoise"].spec.weights} == {"dit"}
    assert set(nodes["encode-text:positive"].spec.weights) == {"text_encoder", "tokenizer.0", "tokenizer.1"}


def test_each_node_reads_only_what_changes_its_output():
    nodes = planned()
    # the encodes carry their text in their configuration (so a prompt shared with a training
    # sample is one cache entry), not as a param they read
    assert readers(nodes, "prompt.text") == {"save", "save-metadata"}
    assert readers(nodes, "prompt.negative") == {"save", "save-metadata"}
    text = {name: s.config.get("text") for name, s in nodes.items() if name.startswith("encode-text")}
    assert text == {"encode-text:positive": nodes["save-metadata"].params["prompt.text"],
                    "encode-text:negative": nodes["save-metadata"].params["prompt.negative"]}
    assert readers(nodes, "sampler.seed") == {"denoise", "save", "save-metadata"}
    assert readers(nodes, "vae.tile_size") == {"decode", "save", "save-metadata"}
    assert readers(nodes, "runtime.dtype") == set(nodes) - {"save-frames"}
    assert readers(nodes, "video.fps") == {"save", "save-metadata"}
    assert readers(nodes, "memory.policy") == set()  # how a run executes never re-keys a step


def test_cfg_one_plans_no_negative_encode():
    nodes = planned("sampler.cfg=1.0")
    assert "encode-text:negative" not in nodes
    assert dict(nodes["denoise"].spec.inputs) == {"pos": "encode-text:positive"}


def test_the_output_format_picks_a_registered_saver():
    assert planned("output.format=gif")["save"].spec.archive_as == "video.gif"


def test_png_frames_add_a_frames_output():
    nodes = planned("output.png_frames=true")
    assert nodes["save-frames"].spec.archive_as == "frames.zip"
    assert dict(nodes["save-frames"].spec.inputs) == {"frames": "decode"}


def test_memory_budget_is_checked_before_any_model_loads():
    # the quickstart against a 1 MB host budget: the planner refuses at planning, with the numbers
    from wanflow.memory.planner import MemoryPlanError

    with pytest.raises(MemoryPlanError, match=r"host 0.00 GiB.*the cheapest change that fits: a host budget"):
        planned("memory.limit_gb=0.001")
    assert "denoise" in planned("memory.limit_gb=1")


def test_every_model_step_gets_the_pool_budget_and_it_stays_out_of_the_keys():
    from wanflow.memory.pool import Residency
    from wanflow.steps.memory_plan import GIB

    nodes = planned("memory.limit_gb=3", "memory.policy=offload")
    models = [n for n in nodes.values() if n.spec.step.kind in
              ("encode-text", "encode-image", "encode-conditioning", "denoise", "decode")]
    assert {n.spec.step.residency for n in models} == {Residency("offload", 3 * GIB)}
    other = planned("memory.limit_gb=5", "memory.policy=offload")
    assert all(nodes[n].config == other[n].config for n in nodes)
    assert all("residency" not in nodes[n].config for n in nodes)


def test_a_component_dtype_reaches_its_steps_and_only_their_keys():
    base, bf16 = planned(), planned("models.vae.dtype=bf16")
    assert bf16["decode"].config["dtype"] == "bf16" and base["decode"].config["dtype"] == "auto"
    changed = {n for n in base if base[n].config != bf16[n].config}
    assert changed == {"decode"}  # the quickstart has no image: the VAE only decodes
    text = planned("models.text_encoder.dtype=fp16")
    assert {n for n in base if base[n].config != text[n].config} == {"encode-text:positive",
                                                                      "encode-text:negative"}


def test_a_component_dtype_is_the_dtype_its_model_is_loaded_in(monkeypatch):
    import torch

    from tests.steps._ctx import Ctx
    from wanflow.memory import pool as model_pool
    from wanflow.steps.decode import Decode

    asked = []

    def vae(path, version, dtype, device, residency=None):
        asked.append(dtype)
        raise RuntimeError("stop after the load")

    monkeypatch.setattr(model_pool, "vae", vae)
    params = {"runtime.device": "cpu", "runtime.dtype": "fp32", "vae.tiled": False,
              "vae.tile_size": (30, 52), "vae.tile_stride": (15, 26)}
    for dtype, expected in (("bf16", torch.bfloat16), ("auto", torch.float32)):
        with pytest.raises(RuntimeError, match="stop after the load"):
            Decode("wan2.1", dtype).run(Ctx(params, {}, {"vae": Path("vae.pth")}))
        assert asked[-1] == expected


def test_fp8_storage_is_in_the_denoise_key_only():
    base, fp8 = planned(), planned("memory.fp8=true")
    assert fp8["denoise"].config["storage"] == "fp8" and base["denoise"].config["storage"] == "compute"
    assert {n for n in base if base[n].config != fp8[n].config} == {"denoise"}


def test_fp8_matmuls_are_in_the_denoise_key_only():
    stored, multiplied = planned("memory.fp8=true"), planned("memory.fp8=true", "runtime.fp8_matmul=true")
    assert multiplied["denoise"].config["storage"] == "fp8-matmul"
    assert {n for n in stored if stored[n].config != multiplied[n].config} == {"denoise"}
    assert stored["encode-text:positive"].params == multiplied["encode-text:positive"].params


def test_fp8_blocks_are_planned_streamed_where_neither_bf16_streaming_nor_fp8_whole_fits(monkeypatch):
    """Blocks kept in fp8 stream (memory.fp8_placed): under a GPU budget that neither the bf16
    blocks streamed nor the fp8 DiT whole fit, auto streams the fp8 blocks, and the bf16 run's
    refusal offers fp8 storage as the change that fits."""
    from wanflow.memory.planner import MemoryPlanError, streams_blocks
    from wanflow.steps import pipeline

    monkeypatch.setattr(pipeline, "effective_device", lambda device: "cuda")  # budgets as on a GPU

    def memory_plan(*extra: str):
        sets = ("video.width=16", "video.height=16", "video.frames=1", "memory.limit_gb=0.01", *extra)
        resolved = load_recipe(QUICKSTART, sets=sets)
        return get_registry().pipeline(resolved.model).memory_plan(resolved)

    found = memory_plan("memory.fp8=true")
    assert found.policy == "stream" and streams_blocks(found)
    with pytest.raises(MemoryPlanError):
        memory_plan("memory.fp8=true", 'memory.policy="offload"')
    with pytest.raises(MemoryPlanError) as err:
        memory_plan()
    assert "fp8 storage of the DiT (its blocks streamed in fp8)" in err.value.fixes


@pytest.mark.parametrize("setting", ["runtime.compile=blocks"])
def test_the_plan_moves_blocks_that_cannot_stream_whole_or_refuses_with_the_numbers(monkeypatch, setting):
    """Compiled blocks cannot be streamed under a torch older than 2.5, so under a GPU budget where the plain
    DiT is streamed block by block the plan moves such a DiT whole (offload) where that fits, and
    else refuses while planning (exit 2, nothing loaded) with the budget that fits, never a plan the
    DiT's load would refuse."""
    from wanflow.memory import pool
    from wanflow.memory.planner import MemoryPlanError, streams_blocks
    from wanflow.steps import pipeline

    monkeypatch.setattr(pipeline, "effective_device", lambda device: "cuda")  # budgets as on a GPU

    def memory_plan(budget: float, *extra: str):
        sets = ("video.width=16", "video.height=16", "video.frames=1", f"memory.limit_gb={budget}", *extra)
        resolved = load_recipe(QUICKSTART, sets=sets)
        return get_registry().pipeline(resolved.model).memory_plan(resolved)

    assert streams_blocks(memory_plan(0.012))  # the plain DiT: streamed
    assert streams_blocks(memory_plan(0.012, setting)) == pool.compiled_blocks_stream()  # torch 2.5+: streamed too
    monkeypatch.setattr(pool, "compiled_blocks_stream", lambda: False)
    try:
        found = memory_plan(0.012, setting)
    except MemoryPlanError as err:
        assert "the cheapest change that fits: a device budget of" in str(err)
    else:
        assert not streams_blocks(found) and found.placement("dit").blocks == ()
    assert not streams_blocks(memory_plan(0.015, setting))


def test_cfg_merge_plans_the_denoise_step_with_both_passes_activations():
    """cfg_merge runs the prompt and the negative prompt as one batch-2 forward, so the memory plan
    sizes the denoise step's activations at batch 2; without guidance there is nothing to merge."""
    def denoise_peak(*extra: str) -> int:
        resolved = load_recipe(QUICKSTART, sets=("video.width=32", "video.height=32", "video.frames=5", *extra))
        found = get_registry().pipeline(resolved.model).memory_plan(resolved)
        return next(p.host_bytes for p in found.peaks if p.step == "denoise")

    plain, merged = denoise_peak(), denoise_peak("sampler.cfg_merge=true")
    assert merged > plain
    assert denoise_peak("sampler.cfg=1.0") == denoise_peak("sampler.cfg=1.0", "sampler.cfg_merge=true")
