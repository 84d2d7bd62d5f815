"""Wan2.2-Animate's sizes: the Wan2.1 I2V DiT plus the face and pose parts, read off the weights.

The release hard-codes the parts' widths (a 512-px LIA motion encoder, a 1024-wide face encoder
with 4 heads, one face block after every 5th DiT block); here they are fields, so tiny models
can be built, and ``from_shapes`` recovers every one of them from a checkpoint's shapes (the
released repository's config.json names none of them). Torch-free, like ``dit_config``, so
planning can size a checkpoint from its header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from wanflow.errors import ModelLoadError
from wanflow.models import dit_config
from wanflow.models.dit_config import WAN21_I2V_14B_480P, DitConfig

#: A face block follows DiT block i when i % FACE_EVERY == 0 (blocks 0, 5, ..., 35 of 40).
FACE_EVERY = 5

#: LIA's appearance-encoder width at each resolution (the released table; 512 px uses 512 .. 4).
LIA_WIDTHS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}

#: The smallest face crop: its ResBlocks halve the size down to 4 px, then a 4x4 conv.
MIN_FACE_SIZE = 8


def lia_widths(size: int) -> tuple[int, ...]:
    """The released widths for a ``size``-px encoder, from ``size`` px down to 4 px."""
    return tuple(LIA_WIDTHS[size >> i] for i in range(int(math.log2(size)) - 1))


@attrs.frozen
class MotionEncoderConfig:
    """The LIA motion encoder: a face crop -> ``motion_dim`` coefficients of learned directions."""

    size: int = 512  # face crops are size x size pixels
    #: Conv widths at size, size/2, ..., 4 px (one more than the ResBlocks); None = LIA's table.
    widths: tuple[int, ...] = attrs.field(
        default=attrs.Factory(lambda self: lia_widths(self.size), takes_self=True), converter=tuple
    )
    style_dim: int = 512  # the 4x4 conv's output and the fc layers' width
    motion_dim: int = 20  # coefficients alpha, one per direction
    direction_dim: int = 512  # length of each direction = width of the motion vector
    fc_layers: int = 5  # EqualLinear layers after the convs (no activations between them)

    @property
    def res_blocks(self) -> int:
        """Stride-2 ResBlocks (7 at 512 px): ``convs.1`` .. ``convs.<res_blocks>``."""
        return len(self.widths) - 1

    @property
    def final_conv(self) -> int:
        """Index of the 4x4 conv in ``convs`` (8 at 512 px: log2(size) - 1)."""
        return len(self.widths)


@attrs.frozen
class AnimateConfig:
    """The Animate DiT: an I2V DiT (``dit``) with a pose embedding, face encoders and face blocks."""

    dit: DitConfig
    motion: MotionEncoderConfig = MotionEncoderConfig()
    face_hidden_dim: int = 1024  # width of each face-encoder head
    face_heads: int = 4  # face tokens per latent frame (plus one learned padding token)

    @property
    def face_blocks(self) -> int:
        """Face blocks: one after each DiT block whose index is a multiple of FACE_EVERY."""
        return self.dit.num_layers // FACE_EVERY

    @property
    def face_tokens(self) -> int:
        """Tokens each latent frame's face gives the face blocks (5 in the release)."""
        return self.face_heads + 1


def check(config: AnimateConfig, source: str) -> AnimateConfig:
    """Refuse sizes no Animate DiT can have, naming the file; returns the config."""
    problems = _problems(config)
    if problems:
        raise ModelLoadError(f"{source}: invalid Wan2.2 Animate config: " + "; ".join(problems) + ".")
    return config


def _problems(c: AnimateConfig) -> list[str]:
    """Every inconsistency of an Animate config, as short phrases."""
    out = []
    d, m = c.dit, c.motion
    if d.model_type != "i2v" or d.in_dim != 2 * d.out_dim + 4:
        out.append(f"the DiT must be an I2V DiT taking {2 * d.out_dim + 4} channels (x, mask, image latents), "
                   f"not a {d.model_type} DiT taking {d.in_dim}")
    if d.num_layers % FACE_EVERY:
        out.append(f"num_layers = {d.num_layers} must be a multiple of {FACE_EVERY} (a face block follows "
                   f"every {FACE_EVERY}th block)")
    if m.size < MIN_FACE_SIZE or m.size & (m.size - 1):
        out.append(f"motion encoder size = {m.size} must be a power of two of at least {MIN_FACE_SIZE}")
    elif len(m.widths) != int(math.log2(m.size)) - 1:
        out.append(f"motion encoder widths {list(m.widths)} must give one width per resolution "
                   f"{m.size} .. 4 px ({int(math.log2(m.size)) - 1})")
    if m.direction_dim < m.motion_dim:
        out.append(f"direction_dim = {m.direction_dim} must be at least motion_dim = {m.motion_dim} "
                   "(the directions are orthonormalised)")
    sizes = (*m.widths, m.style_dim, m.motion_dim, m.fc_layers, c.face_hidden_dim, c.face_heads)
    if any(not isinstance(v, int) or v <= 0 for v in sizes):
        out.append("every width and count must be a positive integer")
    return out


#: The released Wan2.2-Animate-14B: Wan2.1 I2V-14B with the parts at their released sizes.
WAN22_ANIMATE_14B = AnimateConfig(WAN21_I2V_14B_480P)


# ----------------------------------------------------------------------------- from a checkpoint

#: The DiT's patch (frames, height, width), as every Wan DiT's.
PATCH = (1, 2, 2)

#: Official keys whose shapes give the parts' sizes.
POSE_KEY = "pose_patch_embedding.weight"
FACE_Q_NORM_KEY = "face_adapter.fuser_blocks.0.q_norm.weight"
FACE_CONV1_KEY = "face_encoder.conv1_local.conv.weight"
FACE_CONV2_KEY = "face_encoder.conv2.conv.weight"
MOTION_PREFIX = "motion_encoder.enc."
DIRECTION_KEY = "motion_encoder.dec.direction.weight"


def from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> AnimateConfig:
    """Every size of an Animate DiT from its official-layout weight shapes."""
    try:
        dit = _dit_from_shapes(shapes, source)
        hidden = shapes[FACE_CONV2_KEY][0]
        config = AnimateConfig(dit, _motion_from_shapes(shapes), face_hidden_dim=hidden,
                               face_heads=shapes[FACE_CONV1_KEY][0] // hidden)
    except KeyError as err:
        raise ModelLoadError(f"{source}: an incomplete Wan2.2 Animate checkpoint (no {err} tensor).") from None
    blocks = 1 + max((int(k.split(".")[2]) for k in shapes if k.startswith("face_adapter.fuser_blocks.")),
                     default=-1)
    if blocks != config.face_blocks:
        raise ModelLoadError(
            f"{source}: holds {blocks} face blocks, but a DiT of {dit.num_layers} layers has one after every "
            f"{FACE_EVERY}th block ({config.face_blocks}); the file is incomplete or not a Wan2.2 Animate DiT."
        )
    return check(config, source)


def _dit_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> DitConfig:
    """The I2V DiT's sizes; the head width is the face blocks' per-head norm's (any width, where
    ``dit_config.from_shapes`` must assume the released 128)."""
    dim, in_dim = shapes["patch_embedding.weight"][:2]
    text_dim = shapes["text_embedding.0.weight"][1]
    layers = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")), default=-1)
    config = DitConfig(
        "i2v", dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_heads=dim // shapes[FACE_Q_NORM_KEY][0],
        num_layers=layers, in_dim=in_dim, out_dim=shapes["head.head.weight"][0] // math.prod(PATCH),
        freq_dim=shapes["time_embedding.0.weight"][1], text_dim=text_dim, clip="img_emb.proj.0.weight" in shapes,
    )
    return dit_config.check(config, source)


def _motion_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> MotionEncoderConfig:
    """The motion encoder's sizes: ``convs.0`` is a 1x1 conv, then ResBlocks, then the 4x4 conv."""
    convs = 1 + max(int(k.split(".")[4]) for k in shapes if k.startswith(MOTION_PREFIX + "net_app.convs."))
    widths = [shapes[MOTION_PREFIX + "net_app.convs.0.0.weight"][0]]
    widths += [shapes[f"{MOTION_PREFIX}net_app.convs.{i}.conv2.1.weight"][0] for i in range(1, convs - 1)]
    fc_layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith(MOTION_PREFIX + "fc."))
    direction_dim, motion_dim = shapes[DIRECTION_KEY]
    return MotionEncoderConfig(
        size=2 ** convs, widths=tuple(widths), style_dim=shapes[f"{MOTION_PREFIX}net_app.convs.{convs - 1}.weight"][0],
        motion_dim=motion_dim, direction_dim=direction_dim, fc_layers=fc_layers,
    )


def describe(config: AnimateConfig) -> str:
    """'dim 5120, 40 layers, 8 face blocks, 512-px motion encoder' for messages."""
    return (f"dim {config.dit.dim}, {config.dit.num_layers} layers, {config.face_blocks} face blocks, "
            f"{config.motion.size}-px motion encoder")
