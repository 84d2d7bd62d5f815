"""The Wan DiT's hyper-parameters: one frozen config, built from a checkpoint's config.json.

The official ``config.json`` (keys ``model_type``, ``dim``, ``ffn_dim``, ...) and diffusers'
``WanTransformer3DModel`` / ``WanVACETransformer3DModel`` config are both accepted; when a
checkpoint has neither, the config is read off the weights' shapes. The derivative parts (VACE
blocks, Wan-Fun ``ref_conv`` and ``control_adapter``) are always read off the weights
(``with_parts``): a config.json may omit them. The released variants are named constants below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from wanflow.errors import ModelLoadError

ModelType = Literal["t2v", "i2v", "flf2v", "ti2v"]
MODEL_TYPES: tuple[str, ...] = ("t2v", "i2v", "flf2v", "ti2v")

#: CLIP ViT-H/14 tokens per image (256 patches + class token) and their width.
CLIP_TOKENS = 257
CLIP_DIM = 1280

#: Official config.json keys that must hold exactly these values (every released Wan DiT).
FIXED_OFFICIAL = {"window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True}
INT_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim", "text_len")

#: config.json keys of the derivative releases (VACE; Wan-Fun as its authors write them); the
#: parts they describe are read off the weights, ``vace_layers`` kept when it is a list.
DERIVATIVE_KEYS = ("vace_layers", "vace_in_dim", "add_ref_conv", "in_dim_ref_conv", "add_control_adapter",
                   "in_dim_control_adapter", "downscale_factor_control_adapter")

#: Channels of the Wan2.1 VAE latent that ``ref_conv`` embeds (a reference image's latent).
REF_CONV_IN_DIM = 16


@attrs.frozen
class DitConfig:
    """Everything that shapes a Wan DiT; defaults are the values shared by every release."""

    model_type: ModelType
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int  # noisy latent channels + conditioning channels (y) concatenated to them
    out_dim: int
    freq_dim: int = 256  # width of the sinusoidal time embedding
    text_len: int = 512  # umT5 tokens; the context is zero-padded to exactly this many
    eps: float = 1e-6
    text_dim: int = 4096  # umT5-XXL width, fixed by the text encoder
    patch_size: tuple[int, int, int] = (1, 2, 2)
    clip: bool = False  # CLIP image tokens with decoupled cross-attention (Wan2.1 I2V/FLF2V)
    #: VACE: the main blocks after which each VACE block's hint is added; () = no VACE branch.
    vace_layers: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    vace_in_dim: int = 96  # VACE context channels: inactive 16 + reactive 16 + mask 64
    ref_conv: bool = False  # Wan-Fun V1.1 / 2.2 Control: reference-image tokens via ``ref_conv``
    camera_in_dim: int = 0  # Wan-Fun Control-Camera: ``control_adapter`` input channels (24); 0 = none

    @property
    def head_dim(self) -> int:
        """Per-head width (128 for every release)."""
        return self.dim // self.num_heads

    @property
    def image_len(self) -> int:
        """CLIP tokens prepended to the text context: 0, 257 (I2V) or 514 (FLF2V: two images)."""
        if not self.clip:
            return 0
        return 2 * CLIP_TOKENS if self.model_type == "flf2v" else CLIP_TOKENS

    @property
    def patch_volume(self) -> int:
        """Latent voxels per token."""
        pt, ph, pw = self.patch_size
        return pt * ph * pw


def check(config: DitConfig, source: str) -> DitConfig:
    """Refuse configs no Wan DiT can have, naming the file; returns the config for chaining."""
    problems = _problems(config)
    if problems:
        raise ModelLoadError(f"{source}: invalid Wan DiT config: " + "; ".join(problems) + ".")
    return config


def _problems(c: DitConfig) -> list[str]:
    """Every inconsistency of a config, as short phrases."""
    out = [f"{f} = {getattr(c, f)!r} must be a positive integer" for f in INT_FIELDS
           if not isinstance(getattr(c, f), int) or getattr(c, f) <= 0]
    if out:
        return out
    patch = c.patch_size
    if (len(patch) != 3 or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)):
        out.append(f"patch_size = {list(patch)!r} must be three positive integers (every release has [1, 2, 2])")
    if c.model_type not in MODEL_TYPES:
        out.append(f"model_type = {c.model_type!r} is not one of {list(MODEL_TYPES)}")
    if c.dim % c.num_heads or c.head_dim % 2:
        out.append(f"dim = {c.dim} must split into num_heads = {c.num_heads} heads of even width")
    if c.freq_dim % 2:
        out.append(f"freq_dim = {c.freq_dim} must be even")
    if c.model_type == "flf2v" and not c.clip:
        out.append("model_type 'flf2v' needs CLIP image tokens")
    if c.clip and c.model_type not in ("i2v", "flf2v"):
        out.append(f"model_type {c.model_type!r} takes no CLIP image tokens")
    return out + _part_problems(c)


def _part_problems(c: DitConfig) -> list[str]:
    """Inconsistencies of the derivative parts."""
    out = []
    layers = c.vace_layers
    if layers and (not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
                   or list(layers) != sorted(set(layers)) or layers[0] != 0 or layers[-1] >= c.num_layers):
        out.append(f"vace_layers = {list(layers)} must rise from 0 and stay below num_layers = {c.num_layers}")
    if layers and (not isinstance(c.vace_in_dim, int) or c.vace_in_dim <= 0):
        out.append(f"vace_in_dim = {c.vace_in_dim!r} must be a positive integer")
    if not isinstance(c.camera_in_dim, int) or c.camera_in_dim < 0:
        out.append(f"camera_in_dim = {c.camera_in_dim!r} must be 0 (no camera adapter) or positive")
    return out


def from_official(doc: Mapping[str, Any], source: str, *, clip: bool | None = None) -> DitConfig:
    """Build from an official config.json; clip=None means 'as Wan2.1' (i2v and flf2v use CLIP)."""
    known = {*INT_FIELDS, "model_type", "eps", "text_dim", "patch_size", *FIXED_OFFICIAL, *DERIVATIVE_KEYS}
    unknown = sorted(k for k in doc if not k.startswith("_") and k not in known)
    if unknown:
        raise ModelLoadError(
            f"{source}: config keys {unknown} are not part of a Wan DiT wanflow knows (T2V/I2V/FLF2V/"
            "TI2V, VACE, Wan-Fun); S2V and Animate checkpoints need their own model family."
        )
    for key, value in FIXED_OFFICIAL.items():
        if key in doc and _plain(doc[key]) != value:
            raise ModelLoadError(f"{source}: {key} = {doc[key]!r}; every Wan DiT has {value!r}.")
    missing = [k for k in ("model_type", "dim", "ffn_dim", "num_heads", "num_layers") if k not in doc]
    if missing:
        raise ModelLoadError(f"{source}: config.json lacks {missing}; it is not a Wan DiT config.")
    model_type = "t2v" if doc["model_type"] == "vace" else doc["model_type"]  # VACE: a T2V DiT + branch
    fields = {k: doc[k] for k in (*INT_FIELDS, "eps", "text_dim") if k in doc}
    fields.setdefault("in_dim", 36 if model_type in ("i2v", "flf2v") else 16)
    fields.setdefault("out_dim", 16)
    fields |= _vace_fields(doc, "vace_layers", "vace_in_dim") | _patch_field(doc, source)
    use_clip = model_type in ("i2v", "flf2v") if clip is None else clip
    return _build(source, model_type=model_type, clip=use_clip, **fields)


def _patch_field(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``patch_size`` when the config states one: every release patches (1, 2, 2), but a DiT
    trained on small latents (the quickstart model's 8x8) may patch finer; the model code reads
    the patch from the config everywhere, so any three positive integers are honoured."""
    if "patch_size" not in doc:
        return {}
    patch = doc["patch_size"]
    if not isinstance(patch, (list, tuple)) or len(patch) != 3:
        raise ModelLoadError(f"{source}: patch_size = {patch!r} must be a list of three integers, e.g. [1, 2, 2].")
    return {"patch_size": tuple(patch)}


def _vace_fields(doc: Mapping[str, Any], layers_key: str, in_key: str) -> dict[str, Any]:
    """The VACE fields a config.json states (a list of layers; an int or null is the count the
    weights give anyway)."""
    fields: dict[str, Any] = {}
    if isinstance(doc.get(layers_key), (list, tuple)):
        fields["vace_layers"] = tuple(doc[layers_key])
    if doc.get(in_key) is not None:
        fields["vace_in_dim"] = doc[in_key]
    return fields


def from_diffusers(doc: Mapping[str, Any], source: str) -> DitConfig:
    """Build from a diffusers WanTransformer3DModel config.json."""
    try:
        heads, head_dim = doc["num_attention_heads"], doc["attention_head_dim"]
        in_dim, out_dim = doc["in_channels"], doc["out_channels"] or doc["in_channels"]
        fields = dict(dim=heads * head_dim, num_heads=heads, ffn_dim=doc["ffn_dim"],
                      num_layers=doc["num_layers"], in_dim=in_dim, out_dim=out_dim)
    except (KeyError, TypeError) as err:
        raise ModelLoadError(f"{source}: diffusers config without a usable {err}.") from None
    fields |= _patch_field(doc, source)
    clip = doc.get("image_dim") is not None
    flf2v = doc.get("pos_embed_seq_len") is not None
    model_type = _guess_type(in_dim, out_dim, clip=clip, flf2v=flf2v)
    extra = {k: doc[k] for k in ("freq_dim", "eps", "text_dim") if k in doc}
    extra |= _vace_fields(doc, "vace_layers", "vace_in_channels")
    return _build(source, model_type=model_type, clip=clip, **fields, **extra)


def from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> DitConfig:
    """Read the config off official-layout weight shapes (for files shipped without config.json)."""
    try:
        dim, in_dim, *patch = shapes["patch_embedding.weight"]
        ffn_dim = shapes["blocks.0.ffn.0.weight"][0]
        out_dim = shapes["head.head.weight"][0] // math.prod(patch)
        freq_dim = shapes["time_embedding.0.weight"][1]
        text_dim = shapes["text_embedding.0.weight"][1]  # umT5-XXL's 4096 in every release
    except KeyError as err:
        raise ModelLoadError(f"{source}: not a Wan DiT checkpoint (no {err} tensor).") from None
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    clip, flf2v = "img_emb.proj.0.weight" in shapes, "img_emb.emb_pos" in shapes
    model_type = _guess_type(in_dim, out_dim, clip=clip, flf2v=flf2v)
    config = _build(source, model_type=model_type, dim=dim, ffn_dim=ffn_dim, num_heads=dim // 128,
                    num_layers=layers, in_dim=in_dim, out_dim=out_dim, freq_dim=freq_dim, text_dim=text_dim,
                    clip=clip, patch_size=tuple(patch))
    return with_parts(config, shapes, source)


def with_parts(config: DitConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> DitConfig:
    """``config`` with the derivative parts the official-layout weights hold (VACE blocks,
    ``ref_conv``, ``control_adapter``); VACE layers a config stated are checked against the
    weights' block count, else spread evenly (15 blocks at 30 layers: 0, 2, ..., 28)."""
    fields: dict[str, Any] = {"ref_conv": "ref_conv.weight" in shapes, "camera_in_dim": 0}
    adapter = shapes.get("control_adapter.conv.weight")  # (D, in * 64, 2, 2): PixelUnshuffle(8) first
    if adapter is not None:
        fields["camera_in_dim"] = adapter[1] // 64
    count = 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith("vace_blocks.")), default=-1)
    vace = shapes.get("vace_patch_embedding.weight")
    if count and vace is not None:
        fields["vace_in_dim"] = vace[1]
        fields["vace_layers"] = config.vace_layers or even_layers(count, config.num_layers)
        if len(fields["vace_layers"]) != count:
            raise ModelLoadError(
                f"{source}: the config names {len(config.vace_layers)} VACE layers "
                f"{list(config.vace_layers)}, but the weights hold {count} VACE blocks."
            )
    elif config.vace_layers:
        raise ModelLoadError(f"{source}: the config names VACE layers, but the weights hold no VACE blocks.")
    return check(attrs.evolve(config, **fields), source)


def even_layers(count: int, num_layers: int) -> tuple[int, ...]:
    """``count`` main blocks spread evenly from block 0, as every VACE release places its hints."""
    step = max(1, num_layers // count)
    return tuple(range(0, step * count, step))


def _guess_type(in_dim: int, out_dim: int, *, clip: bool, flf2v: bool) -> str:
    """The variant a set of dims belongs to: extra input channels on a 16-channel latent are an
    image (or control) condition y, with or without CLIP (A14B I2V and Wan2.2-Fun have none)."""
    if flf2v:
        return "flf2v"
    if clip or in_dim > out_dim == 16:
        return "i2v"
    return "ti2v" if in_dim == out_dim == 48 else "t2v"


def _build(source: str, **fields: Any) -> DitConfig:
    """Construct and check, turning type errors into a ModelLoadError naming the file."""
    try:
        return check(DitConfig(**fields), source)
    except TypeError as err:
        raise ModelLoadError(f"{source}: invalid Wan DiT config ({err}).") from None


def _plain(value: Any) -> Any:
    """Tuples as lists, so JSON values compare with Python constants."""
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------- released variants

WAN21_T2V_1_3B = DitConfig("t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16)
WAN21_T2V_14B = DitConfig("t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16)
WAN21_I2V_14B_480P = DitConfig(
    "i2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, out_dim=16, clip=True
)
WAN21_I2V_14B_720P = WAN21_I2V_14B_480P  # same architecture, trained at 720p
WAN21_FLF2V_14B = attrs.evolve(WAN21_I2V_14B_480P, model_type="flf2v")
WAN22_T2V_A14B = WAN21_T2V_14B  # each of the high- and low-noise experts
WAN22_I2V_A14B = attrs.evolve(WAN21_I2V_14B_480P, clip=False)  # each expert; no CLIP, no img_emb
WAN22_TI2V_5B = DitConfig("ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48)

WAN21_VACE_1_3B = attrs.evolve(WAN21_T2V_1_3B, vace_layers=tuple(range(0, 30, 2)))
WAN21_VACE_14B = attrs.evolve(WAN21_T2V_14B, vace_layers=tuple(range(0, 40, 5)))  # and Wan2.2-VACE-Fun experts
WAN21_FUN_INP_1_3B = attrs.evolve(WAN21_T2V_1_3B, model_type="i2v", in_dim=36, clip=True)
WAN21_FUN_CONTROL_1_3B = attrs.evolve(WAN21_FUN_INP_1_3B, in_dim=48)  # V1.0
WAN21_FUN_V11_CONTROL_1_3B = attrs.evolve(WAN21_FUN_CONTROL_1_3B, ref_conv=True)
WAN21_FUN_V11_CAMERA_1_3B = attrs.evolve(WAN21_FUN_INP_1_3B, in_dim=32, camera_in_dim=24)
WAN22_FUN_CONTROL_A14B = attrs.evolve(WAN22_I2V_A14B, in_dim=52, ref_conv=True)  # each expert
WAN22_FUN_CAMERA_A14B = attrs.evolve(WAN22_I2V_A14B, camera_in_dim=24)  # each expert

VARIANTS: dict[str, DitConfig] = {
    "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": WAN21_T2V_14B,
    "wan2.1-i2v-14b-480p": WAN21_I2V_14B_480P,
    "wan2.1-i2v-14b-720p": WAN21_I2V_14B_720P,
    "wan2.1-flf2v-14b-720p": WAN21_FLF2V_14B,
    "wan2.2-t2v-a14b": WAN22_T2V_A14B,
    "wan2.2-i2v-a14b": WAN22_I2V_A14B,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B,
}

#: The derivative releases' DiTs (each also listed by the architecture names of ``signature``).
DERIVATIVE_VARIANTS: dict[str, DitConfig] = {
    "wan2.1-vace-1.3b": WAN21_VACE_1_3B,
    "wan2.1-vace-14b": WAN21_VACE_14B,
    "wan2.1-fun-inp-1.3b": WAN21_FUN_INP_1_3B,
    "wan2.1-fun-control-1.3b": WAN21_FUN_CONTROL_1_3B,
    "wan2.1-fun-v1.1-control-1.3b": WAN21_FUN_V11_CONTROL_1_3B,
    "wan2.1-fun-v1.1-control-camera-1.3b": WAN21_FUN_V11_CAMERA_1_3B,
    "wan2.2-fun-control-a14b": WAN22_FUN_CONTROL_A14B,
    "wan2.2-fun-control-camera-a14b": WAN22_FUN_CAMERA_A14B,
}


#: Parameters kept in fp32 whatever the compute dtype (time embedding, modulation, head). Here,
#: beside the config and free of torch, so memory planning can size a checkpoint from its header.
#: VACE blocks' ".modulation" too; Animate's motion direction basis and its fixed blur kernels
#: (computed in fp32 by the authors' code).
FP32_PREFIXES = ("time_embedding.", "time_projection.", "head.", "motion_encoder.dec.direction.")


def keeps_fp32(name: str) -> bool:
    """Whether a parameter belongs to an fp32 island (its name as in the state dict)."""
    return name.startswith(FP32_PREFIXES) or name.endswith((".modulation", ".kernel"))
