"""Load a Wan DiT from official, diffusers, ComfyUI or Krea checkpoints (files or a state dict), strictly.

The layout is recognised from the keys (``wanflow.models.signature``), converted to the official
names (``dit_keys``), the derivative parts (VACE, ``ref_conv``, camera adapter) read off the
weights, the model is built on the meta device and the tensors are assigned to it
one by one, each cast to its dtype (fp32 islands stay fp32) on the way to the device: no random
init, and never a second copy of the weights or the whole model at the file's precision.

Scaled-fp8 checkpoints (fp8 tensors with ``<name>.scale_weight``) load the same way: kept in fp8
with ``storage="fp8"``, dequantised tensor by tensor otherwise (``wanflow.models.fp8``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import dit_config, fp8, fp8_scaled, signature
from wanflow.models.checkpoint_files import OpenedWeights, open_state_dict, open_weights
from wanflow.models.dit import WanDiT, keeps_fp32
from wanflow.models.dit_config import DitConfig
from wanflow.models.dit_keys import TO_OFFICIAL
from wanflow.models.json_file import read_json_object
from wanflow.models.loading import build_on_meta, rename_keys
from wanflow.models.storage_load import load_stored

log = structlog.get_logger(__name__)

PathLike = str | os.PathLike

#: How the weights are stored: all in the compute dtype, or the blocks' Linear weights in fp8.
Storage = Literal["compute", "fp8", "fp8-matmul"]


def load_dit(
    weights: PathLike | Sequence[PathLike] | Mapping[str, Tensor],
    config: DitConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attention_kernel: str = "sdpa",
    storage: Storage = "compute",
    architecture: str | None = None,
) -> WanDiT:
    """A ready WanDiT from a file, a sharded index/folder, a list of shards, or a state dict.

    Without ``config`` it is read from the ``config.json`` beside the weights (official or
    diffusers form), else from the weights' shapes (always so for a state dict). The model
    computes in ``dtype`` except its fp32 islands. ``storage="fp8"`` stores the blocks' Linear
    weights in float8 e4m3 with a scale (``wanflow.models.fp8``): taken as they are from a
    scaled-fp8 file, quantised tensor by tensor from any other; ``"fp8-matmul"`` also multiplies
    them in fp8 (``wanflow.models.fp8_matmul``). ``architecture`` (a family's
    name for its DiT, see ``signature.ARCHITECTURES``) refuses a file of another kind before
    anything is built. Mismatches raise ModelLoadError.
    """
    if storage not in fp8.STORAGES:
        raise ValueError(f"load_dit: storage={storage!r}; expected one of {fp8.STORAGES}")
    in_fp8 = fp8.stores_in_fp8(storage)
    if in_fp8:
        fp8.require_fp8(device)
    opened = _opened(weights)
    if architecture is not None:
        check_architecture(opened.state, architecture, opened.source)
    scaled = fp8_scaled.split_scales(official_state(opened.state, opened.source), opened.source)
    state = scaled.weights
    if config is None:
        config = _shapes_config(state, opened.source) if opened.borrowed else config_beside(
            weights_paths(weights)[0], state)
    model = build_on_meta(lambda: WanDiT(config, attention_kernel))
    expected = f"Wan {config.model_type.upper()} DiT ({describe_config(config)})"
    dtypes = _island_dtypes(dtype)
    load_stored(model, scaled, storage, source=opened.source, expected=expected, dtype=dtypes, device=device,
                borrowed=opened.borrowed)
    log.debug("dit_loaded", source=opened.source, model_type=config.model_type, dim=config.dim,
             dtype=str(dtype), storage=storage)
    return model


def describe_config(config: DitConfig) -> str:
    """'dim 1536, 30 layers, 16 input channels, 15 VACE blocks' for messages."""
    parts = [f"dim {config.dim}", f"{config.num_layers} layers", f"{config.in_dim} input channels"]
    parts += ["CLIP tokens"] if config.clip else []
    parts += [f"{len(config.vace_layers)} VACE blocks"] if config.vace_layers else []
    parts += ["ref_conv"] if config.ref_conv else []
    parts += ["camera adapter"] if config.camera_in_dim else []
    return ", ".join(parts)


def check_architecture(state: Mapping[str, Tensor], architecture: str, source: str) -> None:
    """Refuse a file whose keys and shapes are not the ``architecture`` a family asks for."""
    problem = signature.architecture_mismatch(architecture, signature.identify(state))
    if problem:
        raise ModelLoadError(
            f"{source}: this model {problem}. Point the component at the right checkpoint, or pick "
            "the family that matches the file."
        )


def _island_dtypes(dtype: torch.dtype):
    """Each parameter's dtype by name: fp32 for the fp32 islands, ``dtype`` for the rest."""
    return lambda name: torch.float32 if keeps_fp32(name) else dtype


def weights_paths(weights: PathLike | Sequence[PathLike]) -> list[Path]:
    """One path or several, as a list."""
    return [Path(p) for p in ([weights] if isinstance(weights, (str, os.PathLike)) else weights)]


def _opened(weights: PathLike | Sequence[PathLike] | Mapping[str, Tensor]) -> OpenedWeights:
    """A state dict as it is; files read lazily and merged."""
    if isinstance(weights, Mapping):
        return open_weights(weights)
    files = weights_paths(weights)
    if not files:
        raise ModelLoadError("load_dit: no checkpoint file given; pass a file, shards or a state dict.")
    return OpenedWeights(_merged(files), ", ".join(str(f) for f in files), borrowed=False)


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
        return _shapes_config(state, str(path))
    config = read_config(config_file, has_clip="img_emb.proj.0.weight" in state)
    return dit_config.with_parts(config, {k: tuple(v.shape) for k, v in state.items()}, str(config_file))


def _shapes_config(state: Mapping[str, Tensor], source: str) -> DitConfig:
    """The architecture read off the weights' shapes, for weights without a config.json."""
    log.info("dit_config_from_shapes", source=source, note="no config.json; head_dim 128 assumed")
    return dit_config.from_shapes({k: tuple(v.shape) for k, v in state.items()}, source)


def read_config(config_file: Path, *, has_clip: bool) -> DitConfig:
    """Parse an official or diffusers config.json; whether i2v uses CLIP comes from the weights."""
    doc = read_json_object(config_file)
    if "num_attention_heads" in doc:
        return dit_config.from_diffusers(doc, str(config_file))
    clip = has_clip if doc.get("model_type") == "i2v" else None
    return dit_config.from_official(doc, str(config_file), clip=clip)
