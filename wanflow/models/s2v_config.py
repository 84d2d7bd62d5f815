"""Wan2.2-S2V's sizes: a Wan T2V DiT plus the speech-to-video parts, read off the weights.

The release builds one configuration (``enable_adain``, frame-pack motion tokens in ``padd``
mode with all three buckets, the reference and motion tokens at t = 0); wanflow builds exactly
that one, and refuses a config.json asking for another. Every width and count is read off the
shapes; the blocks the audio injectors follow are not in the shapes (only their number is), so
they come from the config.json beside the weights, or are the released list when the sizes are
the release's. Torch-free, like ``dit_config``, so planning can size a checkpoint from its header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.errors import ModelLoadError
from wanflow.models import dit_config
from wanflow.models.dit_config import WAN21_T2V_14B, DitConfig

#: Blocks followed by an audio injector in the release (12 of 40).
RELEASED_INJECT_LAYERS = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)

#: Pixel frames of motion the official loop carries between clips (its ``motion_frames[0]``): the
#: audio gets as many copies of its first frame in front, so its causal convolutions have a past.
MOTION_PIXEL_FRAMES = 73
#: Those frames as VAE latents ((73 + 3) / 4; ``motion_frames[1]``), and the audio tokens that
#: stand for them, dropped after the audio encoder.
MOTION_LATENT_FRAMES = 19
#: Latent frames each frame-pack bucket takes, oldest first: 16 through (4, 8, 8) patches, 2
#: through (2, 4, 4), the newest 1 through the DiT's (1, 2, 2).
PACK_BUCKETS = (16, 2, 1)
#: Audio frames per latent frame: two stride-2 causal convolutions.
AUDIO_FRAMES_PER_LATENT = 4
#: RoPE frame of the reference image's tokens (the release's fixed position, far from the clip).
REFERENCE_ROPE_FRAME = 30

#: Official config.json keys that must hold the released values: the one S2V wanflow builds.
RELEASED_SWITCHES: dict[str, Any] = {
    "enable_adain": True, "adain_mode": "attn_norm", "enable_framepack": True, "framepack_drop_mode": "padd",
    "add_last_motion": True, "zero_timestep": True, "enable_motioner": False,
    "motion_frames": MOTION_PIXEL_FRAMES,
}

#: The DiT's patch (frames, height, width), as every Wan DiT's.
PATCH = (1, 2, 2)
#: Every released Wan DiT's head width: the heads of a file without its config.json.
RELEASED_HEAD_DIM = 128

#: Official keys whose shapes give the parts' sizes.
AUDIO_WEIGHTS_KEY = "casual_audio_encoder.weights"  # (1, layers, 1, 1): the release's spelling
AUDIO_LOCAL_KEY = "casual_audio_encoder.encoder.conv1_local.conv.weight"  # (tokens * D / 4, audio_dim, 3)
COND_KEY = "cond_encoder.weight"  # (D, cond_dim, 1, 2, 2)
INJECTOR_PREFIX = "audio_injector.injector."
#: Key prefixes of the S2V parts (a file with none of them is no S2V DiT).
PART_PREFIXES = ("casual_audio_encoder.", "audio_injector.", "cond_encoder.", "frame_packer.",
                 "trainable_cond_mask.")


@attrs.frozen
class S2VConfig:
    """The S2V DiT: a T2V DiT (``dit``) with an audio encoder, audio injectors, a pose encoder,
    frame-pack motion tokens and token-type embeddings."""

    dit: DitConfig
    inject_layers: tuple[int, ...] = attrs.field(default=RELEASED_INJECT_LAYERS, converter=tuple)
    audio_dim: int = 1024  # wav2vec2-large width
    audio_layers: int = 25  # wav2vec2 hidden states mixed (the input of each of 24 layers, then the last)
    audio_tokens: int = 4  # audio tokens per latent frame from the local branch (plus one padding token)
    cond_dim: int = 16  # pose latent channels

    @property
    def injectors(self) -> int:
        return len(self.inject_layers)

    def describe(self) -> str:
        """'dim 5120, 40 layers, 12 audio injectors' for messages."""
        return f"dim {self.dit.dim}, {self.dit.num_layers} layers, {self.injectors} audio injectors"


def check(config: S2VConfig, source: str) -> S2VConfig:
    """Refuse sizes no S2V DiT can have, naming the file; returns the config."""
    problems = _problems(config)
    if problems:
        raise ModelLoadError(f"{source}: invalid Wan2.2 S2V config: " + "; ".join(problems) + ".")
    return config


def _problems(c: S2VConfig) -> list[str]:
    """Every inconsistency of an S2V config, as short phrases."""
    out = []
    d = c.dit
    if d.model_type != "t2v" or d.in_dim != d.out_dim or d.clip:
        out.append(f"the DiT must be a T2V DiT ({d.out_dim} channels in and out, no CLIP), not a "
                   f"{d.model_type} DiT taking {d.in_dim}")
    layers = c.inject_layers
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= d.num_layers:
        out.append(f"audio_inject_layers = {list(layers)} must be distinct rising block indices below "
                   f"num_layers = {d.num_layers}")
    if d.dim % 4:
        out.append(f"dim = {d.dim} must be a multiple of 4 (the audio encoder's first width is dim / 4)")
    sizes = (c.audio_dim, c.audio_layers, c.audio_tokens, c.cond_dim)
    if any(not isinstance(v, int) or v <= 0 for v in sizes):
        out.append("every width and count must be a positive integer")
    return out


#: The released Wan2.2-S2V-14B: the Wan T2V-14B DiT with the parts at their released sizes.
WAN22_S2V_14B = S2VConfig(WAN21_T2V_14B)


# ----------------------------------------------------------------------------- from a checkpoint


def is_s2v(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether the keys hold any S2V part (the audio encoder above all)."""
    return any(k.startswith(PART_PREFIXES) for k in shapes)


def from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str, *, num_heads: int | None = None,
                inject_layers: tuple[int, ...] | None = None) -> S2VConfig:
    """Every size of an S2V DiT from its official-layout shapes.

    ``num_heads`` and ``inject_layers`` are not in the shapes: None means the release's (heads
    of 128; the released injector blocks, which must then fit the weights)."""
    try:
        dim, in_dim = shapes["patch_embedding.weight"][:2]
        heads = num_heads if num_heads is not None else dim // RELEASED_HEAD_DIM
        layers = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")), default=-1)
        dit = DitConfig(
            "t2v", dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_heads=heads, num_layers=layers,
            in_dim=in_dim, out_dim=shapes["head.head.weight"][0] // math.prod(PATCH),
            freq_dim=shapes["time_embedding.0.weight"][1], text_dim=shapes["text_embedding.0.weight"][1],
        )
        audio_layers = shapes[AUDIO_WEIGHTS_KEY][1]
        local_out, audio_dim = shapes[AUDIO_LOCAL_KEY][:2]
        cond_dim = shapes[COND_KEY][1]
    except KeyError as err:
        raise ModelLoadError(f"{source}: an incomplete Wan2.2 S2V checkpoint (no {err} tensor).") from None
    count = 1 + max((int(k.split(".")[2]) for k in shapes if k.startswith(INJECTOR_PREFIX)), default=-1)
    layers_given = inject_layers if inject_layers is not None else _released_layers(count, dit, source)
    if len(layers_given) != count:
        raise ModelLoadError(
            f"{source}: the config names {len(layers_given)} audio injector blocks {list(layers_given)}, but the "
            f"weights hold {count} injectors; the config.json and the weights are of different models."
        )
    dit_config.check(dit, source)
    config = S2VConfig(dit, inject_layers=tuple(layers_given), audio_dim=audio_dim, audio_layers=audio_layers,
                       audio_tokens=local_out // (dim // 4), cond_dim=cond_dim)
    return check(config, source)


def _released_layers(count: int, dit: DitConfig, source: str) -> tuple[int, ...]:
    """The released injector blocks, for a file of the released depth and injector count."""
    if count == len(RELEASED_INJECT_LAYERS) and dit.num_layers == WAN21_T2V_14B.num_layers:
        return RELEASED_INJECT_LAYERS
    raise ModelLoadError(
        f"{source}: {count} audio injectors in a {dit.num_layers}-layer DiT, not the release's "
        f"{len(RELEASED_INJECT_LAYERS)} in {WAN21_T2V_14B.num_layers}; the blocks they follow are not in the "
        "weights: put the config.json naming audio_inject_layers beside the weights."
    )


def config_fields(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """What an official S2V config.json adds to the shapes: ``num_heads`` and ``inject_layers``.

    A switch set otherwise than in the release is refused (wanflow builds the released S2V only)."""
    changed = [f"{k} = {doc[k]!r} (the release: {v!r})" for k, v in RELEASED_SWITCHES.items()
               if k in doc and doc[k] != v]
    if changed:
        raise ModelLoadError(
            f"{source}: {'; '.join(changed)}: wanflow builds the released Wan2.2 S2V configuration only."
        )
    fields: dict[str, Any] = {}
    if "num_heads" in doc:
        fields["num_heads"] = _positive(doc["num_heads"], "num_heads", source)
    if "audio_inject_layers" in doc:
        layers = doc["audio_inject_layers"]
        if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ModelLoadError(f"{source}: audio_inject_layers = {layers!r} must be a list of block indices.")
        fields["inject_layers"] = tuple(layers)
    return fields


def _positive(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelLoadError(f"{source}: {key} = {value!r} must be a positive integer.")
    return value


# ----------------------------------------------------------------------------- precision

#: Parameters kept in fp32 besides the DiT's islands: the audio encoder, which the release runs
#: under an fp32 autocast (its layer mix divides by a sum of small SiLU weights).
FP32_PREFIXES = ("casual_audio_encoder.",)


def keeps_fp32(name: str) -> bool:
    """Whether an S2V parameter stays fp32 whatever the compute dtype."""
    return dit_config.keeps_fp32(name) or name.startswith(FP32_PREFIXES)
