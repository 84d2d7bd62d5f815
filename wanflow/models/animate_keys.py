"""Animate's own parts in diffusers' ``WanAnimateTransformer3DModel`` layout -> the official keys.

The official layout (``face_adapter.fuser_blocks.N.linear1_kv``, ``motion_encoder.enc.net_app.
convs.i.conv2.1.weight``, ...) is wanflow's. diffusers renames every part and changes three
things besides names, which ``to_official`` undoes:
- the face blocks' joint ``linear1_kv`` is split into ``to_k`` and ``to_v`` (rejoined, keys first);
- the leaky-ReLU biases are stored (C,) instead of (1, C, 1, 1);
- the blur kernels are not stored (diffusers rebuilds them): the fixed kernel is put back.
The DiT's own keys go through ``dit_keys`` (they are diffusers' ``WanTransformer3DModel``
names) and are not touched here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models.full_training import ANIMATE_PARTS
from wanflow.models.animate_motion import blur_kernel
from wanflow.models.loading import rename_keys

#: The prefixes of Animate's parts, in both layouts.
PART_PREFIXES = ANIMATE_PARTS

#: diffusers -> official renames of the parts (regex, replacement); ``convs.{last}`` is added per file.
DIFFUSERS_TO_OFFICIAL: tuple[tuple[str, str], ...] = (
    (r"motion_encoder\.conv_in\.weight", "motion_encoder.enc.net_app.convs.0.0.weight"),
    (r"motion_encoder\.conv_in\.act_fn\.bias", "motion_encoder.enc.net_app.convs.0.1.bias"),
    (r"motion_encoder\.motion_network\.(\d+)\.(weight|bias)", r"motion_encoder.enc.fc.\1.\2"),
    (r"motion_encoder\.motion_synthesis_weight", "motion_encoder.dec.direction.weight"),
    (r"face_encoder\.(conv1_local|conv2|conv3)\.(weight|bias)", r"face_encoder.\1.conv.\2"),
    (r"face_adapter\.(\d+)\.to_q\.(weight|bias)", r"face_adapter.fuser_blocks.\1.linear1_q.\2"),
    (r"face_adapter\.(\d+)\.to_out\.(weight|bias)", r"face_adapter.fuser_blocks.\1.linear2.\2"),
    (r"face_adapter\.(\d+)\.norm_q\.weight", r"face_adapter.fuser_blocks.\1.q_norm.weight"),
    (r"face_adapter\.(\d+)\.norm_k\.weight", r"face_adapter.fuser_blocks.\1.k_norm.weight"),
)

#: ResBlock i of diffusers is ``convs.{i + 1}`` of the official encoder: (diffusers, official) suffixes.
RES_BLOCK_PAIRS: tuple[tuple[str, str], ...] = (
    ("conv1.weight", "conv1.0.weight"),
    ("conv1.act_fn.bias", "conv1.1.bias"),
    ("conv2.weight", "conv2.1.weight"),
    ("conv2.act_fn.bias", "conv2.2.bias"),
    ("conv_skip.weight", "skip.1.weight"),
)

#: The blur kernels of each official ResBlock (not stored by diffusers).
RES_BLOCK_KERNELS = ("conv2.0.kernel", "skip.0.kernel")

#: Face-block keys diffusers splits in two: (key, value) halves of ``linear1_kv``.
_KV = re.compile(r"face_adapter\.(\d+)\.to_([kv])\.(weight|bias)")
_RES = re.compile(r"motion_encoder\.res_blocks\.(\d+)\.(.+)")


def is_part(key: str) -> bool:
    """Whether a key (either layout) belongs to Animate's parts rather than to the DiT."""
    return key.startswith(PART_PREFIXES)


def to_official(parts: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """diffusers-layout Animate part tensors renamed, reshaped and completed to the official keys."""
    res_blocks = 1 + max((int(m.group(1)) for k in parts if (m := _RES.fullmatch(k))), default=-1)
    table = DIFFUSERS_TO_OFFICIAL + (
        (r"motion_encoder\.conv_out\.weight", f"motion_encoder.enc.net_app.convs.{res_blocks + 1}.weight"),
    )
    halves = {k: v for k, v in parts.items() if _KV.fullmatch(k)}
    out = rename_keys({_res_block_key(k): v for k, v in parts.items() if k not in halves}, table)
    out |= _joined_kv(halves, source)
    out = {k: v.reshape(1, -1, 1, 1) if _is_act_bias(k) else v for k, v in out.items()}
    for i in range(1, res_blocks + 1):
        out |= {f"motion_encoder.enc.net_app.convs.{i}.{name}": blur_kernel() for name in RES_BLOCK_KERNELS}
    return out


def _res_block_key(key: str) -> str:
    """A ResBlock key renamed; the official index is diffusers' plus one (``convs.0`` is the
    1x1 conv). Other keys, and names no ResBlock has, are kept (a strict load reports the latter)."""
    match = _RES.fullmatch(key)
    suffix = match and dict(RES_BLOCK_PAIRS).get(match.group(2))
    if not suffix:
        return key
    return f"motion_encoder.enc.net_app.convs.{int(match.group(1)) + 1}.{suffix}"


def _is_act_bias(key: str) -> bool:
    """Leaky-ReLU biases of the encoder convs (stored (1, C, 1, 1) officially)."""
    return key.startswith("motion_encoder.enc.net_app.convs.") and key.endswith(".bias")


def _joined_kv(halves: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """``to_k`` and ``to_v`` of each face block joined into ``linear1_kv`` (keys first)."""
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in halves.items():
        block, which, kind = _KV.fullmatch(key).groups()
        groups.setdefault((block, kind), {})[which] = value
    out = {}
    for (block, kind), pair in groups.items():
        if set(pair) != {"k", "v"}:
            missing = "to_v" if "k" in pair else "to_k"
            raise ModelLoadError(f"{source}: face_adapter.{block}.{missing}.{kind} is missing; the file is incomplete.")
        out[f"face_adapter.fuser_blocks.{block}.linear1_kv.{kind}"] = torch.cat([pair["k"], pair["v"]])
    return out
