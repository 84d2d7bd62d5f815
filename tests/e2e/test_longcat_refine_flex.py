"""The 720p refinement with its block-sparse attention computed by FlexAttention
(``[runtime].sparse_attention = "flex"``), end to end on the tiny release: the same refined latents
as gathering within rounding, keyed as the implementation it computes with ("auto" on the CPU is
gather and shares gather's keys; flex is keyed apart), and "auto" on a CUDA machine is flex."""

from __future__ import annotations

import pytest
import torch

from tests.e2e._run import computed, run
from tests.e2e.test_longcat_refine import DENOISE, ENCODE, FIRST, REFINED, _recipe
from tests.e2e.test_longcat_runs import _executed


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    from tests.e2e.conftest import use_models

    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipes(tmp_path):
    """The same refinement recipe three times: sparse_attention unset ("auto"), "gather", "flex"."""
    out = {}
    for setting in ("auto", "gather", "flex"):
        folder = tmp_path / setting
        folder.mkdir()
        out[setting] = _recipe(folder, **({} if setting == "auto" else {"runtime": {"sparse_attention": setting}}))
    return out


def test_flex_refines_as_gathering_does_keyed_as_what_it_computes(longcat_env, tmp_path):
    recipes = _recipes(tmp_path)
    assert computed(run(recipes["gather"], longcat_env)) == FIRST | REFINED
    # on the CPU auto is gather, one computation: only the saves, which record the recipe, run again
    assert computed(run(recipes["auto"], longcat_env)) == {"save", "save-metadata"}
    # flex rounds apart: the refinement's denoise and what follows run again, its encode does not
    assert computed(run(recipes["flex"], longcat_env)) == REFINED - {ENCODE}
    refined = {}
    for setting in ("gather", "flex"):
        for _, ex in _executed(recipes[setting], keep={"decode"}):
            refined[setting] = ex.load(DENOISE)["latents"]
            assert ex.plan.get(DENOISE).spec.step.sparse_attention == setting
    torch.testing.assert_close(refined["flex"], refined["gather"], atol=1e-4, rtol=1e-4)
    assert not torch.equal(refined["flex"], refined["gather"])  # flex computed it: the kernels round apart


@pytest.mark.parametrize(("setting", "cuda", "chosen"), [
    ("auto", True, "flex"), ("auto", False, "gather"), ("gather", True, "gather"), ("flex", False, "flex"),
])
def test_auto_is_flex_on_a_cuda_run(longcat_env, tmp_path, monkeypatch, setting, cuda, chosen):
    from wanflow.recipe import load_recipe
    from wanflow.steps import runtime
    from wanflow.steps.longcat_refine import sparse_implementation

    monkeypatch.setattr(runtime, "machine", lambda: runtime.MachineProbe(cuda=cuda, cpu_threads=1, cpu_compute={}))
    resolved = load_recipe(_recipes(tmp_path)[setting])
    assert sparse_implementation(resolved.values) == chosen


def test_compiled_blocks_attend_with_flex_as_the_eager_dit_gathers(longcat_root):
    """[runtime].compile = "blocks" with flex: the flex call traced into the compiled blocks (its
    block lists recompiled on new strides there) gives the eager DiT's gathered velocity."""
    from tests.e2e._layout_longcat import BSA_PARAMS
    from tests.e2e.test_longcat_fp8 import eager_and_compiled
    from wanflow.memory import pool as model_pool
    from wanflow.models.longcat_bsa import BsaParams, SparseAttention

    eager, compiled = eager_and_compiled(longcat_root)
    params = BsaParams.from_config(BSA_PARAMS)
    g = torch.Generator().manual_seed(5)
    x, context = torch.randn(1, 16, 8, 8, 8, generator=g), torch.randn(1, 5, 64, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        gathered = eager(x, t, context, sparse=params)
        flexed = compiled(x, t, context, sparse=SparseAttention(params, "flex"))
    torch.testing.assert_close(flexed, gathered, rtol=0, atol=1e-5 * gathered.abs().max().item())
    model_pool.clear()


def test_chunks_the_gpu_kernel_cannot_tile_are_refused_at_planning(longcat_env, tmp_path, monkeypatch):
    """A CUDA run computing with flex, the DiT config's chunks of 8 tokens: refused before any model
    loads, naming the setting; gather, or the CPU, takes them."""
    import json

    from wanflow.errors import ModelInputError
    from wanflow.recipe import load_recipe
    from wanflow.steps import runtime
    from wanflow.steps.longcat_refine import check_refined_grids

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"bsa_params": {"sparsity": 0.5, "chunk_3d_shape_q": [4, 1, 2],
                                                 "chunk_3d_shape_k": [4, 1, 2]}}))
    values = dict(load_recipe(_recipes(tmp_path)["auto"]).values)
    for cuda in (True, False):
        monkeypatch.setattr(runtime, "machine", lambda cuda=cuda: runtime.MachineProbe(cuda, 1, {}))
        check_refined_grids({**values, "runtime.sparse_attention": "gather"}, "", False, config)
        if cuda:
            with pytest.raises(ModelInputError, match=r'\[runtime\].sparse_attention = .auto. computes .* multiple '
                               r"of 16 tokens .* query chunk \(4, 1, 2\) holds 8 .*use sparse_attention = \"gather\""):
                check_refined_grids(values, "", False, config)
        else:
            check_refined_grids(values, "", False, config)
