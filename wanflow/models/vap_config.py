"""Video-As-Prompt's sizes: a Wan2.1 I2V DiT plus a mixture-of-transformers reference stream.

The reference stream ("MoT expert") has the main stream's width, heads and FFN width; what
describes it beyond the I2V ``DitConfig`` is the list of main blocks it joins (``mot_layers``:
0, 4, ..., 36 in the release). Torch-free, like ``dit_config``, so planning can size a
checkpoint from its header.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.errors import ModelLoadError
from wanflow.models import dit_config
from wanflow.models.dit_config import WAN21_I2V_14B_480P, DitConfig

#: The main blocks whose self-attention the released reference stream joins.
RELEASED_MOT_LAYERS = tuple(range(0, 40, 4))

#: The head width of every released Wan DiT, assumed where no config.json gives the head count.
HEAD_DIM = 128

#: The reference stream's modules live under this prefix (wanflow's names, official-style below it).
MOT_PREFIX = "mot."

#: The reference stream's fp32 islands, besides every ``.modulation`` (``dit_config.keeps_fp32``).
MOT_FP32_PREFIXES = (MOT_PREFIX + "time_embedding.", MOT_PREFIX + "time_projection.")


@attrs.frozen
class VapConfig:
    """The Video-As-Prompt DiT: an I2V ``dit`` and the main blocks the reference stream joins."""

    dit: DitConfig
    mot_layers: tuple[int, ...] = attrs.field(default=RELEASED_MOT_LAYERS, converter=tuple)


def check(config: VapConfig, source: str) -> VapConfig:
    """Refuse sizes no Video-As-Prompt DiT can have, naming the file; returns the config."""
    d, layers = config.dit, config.mot_layers
    problems = []
    if d.model_type != "i2v" or not d.clip:
        problems.append(f"the main stream must be a Wan2.1 I2V DiT with CLIP image tokens, not a "
                        f"{d.model_type} DiT{'' if d.clip else ' without CLIP'}")
    if (not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
            or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= d.num_layers):
        problems.append(f"mot_layers = {list(layers)} must be distinct rising block indices below "
                        f"num_layers = {d.num_layers}")
    if problems:
        raise ModelLoadError(f"{source}: invalid Video-As-Prompt config: " + "; ".join(problems) + ".")
    return config


def keeps_fp32(name: str) -> bool:
    """Whether a parameter (wanflow's name) is an fp32 island: the main stream's, the reference
    stream's time embedding and projection, every modulation."""
    return dit_config.keeps_fp32(name) or name.startswith(MOT_FP32_PREFIXES)


def mot_layers_in(keys: Mapping[str, Any] | set[str]) -> tuple[int, ...]:
    """The main blocks the reference stream joins, from wanflow-named keys (``mot.blocks.N.``)."""
    head = MOT_PREFIX + "blocks."
    return tuple(sorted({int(k[len(head):].split(".")[0]) for k in keys if k.startswith(head)}))


def from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str, num_heads: int | None = None) -> VapConfig:
    """Every size from wanflow-named shapes; ``num_heads`` from a config.json where one was read,
    else the release's head width of 128 is assumed (the shapes cannot tell it)."""
    try:
        dim, in_dim = shapes["patch_embedding.weight"][:2]
        fields = {
            "ffn_dim": shapes["blocks.0.ffn.0.weight"][0], "out_dim": shapes["head.head.weight"][0] // 4,
            "freq_dim": shapes["time_embedding.0.weight"][1], "text_dim": shapes["text_embedding.0.weight"][1],
        }
    except KeyError as err:
        raise ModelLoadError(f"{source}: an incomplete Video-As-Prompt checkpoint (no {err} tensor).") from None
    if num_heads is None and dim % HEAD_DIM:
        raise ModelLoadError(f"{source}: dim {dim} is not a multiple of the released head width {HEAD_DIM}; "
                             "put the model's config.json beside the weights so the head count is known.")
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    dit = DitConfig("i2v", dim=dim, num_heads=num_heads or dim // HEAD_DIM, num_layers=layers, in_dim=in_dim,
                    clip="img_emb.proj.0.weight" in shapes, **fields)
    return check(VapConfig(dit_config.check(dit, source), mot_layers_in(shapes)), source)


def from_diffusers(doc: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], source: str) -> VapConfig:
    """From a ``WanTransformer3DMOTModel`` config.json, checked against the weights' shapes."""
    if not isinstance(doc.get("block_idx_with_mot_ref"), list):
        raise ModelLoadError(
            f"{source}: not a Video-As-Prompt config (no block_idx_with_mot_ref list); it is the config of "
            f"{doc.get('_class_name', 'another model')}."
        )
    if doc.get("attention_head_dim_mot_ref") not in (None, doc.get("attention_head_dim")):
        raise ModelLoadError(f"{source}: attention_head_dim_mot_ref = {doc['attention_head_dim_mot_ref']}: a "
                             "reference stream narrower than the main stream is not supported.")
    if doc.get("reference_train_mode") == "reference_independent":
        raise ModelLoadError(f"{source}: reference_train_mode 'reference_independent' (a second head) is not "
                             "supported; the released model has none.")
    config = from_shapes(shapes, source, num_heads=doc.get("num_attention_heads"))
    stated = tuple(doc["block_idx_with_mot_ref"])
    if stated != config.mot_layers:
        raise ModelLoadError(
            f"{source}: block_idx_with_mot_ref = {list(stated)}, but the weights hold reference-stream blocks "
            f"at {list(config.mot_layers)}; the weights and the config are of different models."
        )
    return config


def describe(config: VapConfig) -> str:
    """'dim 5120, 40 layers, reference stream at blocks 0, 4, ..., 36' for messages."""
    layers = ", ".join(map(str, config.mot_layers))
    return f"dim {config.dit.dim}, {config.dit.num_layers} layers, reference stream at blocks {layers}"


#: The released Video-As-Prompt-Wan2.1-14B.
VAP_WAN21_14B = VapConfig(WAN21_I2V_14B_480P, RELEASED_MOT_LAYERS)
