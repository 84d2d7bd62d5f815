"""LongCat's block-sparse attention as one FlexAttention call (``[runtime].sparse_attention = "flex"``).

Why it exists: the gather implementation (``longcat_bsa``) copies every query chunk's selected
key and value chunks before a dense SDPA call, which at 720p writes hundreds of gigabytes a layer
on a GPU. torch's FlexAttention is a block-sparse kernel: once ``to_chunks`` has made each chunk's
tokens contiguous, the selection is a ``BlockMask`` whose blocks are the chunks (``BLOCK_SIZE`` =
(tokens per query chunk, tokens per key chunk)), whose per-row block counts are the counts
``select_chunks`` keeps and whose block indices are its ranked key chunks. Nothing is gathered.

Two ways to run it:

- compiled (``torch.compile(flex_attention)``, made once per process): the fused kernel reads
  only the listed blocks. The blocks are passed as *full* blocks (no mask is evaluated per
  element); the partial-block lists FlexAttention also takes are empty (zeros as large as the
  full lists, see ``flex_chunks``). This is the path a run takes, on CUDA (Triton's kernel) and
  on the CPU (inductor's C++ template).
- eager (tests only): torch's reference implementation ignores the block lists and evaluates a
  mask function over the whole (Lq, Lk) score matrix, so the selection is also given as a mask
  function there; it materialises every score and is usable only on tiny grids.

A query chunk that keeps nothing outputs zeros, as the authors' kernel does (forced here; flex
also returns zeros for a row without blocks). FlexAttention's GPU kernel tiles each block with
BLOCK_M x BLOCK_N tiles and needs the chunks' token counts to be multiples of them;
``kernel_options`` picks tiles that divide the chunks (64-token chunks: 64 x 64 instead of the default 128 x 64 for
bf16 at head size 128 on sm90).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from wanflow.models.longcat_bsa_params import gpu_tile

#: The compiled ``flex_attention``, made on first use (compiling is per process; each new shape
#: compiles once more).
_compiled: Any = None


def flex_attention_fn(compiled: bool) -> Any:
    """torch's ``flex_attention``, compiled once per process when ``compiled``."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if _compiled is None:
        _compiled = torch.compile(flex_attention)
    return _compiled


def kernel_options(tokens_q: int, tokens_k: int, device: torch.device) -> dict[str, int] | None:
    """BLOCK_M / BLOCK_N dividing the query and key chunks on CUDA (None elsewhere: the CPU
    template takes any block size). 128 x 64 is torch's own default for half precision."""
    if device.type != "cuda":
        return None
    block_m, block_n = gpu_tile(tokens_q, 128), gpu_tile(tokens_k, 64)
    if block_m is None or block_n is None:
        raise ValueError(f"flex block-sparse attention on CUDA needs chunks of a multiple of 16 tokens "
                         f"(the GPU kernel's smallest tile); these hold {tokens_q} (query) and {tokens_k} (key): "
                         'use [runtime].sparse_attention = "gather"')
    return {"BLOCK_M": block_m, "BLOCK_N": block_n}


def flex_chunks(qc: Tensor, kc: Tensor, vc: Tensor, ranked: Tensor, kept: Tensor, *,
                compiled: bool = True) -> Tensor:
    """Attend each query chunk over its first ``kept`` ``ranked`` key chunks, with one flex call.

    Args:
        qc: (B, heads, Mq, cq, D) and kc, vc: (B, heads, Nk, ck, D), as ``to_chunks`` lays them.
        ranked: (B, heads, Mq, S) key-chunk indices, best first; kept: (B, heads, Mq) counts ≤ S.
        compiled: the fused block-sparse kernel; False runs torch's eager reference (tiny grids only).

    Returns:
        (B, heads, Mq, cq, D) in q's dtype.
    """
    from torch.nn.attention.flex_attention import BlockMask

    B, heads, Mq, cq, D = qc.shape
    Nk, ck = kc.shape[2], kc.shape[3]
    counts = kept.to(torch.int32).contiguous()
    # The block lists are as wide as the key chunks (the CPU kernel requires it); columns past a
    # row's count are never read.
    indices = torch.zeros(B, heads, Mq, Nk, dtype=torch.int32, device=qc.device)
    indices[..., :ranked.shape[-1]] = ranked.to(torch.int32)
    lengths = (Mq * cq, Nk * ck)
    # The partial-block lists are empty, held in tensors of their own as large as the full ones:
    # with inductor's CPU kernel (torch 2.13) lists that share the full ones' memory fail to
    # compile, lists broadcast over batch and heads (size 1) give wrong results, and expanded
    # (stride 0) zeros fail at run time once a call recompiles on their strides (as a call from
    # compiled DiT blocks does). The eager reference reads only the mask function.
    mask = BlockMask.from_kv_blocks(torch.zeros_like(counts), torch.zeros_like(indices), counts, indices,
                                    BLOCK_SIZE=(cq, ck), seq_lengths=lengths, compute_q_blocks=False,
                                    mask_mod=None if compiled else _selected(indices, counts, cq, ck))
    options = kernel_options(cq, ck, qc.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile.*")  # eager is asked for
        out = flex_attention_fn(compiled)(qc.reshape(B, heads, Mq * cq, D), kc.reshape(B, heads, Nk * ck, D),
                                          vc.reshape(B, heads, Nk * ck, D), block_mask=mask,
                                          scale=1 / math.sqrt(D), kernel_options=options)
    out = out.view(B, heads, Mq, cq, D)
    return out.masked_fill((kept == 0)[..., None, None], 0)  # a chunk that kept nothing: zeros


def _selected(indices: Tensor, counts: Tensor, cq: int, ck: int) -> Any:
    """The eager path's mask function: whether query token q's chunk kept key token k's chunk."""
    B, heads, Mq, Nk = indices.shape
    slots = torch.arange(Nk, device=indices.device) < counts.unsqueeze(-1)  # (B, heads, Mq, Nk)
    # Summed, not written: a slot past the count repeats some index and adds 0 to it.
    chosen = torch.zeros(B, heads, Mq, Nk, dtype=torch.int32, device=indices.device)
    chosen = chosen.scatter_add_(-1, indices.long(), slots.to(torch.int32)) > 0

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        return chosen[b, h, q // cq, k // ck]

    return mask_mod
