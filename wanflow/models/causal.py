"""The Wan DiT run block-causally, as Krea Realtime (a Self-Forcing distillation of Wan2.1-T2V-14B)
is trained and sampled: a video made a few latent frames at a time.

Three things differ from ``WanDiT.forward``, everything else is the DiT's own modules run in the
same order (patch embedding, time embedding, each block's norms, projections, cross-attention
and feed-forward, the head):

- **per-frame timesteps** t (B, F): every latent frame has its own time modulation, so clean
  context frames (t = 0) and the noisy block being generated can share one pass;
- **block-causal self-attention**: frames are grouped in blocks of ``frames_per_block``; a token
  sees its own block and every earlier one (any other frame mask can be given);
- **cached frames**: keys and values of earlier frames (:class:`FrameKV`, rotated at their own
  positions) are prepended to every block's self-attention, and the frames of this call start at
  RoPE position ``start_frame``. The call returns its own frames' keys and values for the cache.

With one block covering all frames and equal timesteps this is ``WanDiT.forward`` (tested).
Text-to-video DiTs only (no y, CLIP or derivative parts): Krea Realtime has exactly the
Wan2.1-T2V-14B weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from wanflow.errors import ModelInputError
from wanflow.models import dit_checks as checks
from wanflow.models.attention import attention
from wanflow.models.causal_kv import FrameKV, block_causal_mask
from wanflow.models.dit import (
    Block,
    Head,
    KeyValues,
    PreparedContext,
    SelfAttention,
    WanDiT,
    gated_residual,
    layer_norm,
    modulate,
)
from wanflow.models.rope import apply_rope, rope_table

#: Latent frames per causal block in Krea Realtime (``num_frame_per_block``).
FRAMES_PER_BLOCK = 3


class CausalOutput(NamedTuple):
    """A causal call's prediction and what a later call may attend to."""

    velocity: Tensor  # (B, out_dim, F, H, W) fp32
    kv: FrameKV  # this call's frames' self-attention keys/values, every block


def causal_forward(
    dit: WanDiT, x: Tensor, t: Tensor, context: Tensor | PreparedContext, *,
    frames_per_block: int = FRAMES_PER_BLOCK, start_frame: int = 0, cache: FrameKV | None = None,
    frame_mask: Tensor | None = None,
) -> CausalOutput:
    """Velocity of latent frames x given per-frame timesteps, block-causally.

    Args:
        x: noisy latents (B, C, F, H, W) of the frames this call computes.
        t: timesteps in [0, 1000] per latent frame, (B, F).
        context: umT5 features (B, <=512, 4096) or ``dit.prepare_context`` of them (reuse it:
            the cross-attention keys/values are then computed once per prompt).
        start_frame: RoPE frame position of x's first frame.
        cache: keys/values of earlier frames every frame of x sees (Fc frames).
        frame_mask: (F, Fc + F) bool, which frames each of x's frames sees (cached frames
            first); default: every cached frame, and x's frames block-causally.
    """
    _check_inputs(dit, x, t, start_frame, cache)
    frames, height, width = x.shape[2:]
    grid = (frames, height // dit.cfg.patch_size[1], width // dit.cfg.patch_size[2])
    mask = _token_mask(_frame_mask(frame_mask, frames, cache, frames_per_block, x.device), grid[1] * grid[2])
    kv_text = context.kv if isinstance(context, PreparedContext) else dit.prepare_context(context).kv
    tokens = dit.patch_embedding(x.to(dit.compute_dtype)).flatten(2).transpose(1, 2)  # (B, L, D)
    e, e0 = dit.embed_time(t)  # (B, F, D), (B, F, 6, D) fp32
    rope = _frame_rope(start_frame, grid, dit.cfg.head_dim, x.device, dit.compute_dtype)
    keys, values = [], []
    for index, block in enumerate(dit.blocks):
        past = None if cache is None else cache.block(index)
        tokens, (k, v) = _block(block, tokens, e0, kv_text[index], rope, past, mask, dit.attention_kernel)
        keys.append(k.unflatten(1, (frames, -1)))  # (B, F, S, H, d)
        values.append(v.unflatten(1, (frames, -1)))
    velocity = dit.unpatchify(_head(dit.head, tokens, e), grid)
    return CausalOutput(velocity, FrameKV(tuple(keys), tuple(values)))


def _block(
    block: Block, x: Tensor, e0: Tensor, kv_text: KeyValues, rope: tuple[Tensor, Tensor],
    past: tuple[Tensor, Tensor] | None, mask: Tensor | None, kernel: str,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``Block.forward`` with the modulation taken per frame: x (B, L, D), e0 (B, F, 6, D)."""
    frames = e0.shape[1]
    mod = (block.modulation + e0).unsqueeze(2).unbind(3)  # 6 x (B, F, 1, D) fp32

    def per_frame(y: Tensor) -> Tensor:
        return y.unflatten(1, (frames, -1))  # (B, F, S, D)

    y = modulate(layer_norm(per_frame(x), block.eps), mod[0], mod[1]).flatten(1, 2)
    y, kv = _self_attention(block.self_attn, y, rope, past, mask, kernel)
    x = gated_residual(per_frame(x), per_frame(y), mod[2]).flatten(1, 2)
    x = x + block.cross_attn(block.norm3(x), kv_text, kernel)
    y = block.ffn(modulate(layer_norm(per_frame(x), block.eps), mod[3], mod[4]))
    return gated_residual(per_frame(x), y, mod[5]).flatten(1, 2), kv


def _self_attention(
    attn: SelfAttention, x: Tensor, rope: tuple[Tensor, Tensor], past: tuple[Tensor, Tensor] | None,
    mask: Tensor | None, kernel: str,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``SelfAttention.forward`` over [cached frames, these frames]; returns these frames' k, v."""
    heads = (attn.num_heads, -1)
    q = apply_rope(attn.norm_q(attn.q(x)).unflatten(-1, heads), rope)  # (B, L, H, d)
    k = apply_rope(attn.norm_k(attn.k(x)).unflatten(-1, heads), rope)  # (B, L, H, d)
    v = attn.v(x).unflatten(-1, heads)  # (B, L, H, d)
    k_all, v_all = (k, v) if past is None else (torch.cat([past[0], k], 1), torch.cat([past[1], v], 1))
    out = attention(q, k_all, v_all, kernel) if mask is None else masked_attention(q, k_all, v_all, mask)
    return attn.o(out.flatten(2)), (k, v)  # (B, L, D)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention where token i sees key j only if mask[i, j]: (B, Lq, H, d), mask (Lq, Lk) bool.

    torch's SDPA (the named kernels take no mask); it picks a fused kernel where one exists."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)  # (B, Lq, H, d)


def _head(head: Head, x: Tensor, e: Tensor) -> Tensor:
    """``Head.forward`` with the time embedding per frame: x (B, L, D), e (B, F, D) fp32."""
    shift, scale = (head.modulation + e.unsqueeze(2)).unsqueeze(2).unbind(3)  # (B, F, 1, D) each
    x = layer_norm(x.float(), head.eps).unflatten(1, (e.shape[1], -1))  # (B, F, S, D)
    return head.head(torch.addcmul(shift, x, 1 + scale)).flatten(1, 2)  # (B, L, patch_volume * C)


def _frame_rope(
    start_frame: int, grid: tuple[int, int, int], head_dim: int, device: torch.device, dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """RoPE tables of frames start_frame .. start_frame + f - 1 of an (f, h, w) grid: (L, 1, d)."""
    f, h, w = grid
    cos, sin = rope_table((start_frame + f, h, w), head_dim, device, dtype)
    first = start_frame * h * w
    return cos[first:], sin[first:]


def _frame_mask(
    given: Tensor | None, frames: int, cache: FrameKV | None, frames_per_block: int, device: torch.device,
) -> Tensor:
    """The (F, Fc + F) frame mask of a call: the one given (checked), or the block-causal default."""
    cached = 0 if cache is None else cache.frames
    if given is None:
        own = block_causal_mask(frames, frames_per_block, device)
        return torch.cat([own.new_ones(frames, cached), own], dim=1)
    if given.dtype != torch.bool or tuple(given.shape) != (frames, cached + frames):
        raise ModelInputError(f"frame_mask: need a bool ({frames}, {cached + frames}) mask (cached frames "
                              f"first), got {given.dtype} {tuple(given.shape)}")
    if not bool(given[:, cached:].diagonal().all()):
        raise ModelInputError("frame_mask: every frame must see itself (its diagonal entry is False)")
    return given.to(device)


def _token_mask(frame_mask: Tensor, tokens_per_frame: int) -> Tensor | None:
    """The frame mask spread to tokens (Lq, Lk), or None where every frame sees every frame."""
    if bool(frame_mask.all()):
        return None
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def _check_inputs(dit: WanDiT, x: Tensor, t: Tensor, start_frame: int, cache: FrameKV | None) -> None:
    """Refuse what the causal forward cannot run, before any work."""
    cfg = dit.cfg
    if x.ndim != 5:
        raise ModelInputError(f"x: expected latents (B, C, F, H, W), got shape {tuple(x.shape)}.")
    if cfg.in_dim != cfg.out_dim or cfg.clip or cfg.vace_layers or cfg.ref_conv or cfg.camera_in_dim:
        raise ModelInputError(f"the block-causal forward runs plain text-to-video DiTs (Krea Realtime is "
                              f"Wan2.1-T2V-14B); this {cfg.model_type} DiT takes extra inputs.")
    checks.check_latent(x, cfg)
    if tuple(t.shape) != (x.shape[0], x.shape[2]):
        raise ModelInputError(f"t: shape {tuple(t.shape)}; the causal forward takes one timestep per latent "
                              f"frame, ({x.shape[0]}, {x.shape[2]}).")
    if isinstance(start_frame, bool) or not isinstance(start_frame, int) or start_frame < 0:
        raise ModelInputError(f"start_frame = {start_frame!r}: must be an integer ≥ 0")
    tokens = (x.shape[3] // cfg.patch_size[1]) * (x.shape[4] // cfg.patch_size[2])
    expected = (x.shape[0], tokens, cfg.num_heads, cfg.head_dim)
    if cache is not None and (len(cache.keys) != len(dit.blocks) or cache.shape[:1] + cache.shape[2:] != expected):
        raise ModelInputError(f"cache: {len(cache.keys)} blocks of {cache.shape} do not fit this call: "
                              f"{len(dit.blocks)} blocks of (B, n, S, H, d) = ({expected[0]}, n, "
                              f"{', '.join(map(str, expected[1:]))}); the cache was made at another size")
