"""``[runtime].compile = "blocks"``: refused where torch cannot compile, applied to every DiT block
by the model pool, and within float rounding of the eager model."""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import inputs, random_state, tiny_config, write_checkpoint
from wanflow.errors import ModelInputError
from wanflow.memory import pool as model_pool
from wanflow.recipe import load_recipe
from wanflow.steps.checks import unsupported

TINY = 'model = "wanflow-tiny"\n[prompt]\ntext = "a cat"\n[runtime]\ndevice = "cpu"\ncompile = "blocks"\n'


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.toml").write_text(TINY, encoding="utf-8")
    return lambda: unsupported(load_recipe(tmp_path / "r.toml"))


def test_compile_is_refused_without_a_cpu_compiler(recipe, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert recipe() == ['r.toml: [runtime].compile = "blocks": torch compiles CPU kernels with a C++ compiler, '
                        'and no-such-compiler-here is not found (install g++, or name yours in CXX); '
                        'set it to "none"']


def test_compile_on_cuda_needs_triton(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert model_pool.compile_problems("cuda") == [
        "torch compiles CUDA kernels with Triton, which is not installed (pip install triton)"]


@pytest.fixture
def dit_files(tmp_path):
    """A one-block tiny DiT on disk (compiling takes seconds per distinct block)."""
    cfg = tiny_config("t2v", num_layers=1)
    write_checkpoint(tmp_path / "dit", cfg, random_state(cfg, seed=5))
    model_pool.clear()
    yield cfg, [tmp_path / "dit" / "diffusion_pytorch_model.safetensors", tmp_path / "dit" / "config.json"]
    model_pool.clear()


def test_compiled_blocks_match_the_eager_model(dit_files, recipe):
    if model_pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(model_pool.compile_problems("cpu")))
    assert recipe() == []
    cfg, files = dit_files
    import torch._dynamo

    torch._dynamo.reset()
    eager = model_pool.dit(files, torch.float32, "cpu", "sdpa")
    compiled = model_pool.dit(files, torch.float32, "cpu", "sdpa", compile_mode="blocks")
    assert compiled is not eager  # its own pool entry: the compile setting is part of what it is
    inp = inputs(cfg, seed=6, grid=(2, 4, 4))
    with torch.no_grad():
        expected, out = eager(**inp), compiled(**inp)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the block really compiled
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("storage", ["compute", "fp8"])
def test_compiled_streamed_blocks_equal_the_compiled_resident_ones_without_recompiling(dit_files, storage):
    """A streamed block's parameters are swapped in by the placement at every forward; compiled
    (its forward alone, the hooks eager), it reuses its graph: the second forward compiles
    nothing, and the output is the compiled resident model's to the bit."""
    if model_pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(model_pool.compile_problems("cpu")))
    if not model_pool.compiled_blocks_stream():
        pytest.skip("torch older than 2.5: compiled blocks are not streamed")
    import torch._dynamo
    from torch._dynamo.utils import counters

    cfg, files = dit_files
    torch._dynamo.reset()
    counters.clear()  # reset() keeps them: an earlier test's graph breaks would count here
    inp = inputs(cfg, seed=6, grid=(2, 4, 4))
    resident = model_pool.dit(files, torch.float32, "cpu", "sdpa", storage=storage, compile_mode="blocks")
    with torch.no_grad():
        expected = resident(**inp)
    streamed = model_pool.dit(files, torch.float32, "cpu", "sdpa", storage=storage, tiers=("disk",),
                              compile_mode="blocks")
    assert [b.tier for b in streamed.placement.blocks] == ["disk"]
    with torch.no_grad():
        first = streamed(**inp)
        graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
        second = streamed(**inp)
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs  # nothing compiled again
    assert not counters["recompiles"] and counters["frames"]["total"] == frames  # no frame converted again
    assert not counters["graph_break"]  # the hooks stay outside the graph
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_compile_with_streamed_blocks_is_refused_before_torch_2_5(dit_files, monkeypatch):
    _, files = dit_files
    monkeypatch.setattr(model_pool, "compiled_blocks_stream", lambda: False)
    with pytest.raises(ModelInputError, match='compile = "blocks" with blocks streamed by the memory policy needs '
                                              'torch 2.5'):
        model_pool.dit(files, torch.float32, "cpu", "sdpa", tiers=("host",), compile_mode="blocks")
