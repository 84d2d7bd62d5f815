"""Load a Video-As-Prompt DiT from the released (diffusers-named) file or wanflow's own layout.

The release is one ``WanTransformer3DMOTModel`` checkpoint, usually sharded behind
``diffusion_pytorch_model.safetensors.index.json``. It is recognised by its reference-stream
keys (``*_mot_ref``), renamed by ``vap_keys``, and sized by its shapes; the ``config.json``
beside it, where there is one, gives the head count and the joined blocks, checked against the
weights. The model is built on the meta device and each tensor assigned on its way to the
device, fp32 islands kept in fp32, as ``dit_loader`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import signature, vap_config, vap_keys
from wanflow.models.checkpoint_files import (
    Checkpoint,
    OpenedWeights,
    merged_shards,
    open_weights,
)
from wanflow.models.json_file import read_json_object
from wanflow.models.loading import build_on_meta, load_state_into
from wanflow.models.vap import HeadTimestep, VapDiT
from wanflow.models.vap_config import MOT_PREFIX, VapConfig

log = structlog.get_logger(__name__)


def load_vap_dit(
    weights: Checkpoint | Sequence[str | os.PathLike], config: VapConfig | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", attention_kernel: str = "sdpa",
    head_timestep: HeadTimestep = "main",
) -> VapDiT:
    """A ready VapDiT from a checkpoint file, a sharded index or its folder, the shard files
    themselves (as a family's component lists them), or a state dict.

    Without ``config`` the sizes come from the config.json beside a file, else from the shapes
    (head width 128 assumed). A file that is not a Video-As-Prompt checkpoint raises
    ModelLoadError saying what it looks like. ``head_timestep="reference"`` reproduces
    DiffSynth 2.1.12's head modulation (see ``wanflow.models.vap``)."""
    opened = _opened(weights)
    state = wanflow_state(opened.state, opened.source)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if config is None:
        first = weights[0] if isinstance(weights, Sequence) and not isinstance(weights, str) else weights
        doc = None if opened.borrowed else released_config(Path(os.fspath(first)))
        config = (vap_config.from_shapes(shapes, opened.source) if doc is None
                  else vap_config.from_diffusers(doc, shapes, opened.source))
    model = build_on_meta(lambda: VapDiT(config, attention_kernel, head_timestep))
    expected = f"Video-As-Prompt DiT ({vap_config.describe(config)})"
    load_state_into(model, state, source=opened.source, expected=expected, device=device,
                    dtype=lambda name: torch.float32 if vap_config.keeps_fp32(name) else dtype,
                    borrowed=opened.borrowed)
    log.debug("vap_dit_loaded", source=opened.source, dim=config.dit.dim, dtype=str(dtype))
    return model


def _opened(weights: Checkpoint | Sequence[str | os.PathLike]) -> OpenedWeights:
    """One checkpoint as ``open_weights`` reads it, or shard files merged (a key twice is refused)."""
    if isinstance(weights, (Mapping, str, os.PathLike)):
        return open_weights(weights)
    if not weights:
        raise ModelLoadError("load_vap_dit: no checkpoint file given; pass the shards, their index or a folder.")
    state = merged_shards(weights)
    return OpenedWeights(state, ", ".join(str(w) for w in weights), borrowed=False)


def wanflow_state(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """The released layout or wanflow's, under wanflow's names; anything else is refused."""
    released = any(vap_keys.is_released_mot_key(k) for k in state)
    if released:
        return vap_keys.to_wanflow(state)
    if any(k.startswith(MOT_PREFIX) for k in state):
        return dict(state)
    raise ModelLoadError(
        f"{source}: not a Video-As-Prompt checkpoint: it has no reference-stream tensors (*_mot_ref, or "
        f"wanflow's mot.*); it looks like {signature.identify(state).describe()}. Point the Video-As-Prompt DiT "
        "at ByteDance/Video-As-Prompt-Wan2.1-14B's transformer/diffusion_pytorch_model*.safetensors "
        "(the index json or the folder)."
    )


#: The safetensors header entry where an exported file keeps its ``WanTransformer3DMOTModel``
#: config (the fields of the release's config.json), so a single file says its head count.
CONFIG_ENTRY = "config"


def released_config(path: Path) -> dict | None:
    """The config.json beside the weights, else the one a single exported file holds in its
    header (``CONFIG_ENTRY``), else None."""
    doc = config_json_beside(path)
    if doc is not None or path.is_dir() or path.suffix != ".safetensors" or not path.is_file():
        return doc
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(CONFIG_ENTRY)
    except (OSError, ValueError, RuntimeError):
        return None  # not readable as safetensors: loading says why
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path}: its header's {CONFIG_ENTRY!r} entry is not JSON ({err}).") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{path}: its header's {CONFIG_ENTRY!r} entry is not a JSON object.")
    return doc


def config_json_beside(path: Path) -> dict | None:
    """The config.json in the weights' folder (a folder, an index json or a file in it), or None."""
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    doc = read_json_object(config_file)
    return doc
