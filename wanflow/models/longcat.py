"""The LongCat-Video diffusion transformer (meituan-longcat/LongCat-Video ``dit/``), top to bottom.

Not a Wan DiT, though it reads the same umT5 features and Wan2.1 VAE latents: a single-stream
DiT with fused q/k/v, per-head q/k RMS norms, a SwiGLU feed-forward and a small (512-wide) time
embedding that modulates each block per *latent frame*. Module names equal the released keys
(``x_embedder.proj``, ``t_embedder.mlp``, ``y_embedder.y_proj``, ``blocks.N.attn.qkv``,
``blocks.N.cross_attn.kv_linear``, ``final_layer.linear``...), so the released shards load with
no conversion (`wanflow.models.longcat_loader`).

What the callers must know:

- The output is LongCat's own convention, x0 − noise: the opposite sign of wanflow's flow
  velocity. It is returned as it is; `wanflow.sampling.longcat.flow_velocity` is the one place
  that turns it into a velocity.
- Video continuation: the first ``cond_frames`` latent frames of x are clean conditioning. They
  sit at t = 0, attend only among themselves and receive no text; the frames after them attend
  to everything. Their keys and values never depend on the frames being denoised, so
  ``cache_conditioning`` computes them once and every later step passes only the frames to
  denoise with that cache: the same numbers as the full pass, for a fraction of the work.
- Text: with ``text_tokens_zero_pad`` (the released setting) the prompt is projected, the padded
  slots are then set to zero vectors, and all 512 slots are attended (so padded slots answer
  with the projection's biases). Without it only the real tokens are attended.

Training: ``gradient_checkpointing`` (set by the training stage) recomputes each block in backward
instead of keeping its activations.

Precision follows the reference: the timestep features, time embedding, modulations and final
projection are fp32 (``longcat_config.keeps_fp32``); the timesteps are first rounded to the
compute dtype, as the reference does; RoPE and the norms compute in fp32.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wanflow.models import longcat_checks as checks
from wanflow.models.attention import attention, check_kernel
from wanflow.models.longcat_bsa import SparseKernel, attend, dense
from wanflow.models.longcat_config import LongCatConfig
from wanflow.models.precision import Conv3d, Linear
from wanflow.models.rope import axis_dims

#: Pre-RoPE keys and values of one block's self-attention, each (B, L, H, d).
KeyValues = tuple[Tensor, Tensor]

#: Base of the RoPE frequencies (RoFormer), on every axis.
ROPE_THETA = 10000.0
#: Longest period of the sinusoidal timestep features (the transformer's positional encoding).
MAX_PERIOD = 10000.0
#: How many distinct RoPE tables are kept; a run uses one or two grids.
ROPE_CACHE_SIZE = 16

# ----------------------------------------------------------------------------- helpers


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """[cos, sin] of t·10000^(−i/(dim/2)), computed in fp32 as LongCat's are: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


@functools.lru_cache(maxsize=ROPE_CACHE_SIZE)
def rope_table(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """fp32 (cos, signed sin) of every token of an (f, h, w) grid, f-major, each (L, 1, head_dim).

    The head dim splits into frame/height/width parts as Wan's (`rope.axis_dims`); adjacent
    channel pairs of each part turn by position·θ^(−2i/n). Unlike Wan's tables, the angles are
    fp32 (what the model was trained with). Cached: never mutate the result.
    """
    parts = []
    for positions, dim in zip(grid, axis_dims(head_dim)):
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim)
        parts.append(torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq))  # (n, dim/2)
    f, h, w = grid
    angles = torch.cat([
        parts[0][:, None, None].expand(f, h, w, -1),
        parts[1][None, :, None].expand(f, h, w, -1),
        parts[2][None, None, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, head_dim // 2).repeat_interleave(2, dim=-1)  # (L, d)
    sign = torch.tensor([-1.0, 1.0]).repeat(head_dim // 2)  # (d,): −s, +s, ...
    cos, sin = angles.cos(), angles.sin() * sign
    return cos.unsqueeze(1).to(device), sin.unsqueeze(1).to(device)


def rotate(x: Tensor, table: tuple[Tensor, Tensor]) -> Tensor:
    """Turn the adjacent channel pairs of x (B, L, H, d) in fp32: (a, b) -> (a c − b s, b c + a s)."""
    cos, sin = table
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (B, L, H, d): b, a, ...
    return (xf * cos + swapped * sin).to(x.dtype)


def layer_norm(x: Tensor, eps: float, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """LayerNorm computed in fp32 (with fp32 weights, if any), returned in x's dtype."""
    w, b = (None if p is None else p.float() for p in (weight, bias))
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """Non-affine LayerNorm, then x·(1 + scale) + shift, all in fp32, returned in x's dtype.

    x is (B, T, h·w, D) and the fp32 shift/scale (B, T, 1, D): one modulation per latent frame."""
    return (layer_norm(x.float(), eps) * (scale + 1) + shift).to(x.dtype)


def gated(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """x + gate·y per frame (x, y (B, T, h·w, D); gate fp32 (B, T, 1, D)), returned in x's dtype."""
    return (x + gate * y).to(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMSNorm of each head's d channels, statistics in fp32, scaled in the input's dtype."""

    def __init__(self, head_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)


class AffineLayerNorm(nn.Module):
    """The blocks' one affine norm (before cross-attention), computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.eps, self.weight, self.bias)


# ----------------------------------------------------------------------------- attention


class SelfAttention(nn.Module):
    """Self-attention over video tokens: fused [q | k | v], per-head q/k norms, fp32 3-D RoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = HeadRMSNorm(dim // num_heads, eps), HeadRMSNorm(dim // num_heads, eps)
        self.proj = Linear(dim, dim)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], cond_tokens: int, kernel: str, past: KeyValues | None,
    ) -> tuple[Tensor, KeyValues]:
        """x (B, L, D) -> (output (B, L, D), this call's pre-RoPE keys and values).

        The first ``cond_tokens`` queries (conditioning) attend only to the first ``cond_tokens``
        keys. ``past`` holds cached conditioning keys/values that precede x in time; the RoPE
        table then covers them and x, and x's queries take its last rows.
        """
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(2)  # 3 x (B, L, H, d)
        q, k = self.q_norm(q), self.k_norm(k)
        own = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)  # (B, Lp + L, H, d)
        cos, sin = rope
        q = rotate(q, (cos[-q.shape[1]:], sin[-q.shape[1]:]))
        k = rotate(k, rope)
        if cond_tokens:
            c = cond_tokens
            out = torch.cat([attend(q[:, :c], k[:, :c], v[:, :c], kernel),
                             attend(q[:, c:], k, v, kernel)], dim=1)  # (B, L, H, d)
        else:
            out = attend(q, k, v, kernel)
        return self.proj(out.flatten(2)), own


class CrossAttention(nn.Module):
    """Attention from video tokens to the projected text, per-head q/k norms, [K | V] fused."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear, self.kv_linear, self.proj = Linear(dim, dim), Linear(dim, 2 * dim), Linear(dim, dim)
        self.q_norm, self.k_norm = HeadRMSNorm(dim // num_heads, eps), HeadRMSNorm(dim // num_heads, eps)

    def forward(self, x: Tensor, text: Tensor, text_lens: Tensor | None, kernel: str) -> Tensor:
        """x (B, L, D), text (B, S, D) -> (B, L, D); with ``text_lens`` (B,) each sample attends
        only to its first text_lens[b] slots, else to all S."""
        q = self.q_norm(self.q_linear(x).unflatten(-1, (self.num_heads, -1)))  # (B, L, H, d)
        k, v = self.kv_linear(text).unflatten(-1, (2, self.num_heads, -1)).unbind(2)  # (B, S, H, d)
        k = self.k_norm(k)
        if text_lens is None:
            out = attention(q, k, v, kernel)
        else:
            out = torch.cat([attention(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], kernel)
                             for b, n in enumerate(text_lens.tolist())])
        return self.proj(out.flatten(2))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) ⊙ w3 x), no biases (Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w3 = Linear(dim, hidden, bias=False), Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# ----------------------------------------------------------------------------- block and head


class Block(nn.Module):
    """Modulated self-attention, ungated cross-attention, modulated SwiGLU (reference order)."""

    def __init__(self, cfg: LongCatConfig):
        super().__init__()
        self.eps = cfg.eps
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(cfg.adaln_tembed_dim, 6 * cfg.hidden_size))
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.eps)
        self.pre_crs_attn_norm = AffineLayerNorm(cfg.hidden_size, cfg.eps)
        self.cross_attn = CrossAttention(cfg.hidden_size, cfg.num_heads, cfg.eps)
        self.ffn = SwiGLU(cfg.hidden_size, cfg.ffn_dim)

    def forward(
        self, x: Tensor, t_emb: Tensor, rope: tuple[Tensor, Tensor], cond_tokens: int,
        text: Tensor | None, text_lens: Tensor | None, kernel: str, past: KeyValues | None = None,
    ) -> tuple[Tensor, KeyValues]:
        """x (B, N, D), t_emb (B, T, A) fp32 -> (x, pre-RoPE keys/values). ``text`` None skips the
        cross-attention (the conditioning-only pass); the first ``cond_tokens`` tokens get none."""
        B, N, D = x.shape
        T = t_emb.shape[1]
        mod = self.adaLN_modulation(t_emb).unsqueeze(2).chunk(6, dim=-1)  # 6 x (B, T, 1, D) fp32
        framed = x.view(B, T, -1, D)  # (B, T, h*w, D)
        y, kv = self.attn(modulate(framed, mod[0], mod[1], self.eps).view(B, N, D), rope, cond_tokens, kernel, past)
        x = gated(framed, y.view(B, T, -1, D), mod[2]).view(B, N, D)
        if text is not None:
            c = cond_tokens
            y = self.cross_attn(self.pre_crs_attn_norm(x[:, c:]), text, text_lens, dense(kernel))
            x = torch.cat([x[:, :c], x[:, c:] + y], dim=1)
        framed = x.view(B, T, -1, D)
        y = self.ffn(modulate(framed, mod[3], mod[4], self.eps).view(B, N, D))
        return gated(framed, y.view(B, T, -1, D), mod[5]).view(B, N, D), kv


class FinalLayer(nn.Module):
    """Per-frame modulated norm, then the fp32 projection to patch voxels."""

    def __init__(self, cfg: LongCatConfig):
        super().__init__()
        self.eps = cfg.eps
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(cfg.adaln_tembed_dim, 2 * cfg.hidden_size))
        self.linear = Linear(cfg.hidden_size, cfg.patch_volume * cfg.out_channels)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        """x (B, N, D), t_emb (B, T, A) -> (B, N, patch_volume * C_out) fp32."""
        B, N, D = x.shape
        shift, scale = self.adaLN_modulation(t_emb).unsqueeze(2).chunk(2, dim=-1)  # (B, T, 1, D) fp32
        x = modulate(x.view(B, t_emb.shape[1], -1, D), shift, scale, self.eps).view(B, N, D)
        return self.linear(x.float())


# ----------------------------------------------------------------------------- model


@attrs.frozen(eq=False)
class ConditionCache:
    """Every block's pre-RoPE self-attention keys/values of the clean conditioning frames.

    Made once per video by ``LongCatDiT.cache_conditioning``; valid for every step and both
    guidance branches (the conditioning frames see neither the timestep nor the text).
    """

    kv: tuple[KeyValues, ...]  # one (k, v) per block, each (B, frames·h·w, H, d)
    frames: int  # conditioning latent frames: RoPE frames 0 .. frames − 1
    grid_hw: tuple[int, int]  # tokens along height and width

    @property
    def batch(self) -> int:
        """Samples the cache was made for (1 serves any batch)."""
        return self.kv[0][0].shape[0]


@attrs.frozen(eq=False)
class StackInputs:
    """What the blocks of one forward share, computed once before them (``embed_inputs``): a step
    cache runs them in parts (``models.longcat_cache``)."""

    tokens: Tensor  # (B, N, D) the patch embeddings
    t_emb: Tensor  # (B, T, A) fp32 per-frame time embedding
    text: Tensor | None
    text_lens: Tensor | None
    rope: tuple[Tensor, Tensor]
    past: tuple[KeyValues, ...] | None  # the conditioning cache's keys/values per block
    cond_tokens: int
    kernel: Any  # the self-attention's kernel name, or a SparseKernel
    grid: tuple[int, int, int]


class LongCatDiT(nn.Module):
    """LongCat-Video's DiT: predicts x0 − noise of latent video frames given time and text."""

    def __init__(self, cfg: LongCatConfig, attention_kernel: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.attention_kernel = check_kernel(attention_kernel)
        dim = cfg.hidden_size
        self.x_embedder = nn.ModuleDict({"proj": Conv3d(cfg.in_channels, dim, cfg.patch_size, stride=cfg.patch_size)})
        self.t_embedder = nn.ModuleDict({"mlp": nn.Sequential(
            Linear(cfg.frequency_embedding_size, cfg.adaln_tembed_dim), nn.SiLU(),
            Linear(cfg.adaln_tembed_dim, cfg.adaln_tembed_dim))})
        self.y_embedder = nn.ModuleDict({"y_proj": nn.Sequential(
            Linear(cfg.caption_channels, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))})
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        self.gradient_checkpointing = False  # recompute each block in backward (training)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the block weights, which activations take."""
        return self.x_embedder["proj"].weight.dtype

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor, text_lens: Tensor | None = None,
        cond_frames: int = 0, cache: ConditionCache | None = None, sparse: Any = None,
    ) -> Tensor:
        """LongCat's prediction x0 − noise, (B, C_out, T, H, W) fp32 (conditioning frames included).

        Args:
            x: latents (B, C, T, H, W). Without ``cache`` its first ``cond_frames`` frames are the
                clean conditioning; with one, x holds only the frames to denoise, which follow the
                cached frames in time.
            t: timesteps in [0, 1000], (B,) or per latent frame (B, T); conditioning frames get 0.
            context: umT5 features (B, S ≤ 512, caption_channels).
            text_lens: (B,) real tokens of each prompt (the rest of its S slots is padding);
                None when all S slots are real.
            cond_frames: leading latent frames of x that are conditioning (video continuation);
                0 for text-to-video, and with a cache (which holds them).
            cache: ``cache_conditioning`` of the conditioning frames (the KV-cache path).
            sparse: ``longcat_bsa.BsaParams`` (computed by gathering) or ``SparseAttention`` (the
                settings and the implementation): self-attention block-sparse where the clip (its
                cached frames included) has more than one latent frame, as the authors' BSA is
                (the refinement stage); None: dense.
        """
        inputs = self.embed_inputs(x, t, context, text_lens, cond_frames, cache, sparse)
        return self.head_output(inputs, self.run_blocks(inputs, inputs.tokens, 0, len(self.blocks)))

    def embed_inputs(
        self, x: Tensor, t: Tensor, context: Tensor, text_lens: Tensor | None = None,
        cond_frames: int = 0, cache: ConditionCache | None = None, sparse: Any = None,
    ) -> StackInputs:
        """The forward up to the blocks (``forward``'s arguments): what every block reads."""
        t = checks.check_forward(self.cfg, x, t, context, text_lens, cond_frames, cache)
        _, _, T, H, W = x.shape
        grid = (T, H // self.cfg.patch_size[1], W // self.cfg.patch_size[2])
        t[:, :cond_frames] = 0  # t is the checks' own (B, T) copy
        t_emb = self.embed_time(t)
        text, text_lens = self.embed_text(context, text_lens)
        rope = rope_table((T + (cache.frames if cache else 0), *grid[1:]), self.cfg.head_dim, x.device)
        kernel = self._kernel(sparse, T + (cache.frames if cache else 0), grid[1:])
        return StackInputs(self.embed_patches(x), t_emb, text, text_lens, rope, self._expanded(cache, x.shape[0]),
                           cond_frames * grid[1] * grid[2], kernel, grid)

    def run_blocks(self, inputs: StackInputs, tokens: Tensor, start: int, stop: int) -> Tensor:
        """Blocks [start, stop) over ``tokens`` (B, N, D)."""
        past = inputs.past
        for i in range(start, stop):
            run = functools.partial(self.blocks[i], cond_tokens=inputs.cond_tokens, kernel=inputs.kernel,
                                    past=past[i] if past else None)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, _ = checkpoint(run, tokens, inputs.t_emb, inputs.rope, text=inputs.text,
                                       text_lens=inputs.text_lens, use_reentrant=False)
            else:
                tokens, _ = run(tokens, inputs.t_emb, inputs.rope, text=inputs.text, text_lens=inputs.text_lens)
        return tokens

    def head_output(self, inputs: StackInputs, tokens: Tensor) -> Tensor:
        """The final layer and unpatchify: x0 − noise, (B, C_out, T, H, W) fp32."""
        return self.unpatchify(self.final_layer(tokens, inputs.t_emb), inputs.grid)

    def _kernel(self, sparse: Any, frames: int, grid_hw: tuple[int, int]) -> str | SparseKernel:
        """The self-attention kernel: block-sparse with ``sparse`` over more than one frame (the
        authors apply BSA only then), else the DiT's own."""
        if sparse is None or frames <= 1:
            return self.attention_kernel
        return SparseKernel.of(sparse, self.attention_kernel, grid_hw)

    def cache_conditioning(self, latents: Tensor, sparse: Any = None) -> ConditionCache:
        """Run the clean conditioning frames (B, C, Tc, H, W) once, at t = 0 and without text, and
        keep every block's pre-RoPE keys/values: ``forward(..., cache=...)`` then reuses them.

        Holds 2 x depth x (B, Tc·h·w, hidden) tensors.
        """
        checks.check_latents(self.cfg, latents, "cond latents")
        B, _, T, H, W = latents.shape
        grid = (T, H // self.cfg.patch_size[1], W // self.cfg.patch_size[2])
        t_emb = self.embed_time(latents.new_zeros(B, T))
        rope = rope_table(grid, self.cfg.head_dim, latents.device)
        tokens, kv = self.embed_patches(latents), []
        kernel = self._kernel(sparse, T, grid[1:])
        for block in self.blocks:
            tokens, pair = block(tokens, t_emb, rope, 0, None, None, kernel)
            kv.append(pair)
        return ConditionCache(tuple(kv), T, grid[1:])

    def embed_patches(self, x: Tensor) -> Tensor:
        """Latents (B, C, T, H, W) -> tokens (B, T·h·w, D), frame-major, in the compute dtype."""
        tokens = self.x_embedder["proj"](x.to(self.compute_dtype))  # (B, D, T, h, w)
        return tokens.flatten(2).transpose(1, 2)

    def embed_time(self, t: Tensor) -> Tensor:
        """Per-frame timesteps (B, T) -> fp32 embedding (B, T, A), the timesteps first rounded to the
        compute dtype as the reference does (bf16: 979.6 -> 980)."""
        t = t.to(self.compute_dtype).float()
        feats = timestep_features(t.flatten(), self.cfg.frequency_embedding_size)  # (B*T, F)
        return self.t_embedder["mlp"](feats).unflatten(0, t.shape)

    def embed_text(self, context: Tensor, text_lens: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Projected text (B, S', D) and the lengths cross-attention must honour (None: all S').

        Zero-pad mode: padded slots become zero vectors after the projection and the text is padded
        with zero slots to ``text_len``, every slot attended. Otherwise only real tokens count.
        """
        text = self.y_embedder["y_proj"](context.to(self.compute_dtype))  # (B, S, D)
        if not self.cfg.text_tokens_zero_pad:
            return text, text_lens
        if text_lens is not None:
            real = torch.arange(text.shape[1], device=text.device) < text_lens.to(text.device)[:, None]
            text = text * real[..., None].to(text.dtype)
        return F.pad(text, (0, 0, 0, self.cfg.text_len - text.shape[1])), None

    def unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """(B, L, pt*ph*pw*C) with C fastest -> (B, C, f*pt, h*ph, w*pw)."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        out = out.view(out.shape[0], f, h, w, pt, ph, pw, -1)  # (B, f, h, w, pt, ph, pw, C)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, f, pt, h, ph, w, pw)
        return out.reshape(out.shape[0], out.shape[1], f * pt, h * ph, w * pw)

    @staticmethod
    def _expanded(cache: ConditionCache | None, batch: int) -> tuple[KeyValues, ...] | None:
        """The cache's keys/values for a batch of ``batch`` (a cache of one sample serves all)."""
        if cache is None:
            return None
        if cache.batch == batch:
            return cache.kv
        return tuple((k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])) for k, v in cache.kv)
