"""LongCat's block-sparse attention against attention computed independently here: a dense
(Lq, Lk) mask built from this file's own chunk bookkeeping and its own selection, then masked
softmax attention in fp64 (no helper of the module under test is used for the reference)."""

from __future__ import annotations

import math

import pytest
import torch

from wanflow.errors import ModelLoadError
from wanflow.models import longcat_bsa
from wanflow.models.attention import sdpa
from wanflow.models.longcat_bsa import (
    CALL_DEFAULTS,
    BsaParams,
    block_sparse_attention,
    select_chunks,
    to_chunks,
)

HEADS, DIM = 2, 8


def chunk_ids(grid, chunk) -> torch.Tensor:
    """Each token's chunk number, from its (T, H, W) coordinates (chunks in raster order)."""
    (T, H, W), (t, h, w) = grid, chunk
    ids = [((ti // t) * (H // h) + hi // h) * (W // w) + wi // w
           for ti in range(T) for hi in range(H) for wi in range(W)]
    return torch.tensor(ids)


def picked(scores: list[float], sparsity, cdf, dim: int) -> list[int]:
    """The key chunks one query chunk keeps, by the definition, written out plainly."""
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    count = 0
    if cdf is not None:
        top = max(scores)
        exps = [math.exp((s - top) / math.sqrt(dim)) for s in scores]
        total = 0.0
        for j in order:
            total += exps[j] / sum(exps)
            if total > cdf:
                break
            count += 1
    if sparsity is not None:
        count = max(count, int((1 - sparsity) * len(scores)))
    return order[:count]


def reference(q, k, v, grid_q, grid_k, chunk_q, chunk_k, sparsity=None, cdf=None):
    """Masked dense attention in fp64; also returns how many key chunks each query chunk kept."""
    q, k, v = q.double(), k.double(), v.double()
    ids_q, ids_k = chunk_ids(grid_q, chunk_q), chunk_ids(grid_k, chunk_k)
    n_q, n_k = int(ids_q.max()) + 1, int(ids_k.max()) + 1
    out, counts = torch.zeros_like(q), []
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            q_means = torch.stack([q[b, ids_q == i, h].mean(0) for i in range(n_q)])
            k_means = torch.stack([k[b, ids_k == j, h].mean(0) for j in range(n_k)])
            score = q_means @ k_means.T
            mask = torch.zeros(q.shape[1], k.shape[1], dtype=torch.bool)
            for i in range(n_q):
                keep = picked(score[i].tolist(), sparsity, cdf, q.shape[-1])
                counts.append(len(keep))
                for j in keep:
                    mask |= (ids_q == i)[:, None] & (ids_k == j)[None, :]
            logits = q[b, :, h] @ k[b, :, h].T / math.sqrt(q.shape[-1])
            weights = logits.masked_fill(~mask, -math.inf).softmax(-1).nan_to_num(0.0)
            out[b, :, h] = weights @ v[b, :, h]
    return out.float(), counts


def tokens(grid, chunk, seed, batch=2, spread=2.0):
    """q-like (B, L, heads, D) values with a random offset per chunk, so chunks differ clearly."""
    gen = torch.Generator().manual_seed(seed)
    ids = chunk_ids(grid, chunk)
    offsets = spread * torch.randn(batch, int(ids.max()) + 1, HEADS, DIM, generator=gen)
    return torch.randn(batch, math.prod(grid), HEADS, DIM, generator=gen) + offsets[:, ids]


def qkv(grid, chunk, seed=0):
    return tokens(grid, chunk, seed), tokens(grid, chunk, seed + 1), tokens(grid, chunk, seed + 2)


def test_sparsity_zero_is_dense_attention():
    grid, chunk = (8, 4, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk)
    out = block_sparse_attention(q, k, v, grid, grid, BsaParams(sparsity=0.0, chunk_q=chunk, chunk_k=chunk))
    torch.testing.assert_close(out, sdpa(q, k, v), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("grid", "chunk_q", "chunk_k"), [
    ((8, 8, 8), (4, 4, 2), (4, 4, 2)),
    ((8, 8, 4), (4, 4, 2), (4, 4, 2)),  # a chunk layout unlike the grid's: catches a wrong permute
    ((8, 8, 4), (2, 4, 4), (4, 2, 2)),  # queries and keys chunked differently
])
def test_topk_matches_the_masked_reference(grid, chunk_q, chunk_k):
    q = tokens(grid, chunk_q, 0)
    k, v = tokens(grid, chunk_k, 1), tokens(grid, chunk_k, 2)
    params = BsaParams(sparsity=0.75, chunk_q=chunk_q, chunk_k=chunk_k)
    expected, counts = reference(q, k, v, grid, grid, chunk_q, chunk_k, sparsity=0.75)
    assert set(counts) == {int(0.25 * len(set(chunk_ids(grid, chunk_k).tolist())))}
    out = block_sparse_attention(q, k, v, grid, grid, params)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("sparsity", "cdf"), [(None, 0.9), (0.875, 0.9)])
def test_cdf_modes_match_the_masked_reference(sparsity, cdf):
    grid, chunk = (8, 8, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk, seed=3)
    expected, counts = reference(q, k, v, grid, grid, chunk, chunk, sparsity=sparsity, cdf=cdf)
    assert len(set(counts)) > 2  # the counts differ between chunks, so the ragged path runs
    if sparsity is None:
        assert 0 in counts  # and some chunk keeps nothing (its output is zero)
    else:
        assert min(counts) == int((1 - sparsity) * 16) < max(counts)  # topk's floor holds and is exceeded
    out = block_sparse_attention(q, k, v, grid, grid, BsaParams(sparsity=sparsity, cdf_threshold=cdf,
                                                                chunk_q=chunk, chunk_k=chunk))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_no_row_reaches_the_kernel_fully_masked(monkeypatch):
    """A chunk that keeps nothing is zeroed after the kernel; the kernel itself never sees a row
    with no key (some backends answer NaN there, which would reach the gradients)."""
    seen = []

    def checked(q, k, v, attn_mask=None):
        if attn_mask is not None:
            seen.append(attn_mask.any(dim=-1).all().item())
        return real(q, k, v, attn_mask=attn_mask)

    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(longcat_bsa.F, "scaled_dot_product_attention", checked)
    grid, chunk = (8, 8, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk, seed=3)
    expected, counts = reference(q, k, v, grid, grid, chunk, chunk, cdf=0.9)
    out = block_sparse_attention(q, k, v, grid, grid, BsaParams(sparsity=None, cdf_threshold=0.9,
                                                                chunk_q=chunk, chunk_k=chunk))
    assert 0 in counts and seen and all(seen)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_queries_on_a_suffix_of_the_key_frames():
    """A continuation's noise tokens (the last frames) attend to every frame's keys."""
    grid_k, grid_q, chunk = (8, 8, 4), (4, 8, 4), (4, 4, 2)
    full_q, k, v = qkv(grid_k, chunk, seed=5)
    q = full_q[:, -math.prod(grid_q):]
    for sparsity, cdf in [(0.5, None), (None, 0.7)]:
        params = BsaParams(sparsity=sparsity, cdf_threshold=cdf, chunk_q=chunk, chunk_k=chunk)
        expected, _ = reference(q, k, v, grid_q, grid_k, chunk, chunk, sparsity=sparsity, cdf=cdf)
        out = block_sparse_attention(q, k, v, grid_q, grid_k, params)
        assert out.shape == q.shape
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    dense = block_sparse_attention(q, k, v, grid_q, grid_k, BsaParams(sparsity=0.0, chunk_q=chunk, chunk_k=chunk))
    torch.testing.assert_close(dense, sdpa(q, k, v), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("cdf", "kept", "dtype"), [
    (0.25, 1, torch.float32), (0.5, 2, torch.float32), (0.75, 3, torch.float32), (1.0, 4, torch.float32),
    (0.4999, 1, torch.bfloat16),  # the threshold is compared in fp32: in bf16 0.4999 would be 0.5
])
def test_cdf_keeps_the_chunk_that_reaches_the_threshold_exactly(cdf, kept, dtype):
    """Zero queries weigh 4 key chunks 1/4 each (exact in fp32 and bf16): the cumulative mass
    equals c at the c·4-th chunk, which is kept (searchsorted right=True)."""
    grid, chunk = (4, 4, 4), (4, 2, 2)
    q, k = torch.zeros(1, 64, HEADS, DIM, dtype=dtype), tokens(grid, chunk, 7, batch=1).to(dtype)
    params = BsaParams(sparsity=None, cdf_threshold=cdf, chunk_q=chunk, chunk_k=chunk)
    _, counts = select_chunks(to_chunks(q, grid, chunk), to_chunks(k, grid, chunk), params)
    assert counts.tolist() == [[[kept] * 4] * HEADS]


@pytest.mark.parametrize(("sparsity", "cdf"), [(0.75, None), (None, 0.9)])
def test_grouping_does_not_change_the_result(sparsity, cdf):
    grid, chunk = (8, 8, 4), (4, 2, 2)
    q, k, v = qkv(grid, chunk, seed=3)
    params = BsaParams(sparsity=sparsity, cdf_threshold=cdf, chunk_q=chunk, chunk_k=chunk)
    whole = block_sparse_attention(q, k, v, grid, grid, params, group_chunks=1000)
    for size in (1, 3, 5):  # 3 and 5 leave a short last group of the 16 chunks
        torch.testing.assert_close(block_sparse_attention(q, k, v, grid, grid, params, group_chunks=size),
                                   whole, atol=1e-6, rtol=0)


def test_returns_the_inputs_dtype():
    grid, chunk = (8, 4, 4), (4, 2, 2)
    q, k, v = (x.bfloat16() for x in qkv(grid, chunk))
    out = block_sparse_attention(q, k, v, grid, grid, BsaParams(sparsity=0.0, chunk_q=chunk, chunk_k=chunk))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), sdpa(q.float(), k.float(), v.float()), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(("params", "grid_q", "grid_k", "said"), [
    (BsaParams(chunk_q=(4, 4, 4)), (8, 8, 6), (8, 8, 8), "not a multiple of the query chunk (4, 4, 4) along W"),
    (BsaParams(chunk_k=(4, 2, 4)), (8, 8, 8), (6, 8, 8), "not a multiple of the key chunk (4, 2, 4) along T"),
    (BsaParams(), (4, 8, 8), (4, 8, 8), "keeps int((1 - 0.9375) * 4) = 0 key chunks"),
    (BsaParams(sparsity=None, cdf_threshold=None), (4, 4, 4), (4, 4, 4), "neither sparsity nor cdf_threshold"),
    (BsaParams(sparsity=1.0), (4, 4, 4), (4, 4, 4), "sparsity = 1.0: must be in [0, 1)"),
    (BsaParams(sparsity=-0.1), (4, 4, 4), (4, 4, 4), "sparsity = -0.1: must be in [0, 1)"),
    (BsaParams(sparsity=None, cdf_threshold=0.0), (4, 4, 4), (4, 4, 4), "cdf_threshold = 0.0: must be in (0, 1]"),
    (BsaParams(sparsity=None, cdf_threshold=1.5), (4, 4, 4), (4, 4, 4), "cdf_threshold = 1.5: must be in (0, 1]"),
    (BsaParams(chunk_q=(4, 4)), (4, 4, 4), (4, 4, 4), "query chunk (4, 4): must be three positive integers"),
    (BsaParams(), (4, 4, 0), (4, 4, 4), "query grid (4, 4, 0): must be three positive integers"),
])
def test_problems_refuse_and_the_attention_raises(params, grid_q, grid_k, said):
    found = params.problems(grid_q, grid_k)
    assert len(found) == 1 and said in found[0]
    q = torch.zeros(1, max(1, math.prod(grid_q)), HEADS, DIM)
    k = torch.zeros(1, math.prod(grid_k), HEADS, DIM)
    with pytest.raises(ValueError, match="block-sparse attention cannot run") as raised:
        block_sparse_attention(q, k, k, grid_q, grid_k, params)
    assert said in str(raised.value)


def test_problems_accept_what_can_run():
    assert BsaParams().problems((4, 16, 16), (8, 16, 16)) == []  # 32 key chunks: 2 kept
    assert BsaParams().problems([4, 16, 16], [8, 16, 16]) == []  # grids as a config's lists
    # topk alone would keep nothing of 4 chunks, but the cdf threshold still picks some.
    assert BsaParams(cdf_threshold=0.9).problems((4, 8, 8), (4, 8, 8)) == []


def test_tokens_must_match_their_grid():
    q = torch.zeros(1, 64, HEADS, DIM)
    with pytest.raises(ValueError, match=r"q has 64 tokens, the query grid \(4, 4, 8\) 128"):
        block_sparse_attention(q, q, q, (4, 4, 8), (4, 4, 4), BsaParams(sparsity=0.5, chunk_q=(2, 2, 2), chunk_k=(2, 2, 2)))


def test_from_config_reads_the_authors_keys():
    released = {"sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}
    assert BsaParams.from_config(released) == BsaParams()
    # A key left out takes the authors' call default, as their **bsa_params call would.
    partial = BsaParams.from_config({"sparsity": 0.5})
    assert partial == BsaParams(sparsity=0.5, cdf_threshold=None, chunk_q=(4, 4, 8), chunk_k=(4, 4, 8))
    assert partial.chunk_q == CALL_DEFAULTS["chunk_3d_shape_q"]
    with pytest.raises(ModelLoadError, match=r"dit/config.json: unknown keys \['chunk_size'\]"):
        BsaParams.from_config({"chunk_size": 64}, where="dit/config.json")
    with pytest.raises(ModelLoadError, match=r"bsa_params: sparsity = 1.5: must be in \[0, 1\)"):
        BsaParams.from_config({"sparsity": 1.5})
    with pytest.raises(ModelLoadError, match="key chunk 4: must be three positive integers"):
        BsaParams.from_config({"chunk_3d_shape_k": 4})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_path_computes_what_the_cpu_one_does():
    """On a GPU in fp32: the CPU's result (the same chunks win; the kernels round apart); in bf16,
    as the refinement runs, a finite result of the same shape."""
    grid, params = (8, 8, 8), BsaParams(sparsity=0.75)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 512, 4, 64, generator=gen) for _ in range(3))
    cpu = block_sparse_attention(q, k, v, grid, grid, params)
    gpu = block_sparse_attention(q.cuda(), k.cuda(), v.cuda(), grid, grid, params).cpu()
    assert ((gpu - cpu).norm() / cpu.norm()).item() < 1e-4
    half = block_sparse_attention(*(x.cuda().bfloat16() for x in (q, k, v)), grid, grid, params)
    assert half.shape == q.shape and half.dtype == torch.bfloat16 and torch.isfinite(half).all()
