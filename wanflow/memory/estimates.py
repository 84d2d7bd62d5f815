"""Activation memory of each step, from the model's shape and the video's size (no torch).

Each estimate counts the tensors a step creates and holds at its peak, term by term, with the
coefficients measured on tiny models by counting every live tensor of a CPU run
(`tests/memory/test_estimates.py` checks them within 20 %). Weights are not included: the
planner adds them from the placement.

DiT forward, per token (L = latent frames x height/2 x width/2 tokens), at its largest of:

- feed-forward: the block's input, the FFN's input and two hidden (B, L, ffn_dim) tensors (the
  projection's output and its GELU) at the compute itemsize s, plus two fp32 (B, L, dim) tensors
  (the modulated input before its cast, the gated residual): ``s (2 dim + 2 ffn) + 8 dim``;
- self-attention: ~7 (B, L, dim) tensors (input, modulated input, q, k, v, attention output,
  projection) plus one fp32: ``7 s dim + 4 dim``;

plus the context the block attends to (the embedded text and image tokens and this block's
keys and values: ``3 s Lc dim``), or, with prepared contexts, every block's keys and values of
every prompt held for the whole denoise (``2 s layers Lc dim`` each). Per-token timesteps
(Wan2.2 TI2V's first-frame conditioning) add two fp32 (B, L, 6, dim) modulations. Before the
blocks the prompt is padded to 512 tokens of the text width and embedded, and CLIP tokens go
through their 1280-wide projection: ``s (text_len (text_dim + 2 dim) + image_len (3 1280 +
2 dim))``, which only beats the blocks at tiny sizes.

VAE decode: the largest decoder level holds ~44 (Wan2.1) or ~15 (Wan2.2, which decodes at half
resolution and unpatchifies) x its base width values per output pixel of one chunk of frames,
whatever the number of frames (the causal cache keeps one chunk at a time), plus the decoded
video in fp32.

Text encode (umT5-XXL, T5's eager attention): ~6 (L, d_model) and 3 (L, d_ff) tensors plus
three fp32 (heads, L, L) score tensors (scores, position bias, softmax).
"""

from __future__ import annotations

from typing import Literal

from wanflow.models.dit_config import CLIP_DIM, DitConfig

FP32 = 4
#: Per output pixel and unit of decoder base width, values live at the decode's peak.
VAE_DECODE_VALUES = {"wan2.1": 44.0, "wan2.2": 15.1}
#: (temporal, spatial) compression of each VAE version.
VAE_STRIDE = {"wan2.1": (4, 8), "wan2.2": (4, 16)}
#: umT5-XXL shape: width, feed-forward width, heads.
UMT5_XXL = (4096, 10240, 64)


def latent_grid(frames: int, height: int, width: int,
                version: Literal["wan2.1", "wan2.2"] = "wan2.1") -> tuple[int, int, int]:
    """The latent (frames, height, width) of a video of ``frames`` x ``height`` x ``width`` pixels."""
    temporal, spatial = VAE_STRIDE[version]
    return (frames - 1) // temporal + 1, height // spatial, width // spatial


def dit_tokens(cfg: DitConfig, grid: tuple[int, int, int]) -> int:
    """Video tokens of a latent grid: one per (1, 2, 2) patch."""
    f, h, w = grid
    pt, ph, pw = cfg.patch_size
    return (f // pt) * (h // ph) * (w // pw)


def dit_forward_bytes(
    cfg: DitConfig, grid: tuple[int, int, int], itemsize: int, *, batch: int = 1,
    prepared_contexts: int = 0, per_token_time: bool = False, streams: int = 1, extra_tokens: int = 0,
) -> int:
    """Peak activation bytes of one DiT forward on a latent ``grid``.

    ``prepared_contexts``: prompts whose keys/values are projected once for every step (the
    denoise step prepares one per prompt: two with guidance); 0 for a plain forward.
    ``streams``: token streams of the grid's size travelling through the blocks together
    (Video-As-Prompt's reference stream beside the video: 2); ``extra_tokens``: tokens a forward
    runs its blocks over besides the video's, per clip (S2V's reference and motion tokens).
    """
    s, d = itemsize, cfg.dim
    tokens = batch * (dit_tokens(cfg, grid) * streams + extra_tokens)
    context = cfg.image_len + cfg.text_len
    ffn = s * (2 * d + 2 * cfg.ffn_dim) + 2 * FP32 * d
    attn = 7 * s * d + FP32 * d
    per_token = max(ffn, attn) + (2 * 6 * FP32 * d if per_token_time else 0)
    if prepared_contexts:
        held = prepared_contexts * 2 * s * cfg.num_layers * batch * context * d
    else:
        held = 3 * s * batch * context * d
    embed = s * batch * (cfg.text_len * (cfg.text_dim + 2 * d) + cfg.image_len * (3 * CLIP_DIM + 2 * d))
    return max(tokens * per_token + held, embed + held * bool(prepared_contexts))


def vae_decode_bytes(version: Literal["wan2.1", "wan2.2"], decoder_dim: int, frames: int,
                     height: int, width: int, itemsize: int, *,
                     tile: tuple[int, int] | None = None) -> int:
    """Peak activation bytes of decoding a ``frames`` x ``height`` x ``width`` video.

    ``tile``: (height, width) in pixels of the tiles of a tiled decode (the peak follows a tile,
    the decoded video is still whole).
    """
    rows, cols = tile if tile is not None else (height, width)
    levels = VAE_DECODE_VALUES[version] * decoder_dim * rows * cols * itemsize
    return int(levels) + 3 * frames * height * width * FP32


def text_encode_bytes(tokens: int = 512, itemsize: int = 2, *, batch: int = 1,
                      shape: tuple[int, int, int] = UMT5_XXL) -> int:
    """Peak activation bytes of encoding ``batch`` prompts padded to ``tokens`` tokens."""
    width, ffn, heads = shape
    hidden = itemsize * tokens * (6 * width + 3 * ffn)
    scores = 3 * FP32 * heads * tokens * tokens
    return batch * (hidden + scores)
