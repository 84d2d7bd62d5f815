"""Load a Wan DiT from official, diffusers or ComfyUI checkpoints, strictly and lazily.

The layout is recognised from the keys (``wanflow.models.signature``), converted to the official
names (``dit_keys``), the model is built on the meta device and the mapped tensors are assigned
to it: no random init and no second copy of the weights.
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
from wanflow.models import dit_config, signature
from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import DitConfig
from wanflow.models.dit_keys import COMFYUI_TO_OFFICIAL, DIFFUSERS_TO_OFFICIAL
from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.loading import build_on_meta, load_state_into, rename_keys
from wanflow.models.residency import materialize

log = structlog.get_logger(__name__)

PathLike = str | os.PathLike

#: Layout -> the key table that turns it into the official layout.
TO_OFFICIAL = {"official": (), "diffusers": DIFFUSERS_TO_OFFICIAL, "comfyui": COMFYUI_TO_OFFICIAL}


def load_dit(
    paths: PathLike | Sequence[PathLike],
    config: DitConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attention_kernel: str = "sdpa",
) -> WanDiT:
    """A ready WanDiT from a file, a sharded index/folder or a list of shards.

    Without ``config`` it is read from the ``config.json`` beside the weights (official or
    diffusers form), else from the weights' shapes. Mismatches raise ModelLoadError.
    """
    files = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    source = ", ".join(str(f) for f in files)
    state = official_state(_merged(files), source)
    if config is None:
        config = config_beside(files[0], state)
    model = build_on_meta(lambda: WanDiT(config, attention_kernel))
    expected = (
        f"Wan {config.model_type.upper()} DiT (dim {config.dim}, {config.num_layers} layers, "
        f"{config.in_dim} input channels{', CLIP tokens' if config.clip else ''})"
    )
    load_state_into(model, state, source=source, expected=expected, device=device)
    log.info("dit_loaded", source=source, model_type=config.model_type, dim=config.dim, dtype=str(dtype))
    model.set_compute_dtype(dtype)
    return materialize(model) if torch.device(device).type == "cpu" else model


def official_state(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename any supported layout to official keys, refusing files that are not a Wan DiT."""
    found = signature.identify(state)
    if found.kind != "dit":
        raise ModelLoadError(f"{source}: expected a Wan DiT checkpoint, but this is {found.describe()}.")
    return rename_keys(state, TO_OFFICIAL[found.layout])


def _merged(files: Sequence[Path]) -> dict[str, Tensor]:
    """Every file's tensors in one dict; a key in two files is an error."""
    state: dict[str, Tensor] = {}
    for path in files:
        part = open_state_dict(path)
        twice = sorted(set(part) & set(state))
        if twice:
            raise ModelLoadError(
                f"{path}: repeats keys of an earlier file ({twice[:4]}); pass each shard once."
            )
        state.update(part)
    return state


def config_beside(path: Path, state: Mapping[str, Tensor]) -> DitConfig:
    """The config.json next to the weights, or (for single files without one) the weights' shapes."""
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        log.info("dit_config_from_shapes", source=str(path), note="no config.json; head_dim 128 assumed")
        return dit_config.from_shapes({k: tuple(v.shape) for k, v in state.items()}, str(path))
    return read_config(config_file, has_clip="img_emb.proj.0.weight" in state)


def read_config(config_file: Path, *, has_clip: bool) -> DitConfig:
    """Parse an official or diffusers config.json; whether i2v uses CLIP comes from the weights."""
    try:
        doc = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_file}: unreadable config ({err}); fetch it again.") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{config_file}: expected a JSON object, got {type(doc).__name__}.")
    if "num_attention_heads" in doc:
        return dit_config.from_diffusers(doc, str(config_file))
    clip = has_clip if doc.get("model_type") == "i2v" else None
    return dit_config.from_official(doc, str(config_file), clip=clip)
