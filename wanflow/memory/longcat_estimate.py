"""A LongCat-Video DiT's denoise forward, from its config and the clip's size alone (no torch).

LongCat's denoise step (``steps/denoise_longcat.py``) runs the clean conditioning frames of a
continuation once through the DiT into a cache of every block's keys and values, and then each
forward runs only the frames to denoise (L tokens), attending to the cached ones (Lc tokens)
too. Its blocks differ from a Wan DiT's (``wanflow.models.longcat``), so they are counted on
their own, per token, at the compute itemsize s and in fp32 where the code computes in fp32:

- the cache, held for the whole denoise: each block's keys and values are views of its fused
  q/k/v projection, so the whole projection stays alive: ``3 s depth Lc D``;
- the SwiGLU feed-forward at its peak: five (L, ffn) tensors live at once (the projections, the
  SiLU and their product) beside the modulated input and residual, two at s and four in fp32
  (the modulation and the gate compute in fp32): ``L (5 s F + 2 s D + 16 D)``;
- self-attention at its peak, rotating the keys: per query token the block's input, its
  modulated copy, the fused projection, the normed q and k, the rotated q (``7 s D``) and two
  fp32 gate terms; per key token (the cached ones and the clip's) the keys and values joined with
  the cache (``2 s D``, only in a continuation) and four fp32 temporaries of the rotation;
- the projected prompt, 512 slots of the text width and three of the model's (small).

The peak is the cache, the prompt and the larger of the two block stages.
``tests/memory/test_longcat_estimate.py`` checks it within 20 % of the live tensor bytes of tiny
models' forwards, with and without conditioning frames, in fp32 and bf16.
"""

from __future__ import annotations

from wanflow.memory.estimates import FP32
from wanflow.models.longcat_config import LongCatConfig

#: (L, ffn) tensors alive at once at the SwiGLU's peak.
FFN_HIDDEN = 5
#: fp32 tensors of the model's width per key token while the keys are rotated.
ROTATE_FP32 = 5
#: fp32 RoPE tables (cos, sin) of each grid the denoise uses, kept for the whole run.
ROPE_TABLES = 2


def longcat_tokens(config: LongCatConfig, grid: tuple[int, int, int]) -> int:
    """Tokens of a latent (frames, height, width) grid: one per patch."""
    f, h, w = grid
    pt, ph, pw = config.patch_size
    return (f // pt) * (h // ph) * (w // pw)


def cond_latent_frames(cond_frames: int, temporal_stride: int = 4) -> int:
    """Latent frames of ``cond_frames`` (4n+1) conditioning video frames: the first alone, then fours."""
    return (cond_frames - 1) // temporal_stride + 1


#: Block-sparse attention's query chunks per SDPA call, tokens per chunk and share of key chunks
#: skipped, as ``models.longcat_bsa`` runs it at the release's ``bsa_params`` (a test checks they agree).
BSA_GROUP_CHUNKS, BSA_CHUNK_TOKENS, BSA_SPARSITY = 8, 64, 0.9375


def bsa_gather_bytes(config: LongCatConfig, grid: tuple[int, int, int], itemsize: int) -> int:
    """The keys and values block-sparse attention gathers for one SDPA call: each of its query
    chunks' selected key chunks, every head, at the release's chunk and sparsity."""
    chunks = longcat_tokens(config, grid) // BSA_CHUNK_TOKENS
    selected = int((1 - BSA_SPARSITY) * chunks)
    return 2 * itemsize * BSA_GROUP_CHUNKS * selected * BSA_CHUNK_TOKENS * config.hidden_size


#: Bytes of one entry of FlexAttention's block lists (int32).
BLOCK_INDEX = 4


#: Block lists of FlexAttention's mask: the full blocks (the selection) and the empty partial ones.
BLOCK_LISTS = 2


def bsa_flex_bytes(config: LongCatConfig, grid: tuple[int, int, int]) -> int:
    """The block mask FlexAttention reads instead of gathered keys: per head and query chunk a row
    of key-chunk indices as wide as the key chunks and its count, for the full blocks and again
    for the (empty) partial ones (``models.longcat_bsa_flex``)."""
    chunks = longcat_tokens(config, grid) // BSA_CHUNK_TOKENS
    return BLOCK_LISTS * BLOCK_INDEX * config.num_heads * chunks * (chunks + 1)


def bsa_bytes(config: LongCatConfig, grid: tuple[int, int, int], itemsize: int, implementation: str) -> int:
    """What block-sparse attention adds to a forward beyond dense attention's tensors, as the
    implementation ("gather" or "flex") computes it."""
    return bsa_flex_bytes(config, grid) if implementation == "flex" else bsa_gather_bytes(config, grid, itemsize)


def longcat_forward_bytes(config: LongCatConfig, grid: tuple[int, int, int], itemsize: int,
                          cond_latents: int = 0, batch: int = 1) -> int:
    """Peak activation bytes of one denoise forward on a latent ``grid`` (the whole clip's,
    conditioning frames included) of which the first ``cond_latents`` latent frames are cached
    conditioning; the cache counts, the weights do not. ``batch`` 2: cfg_merge's [prompt;
    negative] rows, which share the one cache."""
    s, d = itemsize, config.hidden_size
    frames, h, w = grid
    cached = longcat_tokens(config, (cond_latents, h, w))
    tokens = longcat_tokens(config, (frames - cond_latents, h, w))
    keys = cached + tokens
    held = 3 * s * config.depth * cached * d + ROPE_TABLES * FP32 * config.head_dim * (keys + cached)
    prompt = s * config.text_len * (config.caption_channels + 3 * d)
    ffn = tokens * (FFN_HIDDEN * s * config.ffn_dim + 2 * s * d + 4 * FP32 * d)
    attn = tokens * 8 * s * d + keys * ((2 * s * d if cached else 0) + ROTATE_FP32 * FP32 * d)
    return held + batch * (prompt + max(ffn, attn))
