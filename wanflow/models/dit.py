"""The Wan diffusion transformer (Wan2.1/Wan2.2 T2V, I2V, FLF2V, TI2V), top to bottom.

Latents are cut into (1, 2, 2) patches; each block applies time-modulated self-attention with
3-axis RoPE, cross-attention to the umT5 text tokens (and, for Wan2.1 I2V/FLF2V, decoupled
attention to CLIP image tokens), and a time-modulated feed-forward. Module names equal the
official checkpoint keys, so official weights load with no conversion.

The derivative releases add parts the config names (``wanflow.models.vace``,
``wanflow.models.fun_parts``): VACE blocks whose hints join the block stack, ``ref_conv``
reference tokens, a camera adapter; their per-forward inputs, and the speed-control modulation
offset, arrive in one ``DitExtras``. Without extras the forward is the base model's.

Precision: the time embedding, the modulation vectors and the head stay in fp32 whatever the
compute dtype (see ``keeps_fp32``); norms compute their statistics in fp32. On a CPU without
bf16/fp16 kernels the projections and the patch embedding multiply in fp32 over the stored
reduced-precision values (``wanflow.models.precision``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wanflow.errors import ModelInputError
from wanflow.models import dit_checks as checks
from wanflow.models import fun_parts, vace
from wanflow.models.attention import attention, check_kernel
from wanflow.models.dit_config import (
    CLIP_DIM,
    CLIP_TOKENS,
    REF_CONV_IN_DIM,
    DitConfig,
    keeps_fp32,
)
from wanflow.models.dit_extras import DitExtras
from wanflow.models.precision import Conv3d, Linear
from wanflow.models.rope import apply_rope, rope_table

#: What a forward without extras reads: nothing.
NO_EXTRAS = DitExtras()

#: Cross-attention keys and values of one block: (k, v) or (k, v, k_img, v_img), each (B, Lc, H, d).
KeyValues = tuple[Tensor, ...]

# ----------------------------------------------------------------------------- helpers


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Timestep features [cos, sin] of t * 10000^(-i/(dim/2)), computed in float64: (N, dim) fp32."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)  # (N, half)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift computed in fp32, rounded once to x's dtype."""
    return _addcmul_in(x, shift, x, 1 + scale)


def gated_residual(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    """x + y * gate with the fp32 gate, rounded once to x's dtype."""
    return _addcmul_in(x, x, y, gate)


def _addcmul_in(like: Tensor, base: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``base + a * b`` in the operands' common dtype (fp32 here), returned in ``like``'s dtype.

    Written straight into a tensor of that dtype where autograd does not need the op's own
    result: a GPU kernel then rounds as it stores, one pass over the (B, L, D) activations
    instead of an fp32 result and a cast (three, and an fp32 temporary twice their size). The
    bits are the same either way; training takes the plain path (``out=`` has no backward).
    """
    differentiable = torch.is_grad_enabled() and (base.requires_grad or a.requires_grad or b.requires_grad)
    if differentiable or torch.broadcast_shapes(base.shape, a.shape, b.shape) != like.shape:
        return torch.addcmul(base, a, b).to(like.dtype)
    return torch.addcmul(base, a, b, out=torch.empty_like(like))


def modulated(e0: Tensor, modulation: Tensor | None) -> Tensor:
    """The blocks' modulation e0 (B, 1|L, 6, D) plus a speed-control offset (B, 6, D), in fp32;
    the head's time embedding takes no offset."""
    return e0 if modulation is None else e0 + modulation.to(e0.dtype).unsqueeze(1)


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """Non-affine LayerNorm (PyTorch accumulates the statistics in fp32 for bf16/fp16 inputs)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class RMSNorm(nn.Module):
    """RMSNorm over the whole width (all heads together, as Wan normalises q and k)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


# ----------------------------------------------------------------------------- attention


class SelfAttention(nn.Module):
    """Multi-head self-attention over all video tokens, q/k RMS-normalised then rotated (RoPE)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], kernel: str) -> Tensor:
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), rope)  # (B, L, H, d)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), rope)  # (B, L, H, d)
        v = self.v(x).unflatten(-1, heads)  # (B, L, H, d)
        return self.o(attention(q, k, v, kernel).flatten(2))  # (B, L, D)


class CrossAttention(nn.Module):
    """Attention from video tokens to [image tokens, text tokens]; image part decoupled (k_img)."""

    def __init__(self, dim: int, num_heads: int, eps: float, image: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        if image:
            self.k_img, self.v_img = Linear(dim, dim), Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def project(self, context: Tensor, image_len: int) -> KeyValues:
        """Keys/values of [image, text] context tokens: (k, v) or (k, v, k_img, v_img), (B, Lc, H, d)."""
        heads = (self.num_heads, -1)
        image, text = context[:, :image_len], context[:, image_len:]
        kv = (self.norm_k(self.k(text)).unflatten(-1, heads), self.v(text).unflatten(-1, heads))
        if image_len:
            k_img = self.norm_k_img(self.k_img(image)).unflatten(-1, heads)  # (B, 257|514, H, d)
            kv += (k_img, self.v_img(image).unflatten(-1, heads))
        return kv

    def forward(self, x: Tensor, kv: KeyValues, kernel: str) -> Tensor:
        """Text attention plus (I2V/FLF2V) image attention, summed before the output projection."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # (B, L, H, d)
        out = attention(q, kv[0], kv[1], kernel)
        if len(kv) == 4:
            out = out + attention(q, kv[2], kv[3], kernel)
        return self.o(out.flatten(2))  # (B, L, D)


class StackInputs(NamedTuple):
    """Everything the forward computes before its first block."""

    tokens: Tensor  # (B, L, D) patch-embedded latents, compute dtype
    e: Tensor  # (B, 1|L, D) fp32
    e0: Tensor  # (B, 1|L, 6, D) fp32
    rope: tuple[Tensor, Tensor]
    per_block: tuple  # one context (or its prepared keys/values) per block
    grid: tuple[int, int, int]  # the video's tokens along frames, height, width
    prefix: int = 0  # reference tokens before the video's (Wan-Fun ref_conv), dropped before the head
    hints: vace.Hints | None = None  # the VACE branch of this forward, run as the blocks need it


class PreparedContext(NamedTuple):
    """Every block's cross-attention keys/values, computed once per prompt and reused every step."""

    kv: tuple[KeyValues, ...]  # one (k, v[, k_img, v_img]) per block, each (B, Lc, H, d)
    batch: int
    vace_kv: tuple[KeyValues, ...] = ()  # the same for each VACE block


# ----------------------------------------------------------------------------- block and head


class Block(nn.Module):
    """Modulated self-attention, plain cross-attention, modulated feed-forward (official order)."""

    def __init__(self, cfg: DitConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)  # the one affine norm: before cross-attn
        self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads, cfg.eps, image=cfg.clip)
        self.ffn = nn.Sequential(
            Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), Linear(cfg.ffn_dim, cfg.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)

    def forward(
        self, x: Tensor, e0: Tensor, context: Tensor | KeyValues, rope: tuple[Tensor, Tensor],
        image_len: int, kernel: str,
    ) -> Tensor:
        """x (B, L, D); e0 (B, 1|L, 6, D) fp32; context (B, image_len + 512, D) or its keys/values."""
        kv = context if isinstance(context, tuple) else self.cross_attn.project(context, image_len)
        mod = (self.modulation + e0).unbind(2)  # 6 x (B, 1|L, D) fp32
        y = self.self_attn(modulate(layer_norm(x, self.eps), mod[0], mod[1]), rope, kernel)
        x = gated_residual(x, y, mod[2])
        x = x + self.cross_attn(self.norm3(x), kv, kernel)
        y = self.ffn(modulate(layer_norm(x, self.eps), mod[3], mod[4]))
        return gated_residual(x, y, mod[5])


class Head(nn.Module):
    """Final modulated norm and projection to patch voxels, in fp32; modulated by e, not e0."""

    def __init__(self, cfg: DitConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = Linear(cfg.dim, cfg.patch_volume * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x (B, L, D), e (B, 1|L, D) fp32 -> (B, L, patch_volume * out_dim) fp32."""
        shift, scale = (self.modulation + e.unsqueeze(2)).unbind(2)  # (B, 1|L, D) each
        x = layer_norm(x.float(), self.eps)
        return self.head(torch.addcmul(shift, x, 1 + scale))


class ImageEmbedding(nn.Module):
    """CLIP tokens (B, 257|514, 1280) -> context tokens (B, 257|514, D); FLF2V adds emb_pos."""

    def __init__(self, cfg: DitConfig):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(CLIP_DIM), Linear(CLIP_DIM, CLIP_DIM), nn.GELU(),
            Linear(CLIP_DIM, cfg.dim), nn.LayerNorm(cfg.dim),
        )
        if cfg.model_type == "flf2v":
            self.emb_pos = nn.Parameter(torch.zeros(1, 2 * CLIP_TOKENS, CLIP_DIM))

    def forward(self, clip_fea: Tensor) -> Tensor:
        if hasattr(self, "emb_pos"):
            clip_fea = clip_fea + self.emb_pos
        return self.proj(clip_fea)


# ----------------------------------------------------------------------------- model


class WanDiT(nn.Module):
    """The Wan DiT: predicts the flow velocity of a latent video given time and conditioning."""

    def __init__(self, cfg: DitConfig, attention_kernel: str = "sdpa"):
        super().__init__()
        self.cfg = cfg
        self.attention_kernel = check_kernel(attention_kernel)
        self.gradient_checkpointing = False  # recompute each block in backward (training)
        self.patch_embedding = Conv3d(cfg.in_dim, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(
            Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), Linear(cfg.dim, cfg.dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.clip:
            self.img_emb = ImageEmbedding(cfg)
        if cfg.vace_layers:
            self.vace_patch_embedding = Conv3d(cfg.vace_in_dim, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
            self.vace_blocks = nn.ModuleList(vace.vace_block(Block, cfg, i == 0) for i in range(len(cfg.vace_layers)))
        if cfg.ref_conv:
            self.ref_conv = nn.Conv2d(REF_CONV_IN_DIM, cfg.dim, cfg.patch_size[1:], stride=cfg.patch_size[1:])
        if cfg.camera_in_dim:
            self.control_adapter = fun_parts.CameraAdapter(cfg.camera_in_dim, cfg.dim, cfg.patch_size[1:])

    def set_compute_dtype(self, dtype: torch.dtype) -> WanDiT:
        """Cast the weights to dtype, keeping the fp32 islands (``keeps_fp32``) in fp32 and weights
        stored in fp8 (``wanflow.models.fp8``) in fp8: they are dequantised in each forward."""
        for name, param in self.named_parameters():
            if param.dtype.itemsize == 1 and param.dtype.is_floating_point:  # fp8 storage
                continue
            target = torch.float32 if keeps_fp32(name) else dtype
            if param.dtype != target:
                param.data = param.data.to(target)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the block weights, which activations take."""
        return self.patch_embedding.weight.dtype

    def forward(
        self, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
        clip_fea: Tensor | None = None, y: Tensor | None = None, skip_blocks: Collection[int] = (),
        extras: DitExtras | None = None,
    ) -> Tensor:
        """Velocity (B, out_dim, F, H, W) fp32.

        Args:
            x: noisy latents (B, C, F, H, W); ``y`` (B, in_dim - C, F, H, W) is concatenated to them.
            t: timesteps in [0, 1000], (B,) or per token (B, L) with L = F*H*W / 4 (TI2V).
            context: umT5 features (B, <=512, 4096), zero-padded here to 512 and not masked;
                or ``prepare_context(...)`` of them (then clip_fea is already inside).
            clip_fea: CLIP tokens (B, 257, 1280); FLF2V (B, 514, 1280) or (2B, 257, 1280).
            skip_blocks: indices of blocks left out, their input passed on unchanged (the
                weakened pass of skip-layer guidance; a VACE hint is still added after a
                skipped block); empty for the full model.
            extras: the inputs of the derivative parts (``DitExtras``); required where the
                weights need one (a VACE DiT its context), refused where they have no use for it.
        """
        checks.check_skip_blocks(skip_blocks, len(self.blocks))
        inputs = self.embed_inputs(x, t, context, clip_fea, y, extras)
        tokens = self.run_blocks(inputs, inputs.tokens, 0, len(self.blocks), skip_blocks)
        return self.head_output(inputs, tokens)

    def embed_inputs(
        self, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
        clip_fea: Tensor | None = None, y: Tensor | None = None, extras: DitExtras | None = None,
    ) -> StackInputs:
        """The forward up to the blocks: checks, patch embedding (camera adapter and reference
        tokens included), time embedding, RoPE, context, and the VACE branch ready to run.

        Split out (with ``run_blocks`` and ``head_output``) so a step cache can run or skip the
        block stack around exactly this code."""
        x, clip_fea = self._check_inputs(x, t, context, clip_fea, y)
        extras = checks.check_extras(self.cfg, NO_EXTRAS if extras is None else extras, x.shape)
        frames, height, width = x.shape[2:]
        pt, ph, pw = self.cfg.patch_size
        grid = (frames // pt, height // ph, width // pw)
        tokens = self.patch_embedding(x.to(self.compute_dtype))  # (B, D, f, h, w)
        if extras.camera is not None:
            tokens = tokens + self.control_adapter(extras.camera).to(tokens.dtype)  # (B, D, f, h, w)
        tokens = tokens.flatten(2).transpose(1, 2).contiguous()  # (B, L, D)
        prefix = 0
        if extras.reference is not None:  # one frame of tokens before the video's: RoPE frame 0
            reference = fun_parts.reference_tokens(self.ref_conv, extras.reference).to(tokens.dtype)
            prefix, tokens = reference.shape[1], torch.cat([reference, tokens], dim=1)  # (B, h*w + L, D)
            t = fun_parts.padded_timesteps(t, prefix)
        e, e0 = self.embed_time(t)
        e0 = modulated(e0, extras.modulation)
        rope = rope_table((grid[0] + bool(prefix), *grid[1:]), self.cfg.head_dim, x.device, self.compute_dtype)
        if isinstance(context, PreparedContext):
            per_block, vace_contexts = context.kv, context.vace_kv
        else:
            embedded = self.embed_context(context, clip_fea)
            per_block, vace_contexts = (embedded,) * len(self.blocks), (embedded,) * len(self.cfg.vace_layers)
        hints = None
        if extras.vace_context is not None:
            c = vace.context_tokens(self.vace_patch_embedding, extras.vace_context.to(self.compute_dtype),
                                    tokens.shape[1])  # (B, L, D)
            hints = vace.Hints(self.vace_blocks, self.cfg.vace_layers,
                               vace.scales(extras.vace_scale, len(self.vace_blocks)),
                               c, tokens, e0, vace_contexts, rope, self._run_block)
        return StackInputs(tokens, e, e0, rope, tuple(per_block), grid, prefix, hints)

    def run_blocks(self, inputs: StackInputs, tokens: Tensor, start: int, stop: int,
                   skip_blocks: Collection[int] = ()) -> Tensor:
        """Blocks [start, stop) applied to ``tokens`` (B, L, D), leaving out ``skip_blocks``;
        each VACE hint joins after its block."""
        for index in range(start, stop):
            if index not in skip_blocks:
                tokens = self._run_block(self.blocks[index], tokens, inputs.e0, inputs.per_block[index],
                                         inputs.rope)
            if inputs.hints is not None:
                tokens = inputs.hints.after_block(index, tokens)
        return tokens

    def head_output(self, inputs: StackInputs, tokens: Tensor) -> Tensor:
        """The head and unpatchify, reference tokens dropped: velocity (B, out_dim, F, H, W) fp32."""
        return self.unpatchify(self.head(tokens, inputs.e)[:, inputs.prefix:], inputs.grid)

    def prepare_context(self, context: Tensor, clip_fea: Tensor | None = None) -> PreparedContext:
        """Embed the prompt (and images) and project every block's keys/values once, for all steps.

        Holds 2 (4 with CLIP) x num_layers x (B, image_len + 512, dim) tensors.
        """
        checks.check_context(context, context.shape[0], self.cfg)
        clip_fea = checks.shape_clip(clip_fea, context.shape[0], self.cfg)
        embedded = self.embed_context(context, clip_fea)
        kv = tuple(b.cross_attn.project(embedded, self.cfg.image_len) for b in self.blocks)
        vace_kv = tuple(b.cross_attn.project(embedded, self.cfg.image_len) for b in getattr(self, "vace_blocks", ()))
        return PreparedContext(kv, context.shape[0], vace_kv)

    def embed_time(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """fp32 time embedding e (B, 1|L, D) for the head and e0 (B, 1|L, 6, D) for the blocks."""
        t = t.reshape(t.shape[0], -1)  # (B, 1|L)
        feats = sinusoidal_embedding(t.flatten(), self.cfg.freq_dim).unflatten(0, t.shape)
        feats = feats.to(self.time_embedding[0].weight.dtype)  # fp32 (float64 in checks)
        e = self.time_embedding(feats)  # (B, 1|L, D)
        return e, self.time_projection(e).unflatten(-1, (6, self.cfg.dim))

    def embed_context(self, context: Tensor, clip_fea: Tensor | None) -> Tensor:
        """[image tokens, text tokens] in the compute dtype: (B, image_len + 512, D)."""
        pad = self.cfg.text_len - context.shape[1]
        text = F.pad(context.to(self.compute_dtype), (0, 0, 0, pad))  # (B, 512, 4096)
        text = self.text_embedding(text)
        if clip_fea is None:
            return text
        image = self.img_emb(clip_fea.to(self.img_emb.proj[1].weight.dtype)).to(text.dtype)
        return torch.cat([image, text], dim=1)

    def _run_block(
        self, block: Block, x: Tensor, e0: Tensor, context: Tensor | KeyValues, rope: tuple
    ) -> Tensor:
        """One block, recomputed in backward when gradient checkpointing is on."""
        run = functools.partial(
            block, image_len=self.cfg.image_len, kernel=self.attention_kernel
        )
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(run, x, e0, context, rope, use_reentrant=False)
        return run(x, e0, context, rope)

    def unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """(B, L, pt*ph*pw*C) with c fastest -> (B, C, f*pt, h*ph, w*pw)."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        out = out.view(out.shape[0], f, h, w, pt, ph, pw, -1)  # (B, f, h, w, pt, ph, pw, C)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, f, pt, h, ph, w, pw)
        return out.reshape(out.shape[0], out.shape[1], f * pt, h * ph, w * pw)

    def _check_inputs(
        self, x: Tensor, t: Tensor, context: Tensor | PreparedContext, clip_fea: Tensor | None,
        y: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Refuse malformed inputs before any work; returns x with y joined and clip_fea shaped."""
        cfg = self.cfg
        if x.ndim != 5:
            raise ModelInputError(f"x: expected latents (B, C, F, H, W), got shape {tuple(x.shape)}.")
        if y is not None:
            if y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
                raise ModelInputError(
                    f"y: shape {tuple(y.shape)} must match x {tuple(x.shape)} except in channels."
                )
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        checks.check_latent(x, cfg)
        tokens = math.prod(n // p for n, p in zip(x.shape[2:], cfg.patch_size))
        checks.check_timesteps(t, x.shape[0], tokens)
        if isinstance(context, PreparedContext):
            checks.check_prepared(context, clip_fea, x.shape[0])
            return x, None
        checks.check_context(context, x.shape[0], cfg)
        return x, checks.shape_clip(clip_fea, x.shape[0], cfg)
