"""LongCat-Video's block-sparse attention (BSA), computed with torch's own attention.

Why it exists: LongCat-Video's 720p refinement stage denoises about 170,000 tokens per layer, too
many to attend densely at every step. BSA splits the tokens into 3-D chunks of (t, h, w) latent
voxels, scores every (query chunk, key chunk) pair by the dot product of the chunks' mean vectors,
and lets each query chunk attend only to the key chunks that score best: the released setting
(sparsity 0.9375) keeps 6.25 % of the chunk pairs. The model's authors run it as a Triton kernel
(CUDA only); this module computes the same attention on any device, exactly: nothing is
approximated beyond the selection itself.

The definition (the authors' ``flash_attn_bsa_3d``):

1. tokens are in (T, H, W) raster order; they are regrouped into chunks of (t, h, w) tokens, the
   chunks in raster order over (T/t, H/h, W/w) and the tokens inside a chunk in (t, h, w) order;
2. gating: each chunk's mean q (and k) vector, in the inputs' dtype; score = q_mean · k_mean
   (unscaled), per batch item and head;
3. selection per query chunk: "topk" (a sparsity s) keeps the int((1 - s) · Nk) best key chunks;
   "cdf" (a threshold c) ranks softmax(score / sqrt(D)) and keeps the first
   searchsorted(cumsum, c, right=True) of them; with both set, the larger count;
4. a query chunk's tokens attend, with one softmax of scale 1/sqrt(D), over the tokens of its
   selected key chunks. A query chunk that selects nothing (a cdf threshold below its best
   chunk's weight) outputs zeros, as the authors' kernel does.

LongCat uses BSA only on clips of more than one latent frame, with the keys' grid sharing the
queries' H and W (a continuation's noise tokens attend to the conditioning frames' keys too);
the caller decides when (``SparseKernel``, below, is what LongCat's DiT passes its blocks).

Two implementations compute it (``[runtime].sparse_attention``): "gather", here, copies each group
of query chunks' selected key/value chunks and calls SDPA (any device, any torch); "flex"
(``longcat_bsa_flex``) hands the selection to FlexAttention's block-sparse kernel as a block mask,
gathering nothing (the GPU's path).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from wanflow.models.attention import attention
from wanflow.models.longcat_bsa_params import (
    CALL_DEFAULTS,
    IMPLEMENTATIONS,
    BsaParams,
    Grid,
    SparseAttention,
    chunk_count,
)

#: Query chunks attended per SDPA call. Each call gathers the keys and values of its query
#: chunks' selected chunks: at 720p (2,640 chunks of 64 tokens, 165 selected, 32 heads of 128)
#: that is 165 · 64 · 32 · 128 · 2 (k and v) · 2 bytes = 173 MB per query chunk and batch item,
#: 457 GB for all of them at once. Eight chunks (1.4 GB, the size of the layer's q) bound the
#: extra memory while each call still has 8 · 32 (chunk, head) rows of 10,560 keys to fill a GPU.
GROUP_CHUNKS = 8

__all__ = ["CALL_DEFAULTS", "GROUP_CHUNKS", "IMPLEMENTATIONS", "BsaParams", "Grid", "SparseAttention", "SparseKernel",
           "attend", "block_sparse_attention", "chunk_count", "dense"]


# ----------------------------------------------------------------------------- layout


def to_chunks(x: Tensor, grid: Grid, chunk: Grid) -> Tensor:
    """(B, L, heads, D) tokens in (T, H, W) raster order -> (B, heads, chunks, t·h·w, D)."""
    (T, H, W), (t, h, w) = grid, chunk
    B, _, heads, D = x.shape
    x = x.reshape(B, T // t, t, H // h, h, W // w, w, heads, D)
    x = x.permute(0, 7, 1, 3, 5, 2, 4, 6, 8)  # (B, heads, T/t, H/h, W/w, t, h, w, D)
    return x.reshape(B, heads, -1, t * h * w, D)


def from_chunks(x: Tensor, grid: Grid, chunk: Grid) -> Tensor:
    """The inverse of `to_chunks`: (B, heads, chunks, t·h·w, D) -> (B, L, heads, D)."""
    (T, H, W), (t, h, w) = grid, chunk
    B, heads, _, _, D = x.shape
    x = x.reshape(B, heads, T // t, H // h, W // w, t, h, w, D)
    x = x.permute(0, 2, 5, 3, 6, 4, 7, 1, 8)  # (B, T/t, t, H/h, h, W/w, w, heads, D)
    return x.reshape(B, T * H * W, heads, D)


# ----------------------------------------------------------------------------- selection


def select_chunks(q: Tensor, k: Tensor, params: BsaParams) -> tuple[Tensor, Tensor]:
    """Rank each query chunk's key chunks and say how many it keeps.

    Args:
        q: (B, heads, Mq, tokens, D) and k: (B, heads, Nk, tokens, D), as `to_chunks` lays them.

    Returns:
        ranked key-chunk indices (B, heads, Mq, S), best first, and the counts kept
        (B, heads, Mq), each at most S.
    """
    score = q.mean(dim=3) @ k.mean(dim=3).transpose(-1, -2)  # (B, heads, Mq, Nk), inputs' dtype
    key_chunks = score.shape[-1]
    if params.cdf_threshold is None:
        kept = params.topk_count(key_chunks)
        ranked = score.topk(kept, dim=-1).indices
        return ranked, torch.full(score.shape[:-1], kept, dtype=torch.long, device=score.device)
    weights = torch.softmax(score * (1 / q.shape[-1] ** 0.5), dim=-1).sort(dim=-1, descending=True)
    cdf = weights.values.cumsum(dim=-1)
    # The threshold stays fp32 (the authors' too): 0.9 is not rounded to a bf16 0.8984.
    threshold = torch.full((*cdf.shape[:-1], 1), params.cdf_threshold, dtype=torch.float32, device=cdf.device)
    kept = torch.searchsorted(cdf, threshold, right=True).squeeze(-1)
    if params.sparsity is not None:
        kept = kept.clamp(min=params.topk_count(key_chunks))
    return weights.indices, kept


def _groups(kept: Tensor, size: int) -> Iterator[tuple[int, int, int, bool]]:
    """(start, stop, widest count, whether counts differ) per group of ``size`` query chunks, read
    back from the device once for the whole layer."""
    per_chunk = kept.flatten(0, -2)  # (B·heads, Mq)
    chunks = per_chunk.shape[-1]
    starts = range(0, chunks, size)
    pad = len(starts) * size - chunks  # repeating the last column leaves every max and min as it is
    padded = torch.cat([per_chunk, per_chunk[:, -1:].expand(-1, pad)], dim=1).unflatten(1, (len(starts), size))
    widest, narrowest = padded.amax(dim=(0, 2)).tolist(), padded.amin(dim=(0, 2)).tolist()
    for start, hi, lo in zip(starts, widest, narrowest, strict=True):
        yield start, min(start + size, chunks), hi, hi != lo


def _gather(x: Tensor, picks: Tensor) -> Tensor:
    """x (B, heads, N, tokens, D), picks (B, heads, G, S) -> (B, heads·G, S·tokens, D)."""
    B, heads, chunks, tokens, D = x.shape
    base = torch.arange(B * heads, device=x.device).view(B, heads, 1, 1) * chunks
    rows = x.flatten(0, 2).index_select(0, (picks + base).flatten())  # (B·heads·G·S, tokens, D)
    return rows.view(B, heads * picks.shape[2], picks.shape[3] * tokens, D)


def _attend_group(q: Tensor, k: Tensor, v: Tensor, picks: Tensor, kept: Tensor | None) -> Tensor:
    """Attend a group of query chunks q (B, heads, G, cq, D) over their picked key chunks.

    ``picks`` (B, heads, G, S) are key-chunk indices; ``kept`` (B, heads, G) says how many of them
    each query chunk keeps, or is None when every one keeps all S (topk: no mask, fastest kernel).
    """
    B, heads, G, cq, D = q.shape
    if picks.shape[-1] == 0:  # nothing selected anywhere in the group
        return torch.zeros_like(q)
    keys, values = _gather(k, picks), _gather(v, picks)
    mask = None
    if kept is not None:
        slots = torch.arange(picks.shape[-1], device=q.device) < kept.unsqueeze(-1)  # (B, heads, G, S)
        slots |= (kept == 0).unsqueeze(-1)  # no row fully masked (NaN on some kernels); zeroed below
        mask = slots.repeat_interleave(k.shape[3], dim=-1).view(B, heads * G, 1, -1)
    out = F.scaled_dot_product_attention(q.reshape(B, heads * G, cq, D), keys, values, attn_mask=mask)
    out = out.view(B, heads, G, cq, D)
    if kept is not None:  # a chunk that selected nothing outputs zeros, as the authors' kernel
        out = out.masked_fill((kept == 0)[..., None, None], 0)
    return out


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, grid_q: Grid, grid_k: Grid,
                           params: BsaParams, group_chunks: int = GROUP_CHUNKS,
                           implementation: str = "gather", compiled: bool = True) -> Tensor:
    """LongCat's block-sparse attention, exact up to its chunk selection.

    Args:
        q: (B, Lq, heads, D) with Lq = Tq·H·W tokens in (T, H, W) raster order (``grid_q``).
        k, v: (B, Lk, heads, D) on ``grid_k``.
        group_chunks: query chunks attended per SDPA call (bounds the gathered keys' memory).
        implementation: "gather" (gathered chunks, one SDPA call per group) or "flex" (one
            FlexAttention call, ``longcat_bsa_flex``); the same attention, rounded apart.
        compiled: flex only: its fused kernel (False: torch's eager reference, tiny grids only).

    Returns:
        (B, Lq, heads, D) in q's dtype.
    """
    found = params.problems(grid_q, grid_k)
    if not found:
        found = _tensor_problems(q, k, v, grid_q, grid_k)
    if implementation not in IMPLEMENTATIONS:
        found.append(f"implementation {implementation!r} is not one of {list(IMPLEMENTATIONS)}")
    if found:
        raise ValueError("block-sparse attention cannot run: " + "; ".join(found))
    qc, kc, vc = (to_chunks(x, grid, chunk) for x, grid, chunk in
                  ((q, grid_q, params.chunk_q), (k, grid_k, params.chunk_k), (v, grid_k, params.chunk_k)))
    ranked, kept = select_chunks(qc, kc, params)
    if implementation == "flex":
        from wanflow.models.longcat_bsa_flex import flex_chunks

        return from_chunks(flex_chunks(qc, kc, vc, ranked, kept, compiled=compiled), grid_q, params.chunk_q)
    out = torch.empty_like(qc)
    for start, stop, width, ragged in _groups(kept, max(1, group_chunks)):
        picks = ranked[:, :, start:stop, :width]
        out[:, :, start:stop] = _attend_group(qc[:, :, start:stop], kc, vc, picks,
                                              kept[:, :, start:stop] if ragged else None)
    return from_chunks(out, grid_q, params.chunk_q)


def _tensor_problems(q: Tensor, k: Tensor, v: Tensor, grid_q: Grid, grid_k: Grid) -> list[str]:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        return [(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must be "
                 "(B, L, heads, D), k and v alike")]
    found = []
    if q.shape[1] != math.prod(grid_q):
        found.append(f"q has {q.shape[1]} tokens, the query grid {tuple(grid_q)} {math.prod(grid_q)}")
    if k.shape[1] != math.prod(grid_k):
        found.append(f"k has {k.shape[1]} tokens, the key grid {tuple(grid_k)} {math.prod(grid_k)}")
    return found


# ----------------------------------------------------------------------------- the DiT's kernel


@attrs.frozen
class SparseKernel:
    """LongCat's self-attention made block-sparse (the 720p refinement): what its DiT passes its
    blocks as their kernel; every other attention of the DiT keeps ``dense``."""

    params: BsaParams
    dense: str  # the kernel of the cross-attention
    grid_hw: tuple[int, int]  # tokens along height and width
    implementation: str = "gather"  # "gather" or "flex" (``block_sparse_attention``)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (B, Lq, H, d), k/v (B, Lk, H, d): whole frames of tokens, in (T, h, w) order."""
        h, w = self.grid_hw
        return block_sparse_attention(q, k, v, (q.shape[1] // (h * w), h, w), (k.shape[1] // (h * w), h, w),
                                      self.params, implementation=self.implementation)

    @classmethod
    def of(cls, sparse: BsaParams | SparseAttention, dense: str, grid_hw: tuple[int, int]) -> SparseKernel:
        """The kernel of a DiT's ``sparse`` argument: the config's settings (gathered), or them with
        the implementation the run chose."""
        chosen = sparse if isinstance(sparse, SparseAttention) else SparseAttention(sparse)
        return cls(chosen.params, dense, grid_hw, chosen.implementation)


def attend(q: Tensor, k: Tensor, v: Tensor, kernel: str | SparseKernel) -> Tensor:
    """Self-attention with the named kernel, or block-sparse."""
    return kernel(q, k, v) if isinstance(kernel, SparseKernel) else attention(q, k, v, kernel)


def dense(kernel: str | SparseKernel) -> str:
    """The kernel of the attentions that are never sparse (cross-attention)."""
    return kernel.dense if isinstance(kernel, SparseKernel) else kernel
