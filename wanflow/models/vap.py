"""The Video-As-Prompt DiT: Wan2.1 I2V plus a reference stream joined by mixture-of-transformers.

A reference video (the "prompt") goes through its own copy of every part of the DiT that sees
tokens: ``mot.patch_embedding`` of its 36 channels (its VAE latent, then the I2V condition of
its first frame: mask and latent), ``mot.time_embedding`` of a clean timestep t = 1,
``mot.text_embedding`` of its caption and ``mot.img_emb`` of the CLIP tokens of its first frame.
At the main blocks of ``mot_layers`` (0, 4, ..., 36) each stream projects q, k, v with its own
weights and modulation, and ONE softmax attention runs over [main tokens; reference tokens], so
each stream sees the other; the output projection, cross-attention and feed-forward stay per
stream. The other blocks run the main stream only. The reference tokens sit at RoPE frames
-F..-1 (height and width as the main stream's), before the video in time. The head sees the
main stream only, modulated by the main timestep's embedding.

Where the references disagree this follows the authors' code: DiffSynth 2.1.12 modulates the
head by the reference stream's t = 1 embedding (``head_timestep="reference"`` reproduces it),
and its reference RoPE splits the head width as d - 2(d//3), d//3, d//3, which differs from the
authors' (and the main stream's) split when d = 4 (mod 6).

Both streams travel through the block stack as one (B, L + L_ref, D) tensor, so a step cache
that runs the stack in ranges (``run_blocks``) carries the reference stream with the video.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wanflow.errors import ModelInputError
from wanflow.models.attention import attention
from wanflow.models.dit import (
    Block,
    ImageEmbedding,
    KeyValues,
    PreparedContext,
    SelfAttention,
    StackInputs,
    WanDiT,
    gated_residual,
    layer_norm,
    modulate,
    sinusoidal_embedding,
)
from wanflow.models.dit_config import CLIP_DIM, CLIP_TOKENS
from wanflow.models.dit_extras import DitExtras
from wanflow.models.full_training import REFERENCE_STREAM
from wanflow.models.precision import Conv3d, Linear
from wanflow.models.rope import THETA, apply_rope, axis_angles, axis_dims
from wanflow.models.vap_config import VapConfig, keeps_fp32
from wanflow.models.vap_extras import PreparedReference, VapExtras, grown

#: The reference stream's timestep: the reference video is clean (the authors' ``timesteps * 0 + 1``).
REFERENCE_TIMESTEP = 1.0

#: Which time embedding modulates the head: the main timestep's (the authors' code), or the
#: reference stream's t = 1 (DiffSynth 2.1.12, which overwrites the main embedding).
HeadTimestep = Literal["main", "reference"]
HEAD_TIMESTEPS = ("main", "reference")

# ----------------------------------------------------------------------------- RoPE


@functools.lru_cache(maxsize=16)
def reference_rope_table(
    grid: tuple[int, int, int], head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(cos, signed sin) tables like ``rope.rope_table`` for reference tokens at frames -F..-1:
    the head width split as the main stream's (d - 4(d//6), 2(d//6), 2(d//6)); cached, never mutate."""
    f, h, w = grid
    dims = axis_dims(head_dim)
    inv_freq = THETA ** -(torch.arange(0, dims[0], 2, dtype=torch.float64) / dims[0])
    frames = torch.outer(torch.arange(-f, 0, dtype=torch.float64), inv_freq)  # (f, dims[0] / 2)
    rows, cols = axis_angles(h, dims[1]), axis_angles(w, dims[2])
    angles = torch.cat([
        frames[:, None, None, :].expand(f, h, w, -1),
        rows[None, :, None, :].expand(f, h, w, -1),
        cols[None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, head_dim // 2)  # (L, d/2)
    cos = angles.cos().repeat_interleave(2, dim=-1)  # (L, d)
    sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)  # (L, d): -s, +s, ...
    return cos.unsqueeze(1).to(device=device, dtype=dtype), sin.unsqueeze(1).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- the joint block


def project_qkv(attn: SelfAttention, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """A stream's q, k (RMS-normalised, rotated) and v, each (B, L, H, d), before any attention."""
    heads = (attn.num_heads, -1)
    q = apply_rope(attn.norm_q(attn.q(x)).unflatten(-1, heads), rope)
    k = apply_rope(attn.norm_k(attn.k(x)).unflatten(-1, heads), rope)
    return q, k, attn.v(x).unflatten(-1, heads)


def joint_self_attention(
    main: SelfAttention, ref: SelfAttention, x: Tensor, x_ref: Tensor,
    rope: tuple[Tensor, Tensor], rope_ref: tuple[Tensor, Tensor], kernel: str,
) -> tuple[Tensor, Tensor]:
    """One softmax attention over [main; reference] tokens, each projected and output by its own
    weights: x (B, L, D), x_ref (B, L_ref, D) -> the two attention outputs, same shapes."""
    q, k, v = project_qkv(main, x, rope)
    q_ref, k_ref, v_ref = project_qkv(ref, x_ref, rope_ref)
    out = attention(torch.cat([q, q_ref], 1), torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1), kernel)
    out, out_ref = out.flatten(2).split([x.shape[1], x_ref.shape[1]], dim=1)  # (B, L, D), (B, L_ref, D)
    return main.o(out), ref.o(out_ref)


def cross_and_ffn(block: Block, x: Tensor, kv: KeyValues, mod: tuple[Tensor, ...], kernel: str) -> Tensor:
    """The rest of a block after self-attention (as ``Block.forward``): cross-attention, then the
    modulated feed-forward."""
    x = x + block.cross_attn(block.norm3(x), kv, kernel)
    y = block.ffn(modulate(layer_norm(x, block.eps), mod[3], mod[4]))
    return gated_residual(x, y, mod[5])


def joint_block(
    main: Block, ref: Block, x: Tensor, x_ref: Tensor, e0: Tensor, e0_ref: Tensor, kv: KeyValues,
    kv_ref: KeyValues, rope: tuple[Tensor, Tensor], rope_ref: tuple[Tensor, Tensor], kernel: str,
) -> tuple[Tensor, Tensor]:
    """A main block and its reference-stream block run together; e0, e0_ref (B, 1, 6, D) fp32."""
    mod = (main.modulation + e0).unbind(2)  # 6 x (B, 1, D) fp32
    mod_ref = (ref.modulation + e0_ref).unbind(2)
    y, y_ref = joint_self_attention(
        main.self_attn, ref.self_attn, modulate(layer_norm(x, main.eps), mod[0], mod[1]),
        modulate(layer_norm(x_ref, ref.eps), mod_ref[0], mod_ref[1]), rope, rope_ref, kernel,
    )
    x, x_ref = gated_residual(x, y, mod[2]), gated_residual(x_ref, y_ref, mod_ref[2])
    return cross_and_ffn(main, x, kv, mod, kernel), cross_and_ffn(ref, x_ref, kv_ref, mod_ref, kernel)


# ----------------------------------------------------------------------------- the reference stream


class ReferenceStream(nn.Module):
    """The MoT expert's weights: embeddings like the main stream's and one block per joined layer."""

    def __init__(self, config: VapConfig):
        super().__init__()
        cfg = config.dit
        self.cfg = cfg
        self.patch_embedding = Conv3d(cfg.in_dim, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(cfg.dim, 6 * cfg.dim))
        self.img_emb = ImageEmbedding(cfg)
        #: Keyed by the main block each joins ("0", "4", ...), as the keys name them.
        self.blocks = nn.ModuleDict({str(i): Block(cfg) for i in config.mot_layers})

    def embed_time(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """fp32 embedding e (B, 1, D) of the clean timestep, and the blocks' e0 (B, 1, 6, D)."""
        t = torch.full((batch,), REFERENCE_TIMESTEP, device=device)
        feats = sinusoidal_embedding(t, self.cfg.freq_dim).to(self.time_embedding[0].weight.dtype)
        e = self.time_embedding(feats).unsqueeze(1)  # (B, 1, D)
        return e, self.time_projection(e).unflatten(-1, (6, self.cfg.dim))

    def embed_context(self, context: Tensor, clip_fea: Tensor) -> Tensor:
        """[CLIP tokens of the reference's first frame, its caption's tokens]: (B, 257 + 512, D)."""
        dtype = self.patch_embedding.weight.dtype
        text = self.text_embedding(F.pad(context.to(dtype), (0, 0, 0, self.cfg.text_len - context.shape[1])))
        image = self.img_emb(clip_fea.to(self.img_emb.proj[1].weight.dtype)).to(text.dtype)
        return torch.cat([image, text], dim=1)

    def project_context(self, context: Tensor, clip_fea: Tensor) -> PreparedReference:
        """Every joined block's cross-attention keys/values of the reference's caption and image."""
        embedded = self.embed_context(context, clip_fea)
        kv = tuple(b.cross_attn.project(embedded, self.cfg.image_len) for b in self.blocks.values())
        return PreparedReference(kv, context.shape[0])


class VapStack(NamedTuple):
    """What the block stack of one forward needs for the reference stream (``StackInputs.hints``)."""

    video: int  # the main stream's tokens, first in the joint tensor
    e: Tensor  # (B, 1, D) fp32 embedding of t = 1
    e0: Tensor  # (B, 1, 6, D) fp32
    rope: tuple[Tensor, Tensor]  # frames -F..-1
    kv: dict[int, KeyValues]  # per joined main block


# ----------------------------------------------------------------------------- model


class VapDiT(WanDiT):
    """``WanDiT`` (Wan2.1 I2V) plus the reference stream ``mot`` joining the blocks of ``mot_layers``."""

    #: A LoRA trains the main stream only, as DiffSynth's LoRA training of the release does
    #: (its adapter is on the Wan DiT; the reference stream is another module it leaves frozen).
    lora_excluded_prefixes = ("mot.",)
    #: Full fine-tuning trains the reference stream alone, the main stream frozen: the authors'
    #: MoT training (only ``*_mot_ref`` parameters require gradients) and DiffSynth's
    #: (``--trainable_models vap``, its reference stream).
    full_trained_prefixes = REFERENCE_STREAM
    #: Its export (steps/train_vap_export.py) merges the trained stream over the base's files.
    exports_trained_alone = True

    def __init__(self, config: VapConfig, attention_kernel: str = "sdpa", head_timestep: HeadTimestep = "main"):
        super().__init__(config.dit, attention_kernel)
        if head_timestep not in HEAD_TIMESTEPS:
            raise ValueError(f"head_timestep={head_timestep!r}; expected one of {HEAD_TIMESTEPS}")
        self.vap_config = config
        self.head_timestep = head_timestep
        self.mot = ReferenceStream(config)

    def set_compute_dtype(self, dtype: torch.dtype) -> VapDiT:
        """``WanDiT.set_compute_dtype``, the reference stream's time embedding kept in fp32 too."""
        super().set_compute_dtype(dtype)
        for name, param in self.named_parameters():
            if keeps_fp32(name) and param.dtype != torch.float32:
                param.data = param.data.float()
        return self

    def prepare_reference(self, vap_context: Tensor, vap_clip: Tensor) -> PreparedReference:
        """The reference stream's keys/values of its caption and image, once for every step."""
        self._check_reference_context(vap_context, vap_clip, vap_context.shape[0])
        return self.mot.project_context(vap_context, vap_clip)

    def embed_inputs(
        self, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
        clip_fea: Tensor | None = None, y: Tensor | None = None, extras: DitExtras | None = None,
    ) -> StackInputs:
        """``WanDiT.embed_inputs`` for the video, then the reference stream's tokens (after the
        video's), its t = 1 modulation, RoPE and context, ready for the block stack."""
        extras = self._checked_extras(extras, x)
        inputs = super().embed_inputs(x, t, context, clip_fea, y, extras.base())
        batch = inputs.tokens.shape[0]
        ref = self.mot.patch_embedding(grown(extras.vap_latents, batch).to(self.compute_dtype))  # (B, D, f, h, w)
        ref = ref.flatten(2).transpose(1, 2)  # (B, L_ref, D)
        e, e0 = self.mot.embed_time(batch, x.device)
        rope = reference_rope_table(inputs.grid, self.cfg.head_dim, x.device, self.compute_dtype)
        prepared = extras.vap_context
        if not isinstance(prepared, PreparedReference):
            prepared = self.mot.project_context(grown(prepared, batch), grown(extras.vap_clip, batch))
        kv = {int(i): _rows(pair, batch) for i, pair in zip(self.mot.blocks, prepared.kv)}
        stack = VapStack(inputs.tokens.shape[1], e, e0, rope, kv)
        return inputs._replace(tokens=torch.cat([inputs.tokens, ref], dim=1), hints=stack)

    def run_blocks(self, inputs: StackInputs, tokens: Tensor, start: int, stop: int,
                   skip_blocks: Any = ()) -> Tensor:
        """Blocks [start, stop) on (B, L + L_ref, D): joined blocks run both streams, the others
        the main stream only; a skipped block leaves both streams unchanged."""
        stack: VapStack = inputs.hints
        x, x_ref = tokens[:, :stack.video], tokens[:, stack.video:]
        for index in range(start, stop):
            if index in skip_blocks:
                continue
            if index in stack.kv:
                x, x_ref = self._run_joint(index, x, x_ref, inputs, stack)
            else:
                x = self._run_block(self.blocks[index], x, inputs.e0, inputs.per_block[index], inputs.rope)
        return torch.cat([x, x_ref], dim=1)

    def head_output(self, inputs: StackInputs, tokens: Tensor) -> Tensor:
        """The head on the video tokens, modulated by the main timestep (``head_timestep``)."""
        stack: VapStack = inputs.hints
        e = inputs.e if self.head_timestep == "main" else stack.e
        return super().head_output(inputs._replace(e=e), tokens[:, :stack.video])

    def _run_joint(self, index: int, x: Tensor, x_ref: Tensor, inputs: StackInputs,
                   stack: VapStack) -> tuple[Tensor, Tensor]:
        """One joined block, recomputed in backward when gradient checkpointing is on."""
        run = functools.partial(joint_block, self.blocks[index], self.mot.blocks[str(index)],
                                kernel=self.attention_kernel)
        context = inputs.per_block[index]  # the embedded context, or this block's prepared keys/values
        kv = context if isinstance(context, tuple) else self.blocks[index].cross_attn.project(context, self.cfg.image_len)
        args = (x, x_ref, inputs.e0, stack.e0, kv, stack.kv[index], inputs.rope, stack.rope)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False)
        return run(*args)

    # ------------------------------------------------------------------ checks

    def _checked_extras(self, extras: DitExtras | None, x: Tensor) -> VapExtras:
        """The reference video's latents, caption and image must be given and fit x before any work."""
        if not isinstance(extras, VapExtras) or extras.vap_latents is None or extras.vap_context is None:
            raise ModelInputError(
                "extras: a Video-As-Prompt DiT needs VapExtras(vap_latents=..., vap_context=..., vap_clip=...) in "
                "every call: the reference video's latents, its caption's umT5 features (the negative reference "
                "caption's in guidance's unconditional branch) and its first frame's CLIP tokens."
            )
        batch = x.shape[0]
        want = (self.cfg.in_dim, *x.shape[2:])
        latents = extras.vap_latents
        if (not isinstance(latents, Tensor) or latents.ndim != 5 or latents.shape[0] not in (1, batch)
                or tuple(latents.shape[1:]) != want):
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ModelInputError(
                f"vap_latents: {shape}; expected ({batch}, {', '.join(map(str, want))}): the reference video's "
                f"latent and its first frame's I2V condition, on the same latent grid as x (resample the "
                f"reference video to the clip's frame count and size)."
            )
        if isinstance(extras.vap_context, PreparedReference):
            if extras.vap_clip is not None or extras.vap_context.batch not in (1, batch):
                raise ModelInputError(
                    f"vap_context: prepared for batch {extras.vap_context.batch} (x has {batch}); with a prepared "
                    "context vap_clip must be None (its image is inside)."
                )
        else:
            self._check_reference_context(extras.vap_context, extras.vap_clip, batch)
        return extras

    def _check_reference_context(self, context: Any, clip_fea: Any, batch: int) -> None:
        """The caption's umT5 features (B, <=512, 4096) and the first frame's CLIP tokens (B, 257, 1280)."""
        cfg = self.cfg
        if (not isinstance(context, Tensor) or context.ndim != 3 or context.shape[0] not in (1, batch)
                or context.shape[1] > cfg.text_len or context.shape[2] != cfg.text_dim):
            shape = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ModelInputError(
                f"vap_context: {shape}; expected the reference caption's umT5 features ({batch}, <= {cfg.text_len}, "
                f"{cfg.text_dim}), or prepare_reference(...) of them."
            )
        if (not isinstance(clip_fea, Tensor) or clip_fea.ndim != 3 or clip_fea.shape[0] not in (1, batch)
                or tuple(clip_fea.shape[1:]) != (CLIP_TOKENS, CLIP_DIM)):
            shape = tuple(clip_fea.shape) if isinstance(clip_fea, Tensor) else clip_fea
            raise ModelInputError(
                f"vap_clip: {shape}; expected the CLIP tokens of the reference video's first frame "
                f"({batch}, {CLIP_TOKENS}, {CLIP_DIM})."
            )


def _rows(kv: KeyValues, rows: int) -> KeyValues:
    """Keys/values of batch 1 expanded to ``rows``."""
    return tuple(t if t.shape[0] == rows else t.expand(rows, *t.shape[1:]) for t in kv)
