"""The Wan2.2-Animate DiT: the Wan2.1 I2V DiT driven by a pose video and a face video.

Latent frame 0 is the reference image; frames 1..F-1 are the clip. Two inputs join the I2V
model's x, y, CLIP and text:
- pose latents (B, 16, F-1, H, W), the VAE latents of the skeleton video, through
  ``pose_patch_embedding`` (a Conv3d like the patch embedding) and added to the patch tokens of
  latent frames 1..F-1;
- face crops (B, 3, T, 512, 512) in [-1, 1], one per pixel frame: the LIA motion encoder
  (``wanflow.models.animate_motion``) and the face encoder (``wanflow.models.animate_face``)
  turn them into 5 face tokens per latent frame (a zero frame for the reference), which the
  face blocks after DiT blocks 0, 5, 10, ... attend to frame by frame.
Everything else (blocks, time embedding, head) is ``WanDiT`` unchanged; there is no per-token
timestep. The unconditional branch of guidance sees face pixels of -1 everywhere
(``unconditional_face``), the text context of the negative prompt, and the same pose.

The face tokens depend only on the face video, so ``prepare_face`` computes them once per clip
and the forward takes them as they are (``PreparedFace``); face pixels given to the forward are
encoded on the spot, as the official code does at every step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from wanflow.errors import ModelInputError
from wanflow.models.animate_config import FACE_EVERY, AnimateConfig
from wanflow.models.animate_face import FaceAdapter, FaceEncoder, FaceInjection
from wanflow.models.animate_motion import MotionEncoder
from wanflow.models.dit import PreparedContext, StackInputs, WanDiT
from wanflow.models.dit_extras import DitExtras
from wanflow.models.full_training import ANIMATE_PARTS
from wanflow.models.precision import Conv3d

#: Face crops the motion encoder takes per call (the official batch; memory, not results).
MOTION_BATCH = 8

#: The parameter kept in fp32 whatever the compute dtype: the direction basis is orthonormalised
#: by a QR decomposition, which bf16 weights would bend.
DIRECTION_KEY = "motion_encoder.dec.direction.weight"


class PreparedFace(NamedTuple):
    """Face tokens of a face video, computed once (``AnimateDiT.prepare_face``) for every step."""

    tokens: Tensor  # (B, F, 5, D): a zero frame for the reference, then one per latent frame

    def expand(self, rows: int) -> PreparedFace:
        return self if self.tokens.shape[0] == rows else PreparedFace(self.tokens.expand(rows, -1, -1, -1))

    def to(self, device: Any) -> PreparedFace:
        return PreparedFace(self.tokens.to(device))


def unconditional_face(face_pixels: Tensor) -> Tensor:
    """The face input of guidance's unconditional branch: pixels of -1 (black) everywhere."""
    return torch.full_like(face_pixels, -1.0)


def face_frames(pixel_frames: int) -> int:
    """Latent frames a face video of ``pixel_frames`` covers: two stride-2 causal convs, then the
    reference's zero frame (77 -> 39 -> 20 -> 21)."""
    half = -(-pixel_frames // 2)  # ceil(T / 2)
    return -(-half // 2) + 1


@attrs.frozen
class AnimateExtras(DitExtras):
    """``DitExtras`` plus Animate's per-forward inputs (both required by an Animate DiT)."""

    #: (B, 16, F-1, H, W) pose-video latents, for latent frames 1..F-1 of x.
    pose: Any = None
    #: Face crops (B, 3, T, size, size) in [-1, 1], or their ``PreparedFace``.
    face: Any = None

    def base(self) -> DitExtras:
        """The fields every Wan DiT reads, as a plain ``DitExtras``."""
        return DitExtras(**{f.name: getattr(self, f.name) for f in attrs.fields(DitExtras)})

    def frames(self, window: slice) -> AnimateExtras:
        """The whole clip only: the reference frame, the pose and the face tokens are aligned
        with latent frame 0 of x, so a window must start there and cover the pose's frames."""
        covers = self.pose is None or window.stop is None or window.stop >= self.pose.shape[2] + 1
        if window.start not in (None, 0) or not covers:
            raise ModelInputError(
                f"Animate's pose and face inputs cover a whole clip; latent frames {window.start}..{window.stop} "
                "cannot be run apart. Run long videos as clips, not sliding windows."
            )
        return self

    def expand(self, rows: int) -> AnimateExtras:
        return attrs.evolve(DitExtras.expand(self, rows), pose=_grown(self.pose, rows), face=_grown(self.face, rows))

    def to(self, device: Any) -> AnimateExtras:
        moved = DitExtras.to(self, device)
        return attrs.evolve(moved, pose=None if self.pose is None else self.pose.to(device),
                            face=None if self.face is None else self.face.to(device))

    @property
    def empty(self) -> bool:
        return self.base().empty and self.pose is None and self.face is None


def _grown(value: Any, rows: int) -> Any:
    """A batch-1 pose or face (pixels or prepared) expanded to ``rows``."""
    if value is None or isinstance(value, PreparedFace):
        return None if value is None else value.expand(rows)
    return value if value.shape[0] == rows else value.expand(rows, *value.shape[1:])


class AnimateDiT(WanDiT):
    """The Animate DiT: ``WanDiT`` (I2V) plus ``pose_patch_embedding``, ``motion_encoder``,
    ``face_encoder`` and ``face_adapter``, under the released key names."""

    #: The parts full fine-tuning trains, the rest frozen: the Animate parts, which DiffSynth's
    #: full training of Animate trains (its ``animate_adapter``) and nothing else.
    full_trained_prefixes = ANIMATE_PARTS

    def __init__(self, config: AnimateConfig, attention_kernel: str = "sdpa"):
        super().__init__(config.dit, attention_kernel)
        cfg = config.dit
        self.animate_config = config
        self.pose_patch_embedding = Conv3d(cfg.out_dim, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.motion_encoder = MotionEncoder(config.motion)
        self.face_encoder = FaceEncoder(config.motion.direction_dim, config.face_hidden_dim, config.face_heads,
                                        cfg.dim)
        self.face_adapter = FaceAdapter(cfg.dim, cfg.num_heads, config.face_blocks)

    def set_compute_dtype(self, dtype: torch.dtype) -> AnimateDiT:
        """``WanDiT.set_compute_dtype``, the motion direction basis kept in fp32."""
        direction = self.motion_encoder.dec.direction.weight
        kept = direction.data
        super().set_compute_dtype(dtype)
        direction.data = kept.float()
        return self

    def prepare_face(self, face_pixels: Tensor, motion_batch: int = MOTION_BATCH) -> PreparedFace:
        """Face tokens (B, F, 5, D) of face crops (B, 3, T, size, size) in [-1, 1].

        The motion encoder sees ``motion_batch`` crops per call (memory only); the face encoder
        then runs over time and the reference's zero frame is put first."""
        self._check_face_pixels(face_pixels)
        batch, _, frames = face_pixels.shape[:3]
        crops = face_pixels.transpose(1, 2).flatten(0, 1)  # (B * T, 3, size, size)
        motion = torch.cat([self.motion_encoder(chunk) for chunk in crops.split(motion_batch)])  # (B * T, 512)
        tokens = self.face_encoder(motion.unflatten(0, (batch, frames)).to(self.compute_dtype))  # (B, T', 5, D)
        return PreparedFace(F.pad(tokens, (0, 0, 0, 0, 1, 0)))  # (B, T' + 1, 5, D)

    def embed_inputs(
        self, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
        clip_fea: Tensor | None = None, y: Tensor | None = None, extras: DitExtras | None = None,
    ) -> StackInputs:
        """``WanDiT.embed_inputs`` with the pose added to the tokens of frames 1..F-1 and the
        face blocks ready to join the block stack (``FaceInjection``)."""
        extras = self._checked_extras(extras, x.shape)
        inputs = super().embed_inputs(x, t, context, clip_fea, y, extras.base())
        batch, frame_tokens = inputs.tokens.shape[0], inputs.grid[1] * inputs.grid[2]
        pose = self.pose_patch_embedding(_grown(extras.pose, batch).to(self.compute_dtype))  # (B, D, F-1, h, w)
        pose = pose.flatten(2).transpose(1, 2)  # (B, (F-1) * h * w, D)
        tokens = torch.cat([inputs.tokens[:, :frame_tokens], inputs.tokens[:, frame_tokens:] + pose], dim=1)
        face = extras.face if isinstance(extras.face, PreparedFace) else self.prepare_face(extras.face)
        face_tokens = _grown(face, batch).tokens.to(tokens.dtype)  # (B, F, 5, D)
        injection = FaceInjection(self.face_adapter.fuser_blocks, FACE_EVERY, face_tokens, self.attention_kernel)
        return inputs._replace(tokens=tokens, hints=injection)

    # ------------------------------------------------------------------ checks

    def _checked_extras(self, extras: DitExtras | None, x_shape: torch.Size) -> AnimateExtras:
        """The pose and face must be given and fit x (B, C, F, H, W) before any work."""
        if not isinstance(extras, AnimateExtras) or extras.pose is None or extras.face is None:
            raise ModelInputError(
                "extras: an Animate DiT needs AnimateExtras(pose=..., face=...) in every call: the pose "
                "latents and the face crops (or their prepare_face tokens); face crops of -1 "
                "(unconditional_face) for guidance's unconditional branch."
            )
        batch, _, frames, height, width = x_shape
        want = (self.cfg.out_dim, frames - 1, height, width)
        pose = extras.pose
        if frames < 2 or pose.ndim != 5 or pose.shape[0] not in (1, batch) or tuple(pose.shape[1:]) != want:
            raise ModelInputError(
                f"pose: shape {tuple(pose.shape)}; expected ({batch}, {', '.join(map(str, want))}): latents of "
                "the pose video for every latent frame of x but the first (the reference image's)."
            )
        self._check_face(extras.face, batch, frames)
        return extras

    def _check_face(self, face: Tensor | PreparedFace, batch: int, frames: int) -> None:
        """Face crops or prepared tokens covering x's ``frames`` latent frames, batch 1 or x's."""
        if isinstance(face, PreparedFace):
            want = (frames, self.animate_config.face_tokens, self.cfg.dim)
            if face.tokens.ndim != 4 or face.tokens.shape[0] not in (1, batch) or tuple(face.tokens.shape[1:]) != want:
                raise ModelInputError(
                    f"face: prepared tokens of shape {tuple(face.tokens.shape)}; x needs ({batch}, "
                    f"{', '.join(map(str, want))}) (prepare_face of this clip's face video)."
                )
            return
        self._check_face_pixels(face)
        if face.shape[0] not in (1, batch) or face_frames(face.shape[2]) != frames:
            need = 4 * (frames - 2) + 1
            raise ModelInputError(
                f"face: {face.shape[2]} face frames (batch {face.shape[0]}) cover {face_frames(face.shape[2])} "
                f"latent frames; x has {frames} (batch {batch}): give the clip's {need} face crops."
            )

    def _check_face_pixels(self, face: Tensor) -> None:
        """Face crops are (B, 3, T, size, size)."""
        size = self.animate_config.motion.size
        crops = isinstance(face, Tensor) and face.ndim == 5 and face.shape[1] == 3
        if not crops or tuple(face.shape[3:]) != (size, size):
            shape = tuple(face.shape) if isinstance(face, Tensor) else type(face).__name__
            raise ModelInputError(
                f"face: {shape}; expected RGB face crops (B, 3, T, {size}, {size}) in [-1, 1], or PreparedFace."
            )
