"""LongCat's block-sparse attention computed by FlexAttention (``implementation="flex"``) against
the gather implementation and against this suite's independent fp64 masked reference
(``test_longcat_bsa.reference``): the same selection, the same attention, rounded apart."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tests.models.test_longcat_bsa import DIM, HEADS, chunk_ids, qkv, reference, tokens
from wanflow.models import longcat_bsa_flex
from wanflow.models.longcat_bsa import BsaParams, block_sparse_attention
from wanflow.models.longcat_bsa_params import implementation_for, torch_has_flex

CASES = [  # (grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf)
    ((8, 8, 4), (8, 8, 4), (4, 2, 2), (4, 2, 2), 0.75, None),  # topk
    ((8, 8, 4), (8, 8, 4), (4, 2, 2), (4, 2, 2), None, 0.9),  # cdf: ragged, some chunks keep nothing
    ((8, 8, 4), (8, 8, 4), (4, 2, 2), (4, 2, 2), 0.875, 0.9),  # both: the larger count
    ((8, 8, 4), (8, 8, 4), (2, 4, 4), (4, 2, 2), 0.75, None),  # queries and keys chunked apart
    ((4, 8, 4), (8, 8, 4), (4, 4, 2), (4, 4, 2), None, 0.7),  # a continuation: more key frames
]


def _case(grid_q, grid_k, chunk_q, chunk_k, seed=3):
    """q on the last frames of the key grid (a continuation's layout), k and v on the key grid."""
    full_q = tokens(grid_k, chunk_q, seed)
    return full_q[:, -math.prod(grid_q):], tokens(grid_k, chunk_k, seed + 1), tokens(grid_k, chunk_k, seed + 2)


@pytest.mark.parametrize(("grid_q", "grid_k", "chunk_q", "chunk_k", "sparsity", "cdf"), CASES)
def test_flex_equals_the_gather_and_the_masked_reference(grid_q, grid_k, chunk_q, chunk_k, sparsity, cdf):
    q, k, v = _case(grid_q, grid_k, chunk_q, chunk_k)
    params = BsaParams(sparsity=sparsity, cdf_threshold=cdf, chunk_q=chunk_q, chunk_k=chunk_k)
    expected, counts = reference(q, k, v, grid_q, grid_k, chunk_q, chunk_k, sparsity=sparsity, cdf=cdf)
    if cdf is not None:
        assert len(set(counts)) > 1  # ragged counts
    flex = block_sparse_attention(q, k, v, grid_q, grid_k, params, implementation="flex", compiled=False)
    gather = block_sparse_attention(q, k, v, grid_q, grid_k, params)
    torch.testing.assert_close(flex, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex, gather, atol=1e-5, rtol=1e-5)


def test_a_chunk_that_keeps_nothing_outputs_zeros():
    grid, chunk = (8, 8, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk, seed=3)
    params = BsaParams(sparsity=None, cdf_threshold=0.9, chunk_q=chunk, chunk_k=chunk)
    _, counts = reference(q, k, v, grid, grid, chunk, chunk, cdf=0.9)
    out = block_sparse_attention(q, k, v, grid, grid, params, implementation="flex", compiled=False)
    ids = chunk_ids(grid, chunk)
    per = torch.tensor(counts).view(q.shape[0], HEADS, -1)  # the reference counts b, then h, then chunk
    empty = (per == 0)[:, :, ids].permute(0, 2, 1)  # (B, L, heads): the token's chunk kept nothing
    assert empty.any() and (~empty).any()
    assert (out[empty] == 0).all() and (out[~empty] != 0).any(dim=-1).all()


def test_bf16_agrees_with_the_reference_within_bf16_rounding():
    grid, chunk = (8, 8, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk, seed=4)
    params = BsaParams(sparsity=0.75, chunk_q=chunk, chunk_k=chunk)
    half = [x.bfloat16() for x in (q, k, v)]
    flex = block_sparse_attention(*half, grid, grid, params, implementation="flex", compiled=False)
    gather = block_sparse_attention(*half, grid, grid, params)
    # the selection is made on the bf16 inputs, so the reference selects from them too
    expected, _ = reference(*(x.float() for x in half), grid, grid, chunk, chunk, sparsity=0.75)
    assert flex.dtype == torch.bfloat16
    torch.testing.assert_close(flex.float(), expected, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(flex.float(), gather.float(), atol=3e-2, rtol=3e-2)


def test_the_compiled_kernel_reads_only_the_listed_blocks():
    """The path a run takes: compiled flex with the selection as full blocks and no mask function,
    so only the block lists make it sparse (inductor's CPU kernel here; the GPU's is Triton's)."""
    grid_q, grid_k, chunk = (4, 8, 4), (8, 8, 4), (4, 2, 2)
    q, k, v = _case(grid_q, grid_k, chunk, chunk)
    params = BsaParams(sparsity=None, cdf_threshold=0.8, chunk_q=chunk, chunk_k=chunk)
    expected, counts = reference(q, k, v, grid_q, grid_k, chunk, chunk, cdf=0.8)
    assert 0 in counts and len(set(counts)) > 2
    start = time.perf_counter()
    out = block_sparse_attention(q, k, v, grid_q, grid_k, params, implementation="flex", compiled=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert time.perf_counter() - start < 120  # compiling once; a hang would show here


@pytest.mark.parametrize(("tokens_q", "tokens_k", "tiles"), [
    (64, 64, {"BLOCK_M": 64, "BLOCK_N": 64}),  # the release's 4 x 4 x 4 chunks
    (128, 128, {"BLOCK_M": 128, "BLOCK_N": 64}),  # the authors' call default 4 x 4 x 8: torch's own tiles
    (32, 48, {"BLOCK_M": 32, "BLOCK_N": 16}),
])
def test_gpu_tiles_divide_the_chunks(tokens_q, tokens_k, tiles):
    assert longcat_bsa_flex.kernel_options(tokens_q, tokens_k, torch.device("cuda")) == tiles
    assert longcat_bsa_flex.kernel_options(tokens_q, tokens_k, torch.device("cpu")) is None


def test_chunks_no_gpu_tile_divides_are_refused_on_cuda():
    with pytest.raises(ValueError, match=r"multiple of 16 tokens.*hold 12 \(query\)"):
        longcat_bsa_flex.kernel_options(12, 64, torch.device("cuda"))


def test_an_unknown_implementation_is_refused():
    grid, chunk = (4, 4, 4), (4, 2, 2)
    q = torch.zeros(1, 64, HEADS, DIM)
    with pytest.raises(ValueError, match=r"implementation 'triton' is not one of \['gather', 'flex'\]"):
        block_sparse_attention(q, q, q, grid, grid, BsaParams(sparsity=0.5, chunk_q=chunk, chunk_k=chunk),
                               implementation="triton")


def test_the_recipe_offers_the_implementations_the_attention_has():
    import typing

    from wanflow.models.longcat_bsa_params import IMPLEMENTATIONS, SETTINGS
    from wanflow.recipe.schema import Runtime

    assert typing.get_args(typing.get_type_hints(Runtime)["sparse_attention"]) == SETTINGS
    assert SETTINGS == ("auto", *IMPLEMENTATIONS) and Runtime().sparse_attention == "auto"


def test_auto_is_flex_on_cuda_where_torch_has_it():
    assert implementation_for("auto", "cuda", flex=True) == "flex"
    assert implementation_for("auto", "cuda:1", flex=True) == "flex"
    assert implementation_for("auto", "cuda", flex=False) == "gather"
    assert implementation_for("auto", "cpu", flex=True) == "gather"
    assert implementation_for("flex", "cpu") == "flex" and implementation_for("gather", "cuda") == "gather"
    assert torch_has_flex("2.5.1") and torch_has_flex("2.13.0+cpu") and torch_has_flex("3.0")
    assert not torch_has_flex("2.4.1+cu121") and not torch_has_flex("nightly")


def test_rows_without_blocks_are_zeroed_whatever_the_kernel_leaves_there(monkeypatch):
    """torch's kernels leave zeros in a row with no blocks today; the result does not depend on it
    (a kernel answering anything else there, here ones, still gives zeros for such chunks)."""
    grid, chunk = (8, 8, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk, seed=3)
    params = BsaParams(sparsity=None, cdf_threshold=0.9, chunk_q=chunk, chunk_k=chunk)
    monkeypatch.setattr(longcat_bsa_flex, "flex_attention_fn", lambda compiled: lambda q, k, v, **_: torch.ones_like(q))
    out = block_sparse_attention(q, k, v, grid, grid, params, implementation="flex")
    _, counts = reference(q, k, v, grid, grid, chunk, chunk, cdf=0.9)
    per = torch.tensor(counts).view(q.shape[0], HEADS, -1)
    empty = (per == 0)[:, :, chunk_ids(grid, chunk)].permute(0, 2, 1)
    assert empty.any() and (out[empty] == 0).all() and (out[~empty] == 1).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk", [(4, 4, 4), (4, 4, 8)])  # the release's 64 tokens; the call default's 128
def test_the_gpu_kernel_computes_what_gathering_does(chunk):
    """Triton's kernel with the tiles chosen for the chunks, at head size 128 as the release's:
    gather's result in fp32 and within bf16 rounding in bf16, topk and cdf (chunks keeping nothing)."""
    grid = (8, 8, 16)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, math.prod(grid), 4, 128, generator=gen).cuda() for _ in range(3))
    for params in (BsaParams(sparsity=0.75, chunk_q=chunk, chunk_k=chunk),
                   BsaParams(sparsity=None, cdf_threshold=0.2, chunk_q=chunk, chunk_k=chunk)):
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
            x = [t.to(dtype) for t in (q, k, v)]
            gather = block_sparse_attention(*x, grid, grid, params).float()
            flex = block_sparse_attention(*x, grid, grid, params, implementation="flex").float()
            assert ((flex - gather).norm() / gather.norm()).item() < tol
