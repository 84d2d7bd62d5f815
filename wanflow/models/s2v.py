"""The Wan2.2-S2V DiT: the Wan T2V DiT driven by speech, a reference image, pose and past motion.

One forward denoises one clip x (B, 16, F, H, W) of latent frames (without the reference). Its
token sequence is [video, reference, motion] (``wanflow.models.s2v_motion``):
- video tokens: ``patch_embedding(x) + cond_encoder(pose)``; no pose video means pose latents of
  zero, as the release passes them;
- reference tokens: the same ``patch_embedding`` on the reference image's latent (B, 16, 1, H, W);
- motion tokens: the frame-pack tokens of the previous clip's last 19 latents; none on a clip
  that drops them (the release's first clip);
- ``trainable_cond_mask`` adds a learned vector by type (0 video, 1 reference, 2 motion).
Self-attention is full over the whole sequence. The video tokens are modulated with the time
embedding of t, the reference and motion tokens with that of t = 0 (they are clean). After the
blocks in ``inject_layers`` the audio injectors (``wanflow.models.s2v_audio``) add each latent
frame's speech; the head reads the video tokens only, modulated by t.

Everything else (blocks, time embedding, text, head) is ``WanDiT`` under the same keys. The audio
tokens depend only on the clip's audio, so ``prepare_audio`` computes them once per clip (and
once for guidance's silent branch, ``silent_audio``); audio buckets given to the forward are
encoded on the spot, as the release does at every step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import torch
from torch import Tensor

from wanflow.errors import ModelInputError
from wanflow.models import dit_checks
from wanflow.models.dit import (
    NO_EXTRAS,
    Block,
    KeyValues,
    PreparedContext,
    StackInputs,
    WanDiT,
    gated_residual,
    layer_norm,
    modulate,
)
from wanflow.models.dit_extras import DitExtras
from wanflow.models.precision import Conv3d
from wanflow.models.s2v_audio import (
    AudioInjection,
    AudioInjector,
    CausalAudioEncoder,
    latent_frames,
    lead_in,
)
from wanflow.models.s2v_config import (
    AUDIO_FRAMES_PER_LATENT,
    MOTION_LATENT_FRAMES,
    MOTION_PIXEL_FRAMES,
    S2VConfig,
    keeps_fp32,
)
from wanflow.models.s2v_motion import FramePacker, s2v_rope_table

#: Token types of ``trainable_cond_mask``.
VIDEO_TOKENS, REFERENCE_TOKENS, MOTION_TOKENS = 0, 1, 2

#: Latent height and width must be multiples of this for motion tokens: the oldest bucket's patch.
MOTION_SIZE_MULTIPLE = 8


class PreparedAudio(NamedTuple):
    """A clip's audio tokens, computed once (``S2VDiT.prepare_audio``) for every step."""

    local: Tensor  # (B, F, 5, D): what each latent frame's video tokens attend to
    glob: Tensor  # (B, F, D): each latent frame's adaptive-norm condition

    def expand(self, rows: int) -> PreparedAudio:
        if self.local.shape[0] == rows:
            return self
        return PreparedAudio(self.local.expand(rows, -1, -1, -1), self.glob.expand(rows, -1, -1))

    def to(self, device: Any) -> PreparedAudio:
        return PreparedAudio(self.local.to(device), self.glob.to(device))


def silent_audio(audio: Tensor) -> Tensor:
    """The audio of guidance's unconditional branch: the buckets times 0, as the release makes it."""
    return audio * 0


@attrs.frozen
class S2VExtras(DitExtras):
    """``DitExtras`` plus S2V's per-forward inputs; ``audio`` and ``ref_latent`` are required."""

    #: Per-frame audio buckets (B, 25, 1024, 4F) of ``wanflow.audio``, or their ``PreparedAudio``.
    audio: Any = None
    #: (B, 16, 1, H, W) VAE latent of the reference image.
    ref_latent: Any = None
    #: (B, 16, F, H, W) pose-video latents; None = no pose video (zero latents).
    pose: Any = None
    #: (B, 16, M <= 19, H, W) latents of the previous clip's last frames, oldest first; None =
    #: no motion tokens (the release drops them on its first clip).
    motion: Any = None

    def base(self) -> DitExtras:
        """The fields every Wan DiT reads, as a plain ``DitExtras``."""
        return DitExtras(**{f.name: getattr(self, f.name) for f in attrs.fields(DitExtras)})

    def frames(self, window: slice) -> S2VExtras:
        """The whole clip only: the audio, pose and reference belong to all of its frames."""
        if window.start not in (None, 0) or window.stop is not None:
            raise ModelInputError(
                f"S2V's audio, pose and motion inputs cover a whole clip; latent frames {window.start}..{window.stop} "
                "cannot be run apart. Run long videos as clips, not sliding windows."
            )
        return self

    def expand(self, rows: int) -> S2VExtras:
        grown = {k: _grown(getattr(self, k), rows) for k in ("audio", "ref_latent", "pose", "motion")}
        return attrs.evolve(DitExtras.expand(self, rows), **grown)

    def to(self, device: Any) -> S2VExtras:
        moved = {k: None if getattr(self, k) is None else getattr(self, k).to(device)
                 for k in ("audio", "ref_latent", "pose", "motion")}
        return attrs.evolve(DitExtras.to(self, device), **moved)

    @property
    def empty(self) -> bool:
        return self.base().empty and all(getattr(self, k) is None for k in ("audio", "ref_latent", "pose", "motion"))


def _grown(value: Any, rows: int) -> Any:
    """A batch-1 tensor (or prepared audio) expanded to ``rows``."""
    if value is None or isinstance(value, PreparedAudio):
        return None if value is None else value.expand(rows)
    return value if value.shape[0] == rows else value.expand(rows, *value.shape[1:])


class SegmentTimes(NamedTuple):
    """The blocks' modulation for a sequence of two parts: the video tokens at t, the rest at 0."""

    e0: Tensor  # (B, 2, 6, D) fp32: [video, reference and motion]
    video: int  # how many tokens the first part holds


class S2VStack(NamedTuple):
    """What the block stack of one S2V forward needs beyond a Wan DiT's (``StackInputs.hints``)."""

    times: SegmentTimes
    audio: AudioInjection

    def after_block(self, layer: int, tokens: Tensor) -> Tensor:
        """The audio injector of block ``layer``, if it has one."""
        return self.audio.after_block(layer, tokens)


class S2VBlock(Block):
    """A Wan block whose first ``video`` tokens take the modulation of t and the others that of 0."""

    def forward(
        self, x: Tensor, e0: SegmentTimes, context: Tensor | KeyValues, rope: tuple[Tensor, Tensor],
        image_len: int, kernel: str,
    ) -> Tensor:
        kv = context if isinstance(context, tuple) else self.cross_attn.project(context, image_len)
        n = e0.video
        mod = (self.modulation.unsqueeze(1) + e0.e0).unbind(2)  # 6 x (B, 2, D) fp32

        def modulated(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
            h = layer_norm(h, self.eps)
            return torch.cat([modulate(h[:, :n], shift[:, :1], scale[:, :1]),
                              modulate(h[:, n:], shift[:, 1:], scale[:, 1:])], dim=1)

        def gated(h: Tensor, y: Tensor, gate: Tensor) -> Tensor:
            return torch.cat([gated_residual(h[:, :n], y[:, :n], gate[:, :1]),
                              gated_residual(h[:, n:], y[:, n:], gate[:, 1:])], dim=1)

        x = gated(x, self.self_attn(modulated(x, mod[0], mod[1]), rope, kernel), mod[2])
        x = x + self.cross_attn(self.norm3(x), kv, kernel)
        return gated(x, self.ffn(modulated(x, mod[3], mod[4])), mod[5])


class S2VDiT(WanDiT):
    """The S2V DiT: ``WanDiT`` (T2V) plus ``cond_encoder``, ``casual_audio_encoder``,
    ``audio_injector``, ``trainable_cond_mask`` and ``frame_packer``, under the released keys."""

    def __init__(self, config: S2VConfig, attention_kernel: str = "sdpa"):
        super().__init__(config.dit, attention_kernel)
        cfg = config.dit
        self.s2v_config = config
        self.blocks = torch.nn.ModuleList(S2VBlock(cfg) for _ in range(cfg.num_layers))
        self.cond_encoder = Conv3d(config.cond_dim, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.casual_audio_encoder = CausalAudioEncoder(config)
        self.audio_injector = AudioInjector(config)
        self.trainable_cond_mask = torch.nn.Embedding(3, cfg.dim)
        self.frame_packer = FramePacker(cfg.out_dim, cfg.dim)

    def set_compute_dtype(self, dtype: torch.dtype) -> S2VDiT:
        """``WanDiT.set_compute_dtype``, the audio encoder kept in fp32 (``s2v_config.keeps_fp32``)."""
        super().set_compute_dtype(dtype)
        for name, param in self.named_parameters():
            if keeps_fp32(name) and param.dtype != torch.float32:
                param.data = param.data.float()
        return self

    def prepare_audio(self, audio: Tensor) -> PreparedAudio:
        """Audio tokens of a clip's buckets (B, layers, C, 4F): (B, F, 5, D) and (B, F, D).

        The buckets get the motion frames' lead-in (73 copies of their first frame) and the
        tokens of that lead-in (the first 19) are dropped, as the release does."""
        self._check_audio(audio)
        local, glob = self.casual_audio_encoder(lead_in(audio, MOTION_PIXEL_FRAMES))
        dtype = self.compute_dtype
        return PreparedAudio(local[:, MOTION_LATENT_FRAMES:].to(dtype), glob[:, MOTION_LATENT_FRAMES:].to(dtype))

    def embed_inputs(
        self, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
        clip_fea: Tensor | None = None, y: Tensor | None = None, extras: DitExtras | None = None,
    ) -> StackInputs:
        """``WanDiT.embed_inputs`` on the video, then the pose, reference and motion tokens, the
        two-part time modulation and the audio injectors ready to join the block stack."""
        extras = self._checked_extras(extras, x, t, y)
        inputs = super().embed_inputs(x, t, context, clip_fea, y, NO_EXTRAS)
        batch, dtype = x.shape[0], self.compute_dtype
        pose = extras.pose if extras.pose is not None else x.new_zeros(
            (1, self.s2v_config.cond_dim, *x.shape[2:]))
        pose = self.cond_encoder(_grown(pose, batch).to(dtype)).flatten(2).transpose(1, 2)  # (B, L, D)
        parts = [inputs.tokens + pose, self._patch_tokens(_grown(extras.ref_latent, batch))]
        if extras.motion is not None:
            parts.append(self.frame_packer(_grown(extras.motion, batch).to(dtype)))  # (B, N, D)
        kinds = torch.cat([torch.full((p.shape[1],), i, device=x.device) for i, p in enumerate(parts)])
        tokens = torch.cat(parts, dim=1) + self.trainable_cond_mask(kinds).to(dtype)  # (B, L, D)
        rope = s2v_rope_table(*x.shape[2:], extras.motion is not None, self.cfg.head_dim, x.device, dtype)
        audio = extras.audio if isinstance(extras.audio, PreparedAudio) else self.prepare_audio(extras.audio)
        audio = audio.expand(batch)
        injection = AudioInjection(self.audio_injector, self.s2v_config.inject_layers, audio.local.to(dtype),
                                   audio.glob.to(dtype), inputs.grid[1] * inputs.grid[2], self.attention_kernel)
        rest = self.embed_time(torch.zeros_like(t))[1]  # (B, 1, 6, D): reference and motion are clean
        times = SegmentTimes(torch.cat([inputs.e0, rest], dim=1), inputs.tokens.shape[1])  # (B, 2, 6, D)
        return inputs._replace(tokens=tokens, rope=rope, hints=S2VStack(times, injection))

    def run_blocks(self, inputs: StackInputs, tokens: Tensor, start: int, stop: int,
                   skip_blocks: Any = ()) -> Tensor:
        """Blocks [start, stop) with the two-part modulation, each injector after its block (after
        a skipped block too, as a VACE hint is)."""
        stack: S2VStack = inputs.hints
        for index in range(start, stop):
            if index not in skip_blocks:
                tokens = self._run_block(self.blocks[index], tokens, stack.times, inputs.per_block[index],
                                         inputs.rope)
            tokens = stack.after_block(index, tokens)
        return tokens

    def head_output(self, inputs: StackInputs, tokens: Tensor) -> Tensor:
        """The head on the video tokens only: velocity (B, 16, F, H, W) fp32."""
        return super().head_output(inputs, tokens[:, :inputs.hints.times.video])

    def _patch_tokens(self, latent: Tensor) -> Tensor:
        """The reference latent (B, 16, 1, H, W) through ``patch_embedding``: (B, h * w, D)."""
        return self.patch_embedding(latent.to(self.compute_dtype)).flatten(2).transpose(1, 2)

    # ------------------------------------------------------------------ checks

    def _checked_extras(self, extras: DitExtras | None, x: Tensor, t: Tensor, y: Tensor | None) -> S2VExtras:
        """The audio and reference must be given, and every input must fit x, before any work."""
        if not isinstance(extras, S2VExtras) or extras.audio is None or extras.ref_latent is None:
            raise ModelInputError(
                "extras: an S2V DiT needs S2VExtras(audio=..., ref_latent=...) in every call: the clip's audio "
                "buckets (or their prepare_audio tokens; silent_audio for guidance's unconditional branch) and "
                "the reference image's latent; pose and motion latents where there are some."
            )
        if not extras.base().empty or y is not None:
            raise ModelInputError("extras: an S2V DiT reads no y, VACE, ref_conv, camera or modulation input.")
        if x.ndim != 5:
            raise ModelInputError(f"x: expected latents (B, C, F, H, W), got shape {tuple(x.shape)}.")
        dit_checks.check_latent(x, self.cfg)
        if t.ndim != 1:
            raise ModelInputError(f"t: shape {tuple(t.shape)}; an S2V DiT takes one timestep per sample, ({x.shape[0]},).")
        batch, channels, frames, height, width = x.shape
        self._check_latents("ref_latent", extras.ref_latent, batch, (channels, 1, height, width), "the reference image's")
        if extras.pose is not None:
            self._check_latents("pose", extras.pose, batch, (self.s2v_config.cond_dim, frames, height, width),
                                "the pose video's, one per latent frame of x,")
        if extras.motion is not None:
            self._check_motion(extras.motion, batch, channels, height, width)
        self._check_audio_frames(extras.audio, batch, frames)
        return extras

    @staticmethod
    def _check_latents(name: str, value: Tensor, batch: int, want: tuple[int, ...], what: str) -> None:
        fits = isinstance(value, Tensor) and value.ndim == 5 and value.shape[0] in (1, batch)
        if not fits or tuple(value.shape[1:]) != want:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ModelInputError(f"{name}: {shape}; expected ({batch}, {', '.join(map(str, want))}): {what} latents.")

    def _check_motion(self, motion: Tensor, batch: int, channels: int, height: int, width: int) -> None:
        """At most 19 latents of x's channels and size; a size the coarsest patches divide."""
        fits = isinstance(motion, Tensor) and motion.ndim == 5 and motion.shape[0] in (1, batch)
        if not fits or (motion.shape[1], *motion.shape[3:]) != (channels, height, width) or not (
                1 <= motion.shape[2] <= MOTION_LATENT_FRAMES):
            shape = tuple(motion.shape) if isinstance(motion, Tensor) else type(motion).__name__
            raise ModelInputError(
                f"motion: {shape}; expected ({batch}, {channels}, 1..{MOTION_LATENT_FRAMES}, {height}, {width}): the "
                f"latents of the previous clip's last {MOTION_PIXEL_FRAMES} frames, oldest first."
            )
        if height % MOTION_SIZE_MULTIPLE or width % MOTION_SIZE_MULTIPLE:
            raise ModelInputError(
                f"motion: latent size {height}x{width} must be a multiple of {MOTION_SIZE_MULTIPLE} for the motion "
                f"tokens' (4, 8, 8) patches: make the video's height and width multiples of 64 pixels."
            )

    def _check_audio(self, audio: Tensor) -> None:
        """Audio buckets are (B, layers, audio_dim, T)."""
        cfg = self.s2v_config
        want = (cfg.audio_layers, cfg.audio_dim)
        if not isinstance(audio, Tensor) or audio.ndim != 4 or tuple(audio.shape[1:3]) != want:
            shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ModelInputError(
                f"audio: {shape}; expected per-frame buckets (B, {cfg.audio_layers}, {cfg.audio_dim}, frames) "
                "(wanflow.audio.audio_buckets), or PreparedAudio."
            )

    def _check_audio_frames(self, audio: Tensor | PreparedAudio, batch: int, frames: int) -> None:
        """The audio must give exactly one token frame per latent frame of x."""
        if isinstance(audio, PreparedAudio):
            got, rows = audio.local.shape[1], audio.local.shape[0]
            want = (frames, self.s2v_config.audio_tokens + 1, self.cfg.dim)
            if audio.local.ndim != 4 or tuple(audio.local.shape[1:]) != want or audio.glob.shape[:2] != (rows, got):
                raise ModelInputError(
                    f"audio: prepared tokens {tuple(audio.local.shape)}; x needs ({batch}, {', '.join(map(str, want))}) "
                    "(prepare_audio of this clip's buckets)."
                )
        else:
            self._check_audio(audio)
            rows, got = audio.shape[0], latent_frames(audio.shape[3] + MOTION_PIXEL_FRAMES) - MOTION_LATENT_FRAMES
        if rows not in (1, batch) or got != frames:
            raise ModelInputError(
                f"audio: covers {got} latent frames (batch {rows}); x has {frames} (batch {batch}): give the clip's "
                f"{AUDIO_FRAMES_PER_LATENT * frames} per-frame buckets, 4 per latent frame."
            )
