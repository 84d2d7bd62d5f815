"""The LongCat-Video DiT's hyper-parameters: one frozen config, read off the checkpoint's keys.

LongCat-Video (meituan-longcat/LongCat-Video ``dit/``) is not a Wan DiT: its keys are its own
(``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks.N.attn.qkv``, ``final_layer``...), so a
Wan file and a LongCat file are told apart by their keys alone. Every size is read off the shapes;
the one setting the weights cannot show, ``text_tokens_zero_pad``, comes from the ``config.json``
beside the weights (its released value, True, when there is none).

Torch-free: planning and validation may read a header's shapes without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import structlog

from wanflow.errors import ModelLoadError

log = structlog.get_logger(__name__)

#: Keys every LongCat-Video DiT has (and no Wan DiT has): the marker of the format.
MARKER_KEYS = (
    "x_embedder.proj.weight", "t_embedder.mlp.0.weight", "y_embedder.y_proj.0.weight",
    "blocks.0.attn.qkv.weight", "blocks.0.attn.q_norm.weight", "blocks.0.ffn.w1.weight",
    "final_layer.linear.weight",
)

#: Parameters kept in fp32 whatever the compute dtype: the reference computes the time
#: embedding, every modulation and the final projection under fp32 autocast, and its affine
#: pre-cross-attention norm with fp32 weights.
FP32_PREFIXES = ("t_embedder.", "final_layer.")
FP32_PARTS = (".adaLN_modulation.", ".pre_crs_attn_norm.")

#: config.json keys that shape the weights (checked against them) and the one behaviour flag.
SHAPE_KEYS = ("in_channels", "out_channels", "hidden_size", "depth", "num_heads", "caption_channels",
              "adaln_tembed_dim", "frequency_embedding_size", "patch_size")
#: config.json keys that choose kernels or parallelism, or are bookkeeping: no effect on the numbers.
NUMERICALLY_INERT_KEYS = ("enable_flashattn3", "enable_flashattn2", "enable_xformers", "enable_bsa",
                          "bsa_params", "cp_split_hw", "_class_name", "_diffusers_version")


@attrs.frozen
class LongCatConfig:
    """Everything that shapes a LongCat-Video DiT; defaults are the released model's values."""

    hidden_size: int
    depth: int
    num_heads: int
    ffn_dim: int  # SwiGLU hidden width: 256·⌈int(2·4·hidden/3)/256⌉ (11008 at 4096)
    in_channels: int = 16  # Wan2.1 VAE latent channels
    out_channels: int = 16
    caption_channels: int = 4096  # umT5-XXL width
    adaln_tembed_dim: int = 512  # the time embedding every modulation reads
    frequency_embedding_size: int = 256  # width of the sinusoidal timestep features
    patch_size: tuple[int, int, int] = attrs.field(default=(1, 2, 2), converter=tuple)
    text_len: int = 512  # umT5 slots the text is padded to (the pipeline's max_sequence_length)
    #: Padded text slots become zero vectors after the caption projection and stay attended
    #: (True: the released config.json and DiffSynth); False keeps only the real tokens.
    text_tokens_zero_pad: bool = True
    eps: float = 1e-6  # every norm of the model

    @property
    def head_dim(self) -> int:
        """Per-head width (128 in the released model)."""
        return self.hidden_size // self.num_heads

    @property
    def patch_volume(self) -> int:
        """Latent voxels per token."""
        return math.prod(self.patch_size)

    def describe(self) -> str:
        """'hidden 4096, 48 blocks, 32 heads' for messages."""
        return f"hidden {self.hidden_size}, {self.depth} blocks, {self.num_heads} heads"


def swiglu_width(hidden_size: int, mlp_ratio: float = 4) -> int:
    """The reference's SwiGLU hidden width: 2/3 of int(hidden·ratio), rounded up to a multiple of 256."""
    return 256 * math.ceil(int(2 * int(hidden_size * mlp_ratio) / 3) / 256)


#: The released LongCat-Video DiT (13.6 B parameters).
LONGCAT_VIDEO = LongCatConfig(hidden_size=4096, depth=48, num_heads=32, ffn_dim=swiglu_width(4096))


def keeps_fp32(name: str) -> bool:
    """Whether a parameter belongs to an fp32 island (its name as in the state dict)."""
    return name.startswith(FP32_PREFIXES) or any(part in name for part in FP32_PARTS)


def is_longcat(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether a state dict's keys are LongCat-Video's (all its marker keys are there)."""
    return all(key in shapes for key in MARKER_KEYS)


def from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> LongCatConfig:
    """The config of a LongCat-Video state dict, read off its shapes ({key: shape})."""
    if not is_longcat(shapes):
        missing = [k for k in MARKER_KEYS if k not in shapes]
        raise ModelLoadError(f"{source}: not a LongCat-Video DiT (no {', '.join(missing[:3])}).")
    hidden, in_channels, *patch = shapes["x_embedder.proj.weight"]
    tembed, freq = shapes["t_embedder.mlp.0.weight"]
    head_dim = shapes["blocks.0.attn.q_norm.weight"][0]
    depth = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    config = LongCatConfig(
        hidden_size=hidden, depth=depth, num_heads=hidden // head_dim,
        ffn_dim=shapes["blocks.0.ffn.w1.weight"][0], in_channels=in_channels,
        out_channels=shapes["final_layer.linear.weight"][0] // math.prod(patch),
        caption_channels=shapes["y_embedder.y_proj.0.weight"][1], adaln_tembed_dim=tembed,
        frequency_embedding_size=freq, patch_size=tuple(patch),
    )
    return check(config, source)


def with_config_json(config: LongCatConfig, doc: Mapping[str, object], source: str) -> LongCatConfig:
    """Take ``text_tokens_zero_pad`` from a config.json, after checking that its sizes (and
    ``mlp_ratio``) agree with the weights'. Keys this module does not know are named in a warning."""
    known = {*SHAPE_KEYS, *NUMERICALLY_INERT_KEYS, "mlp_ratio", "text_tokens_zero_pad"}
    unknown = sorted(set(doc) - known)
    if unknown:
        log.warning("longcat_config_keys_unused", source=source, keys=unknown,
                    note="not read: the weights' shapes and text_tokens_zero_pad define the model")
    seen = {"patch_size": list(config.patch_size), **{k: getattr(config, k) for k in SHAPE_KEYS[:-1]}}
    clash = [f"{k} = {doc[k]!r} (weights: {seen[k]!r})" for k in SHAPE_KEYS
             if k in doc and _listed(doc[k]) != seen[k]]
    ratio = doc.get("mlp_ratio")
    if ratio is not None and (not isinstance(ratio, (int, float)) or swiglu_width(config.hidden_size, ratio)
                              != config.ffn_dim):
        clash.append(f"mlp_ratio = {ratio!r} (weights: SwiGLU width {config.ffn_dim})")
    if clash:
        raise ModelLoadError(
            f"{source}: disagrees with the weights beside it: {'; '.join(clash)}. The config.json "
            "and the weights come from different models; fetch the matching pair."
        )
    flag = doc.get("text_tokens_zero_pad", config.text_tokens_zero_pad)
    if not isinstance(flag, bool):
        raise ModelLoadError(f"{source}: text_tokens_zero_pad = {flag!r}: must be true or false.")
    return attrs.evolve(config, text_tokens_zero_pad=flag)


def _listed(value: object) -> object:
    """JSON lists and tuples compare as lists."""
    return list(value) if isinstance(value, (list, tuple)) else value


def check(config: LongCatConfig, source: str) -> LongCatConfig:
    """Refuse sizes no LongCat-Video DiT can have, naming the file; returns the config."""
    c = config
    problems = []
    if c.hidden_size % c.num_heads or c.head_dim % 8:
        problems.append(f"hidden {c.hidden_size} does not split into {c.num_heads} heads of a width "
                        "divisible by 8 (the 3-D RoPE needs it)")
    if c.patch_size[0] != 1:
        problems.append(f"patch_size {list(c.patch_size)} patches time (LongCat-Video's is [1, 2, 2])")
    if c.frequency_embedding_size % 2:
        problems.append(f"frequency_embedding_size {c.frequency_embedding_size} is odd")
    if problems:
        raise ModelLoadError(f"{source}: invalid LongCat-Video DiT: " + "; ".join(problems) + ".")
    return config
