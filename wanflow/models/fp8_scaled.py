"""Scaled-fp8 checkpoints: reading their weights and scales, and loading any checkpoint into a model
under fp8 storage (``wanflow.models.fp8``'s layer).

A ComfyUI-style scaled-fp8 file holds each block projection's weight in fp8 beside a float32
scale (``<module>.scale_weight`` or ``.weight_scale``; one per tensor, row or block of a row) and
an empty ``scaled_fp8`` marker whose dtype names the format. ``split_scales`` separates the
scales from the weights and checks them; ``load_scaled`` loads weights of any kind (bf16/fp32 to
be quantised tensor by tensor, scaled fp8 used as it is, a plain fp8 cast) into a model built on
the meta device, each tensor placed where the caller says (``placed_at``: a streamed block's
tiers), never holding a second copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import structlog
import torch
from torch import Tensor, nn

from wanflow.errors import ModelLoadError
from wanflow.models import signature
from wanflow.models.checkpoint_files import capped
from wanflow.models.fp8 import (
    DEFAULT_GRANULARITY,
    Fp8Linear,
    Granularity,
    canonical_scale,
    canonical_shape,
    check_scale,
    dequantise,
    fp8_layers,
    is_fp8,
    quantise,
    quantise_scale,
    use_fp8_storage,
)
from wanflow.models.loading import mismatch_report
from wanflow.models.residency import place, place_all

log = structlog.get_logger(__name__)

#: The marker key of ComfyUI-style scaled-fp8 files (an empty tensor whose dtype names the format).
MARKER = "scaled_fp8"
#: Suffixes of a weight's scale, replacing ``.weight``: ComfyUI's, and the spelling some files use.
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
#: Activation scales, used only by fp8 matmuls: dequantised weights compute without them.
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")


@attrs.frozen
class ScaledState:
    """A checkpoint's tensors with its scales taken apart (official key names).

    ``scales`` maps a weight's key to its scale (stored value x scale = weight). ``marked``: the
    file carries the ``scaled_fp8`` marker.
    """

    weights: dict[str, Tensor]
    scales: dict[str, Tensor]
    marked: bool

    @property
    def quantised(self) -> bool:
        """Whether any tensor is in fp8 or scaled: loading must then go through ``load_scaled``."""
        return bool(self.scales) or any(is_fp8(t.dtype) for t in self.weights.values())


def split_scales(state: Mapping[str, Tensor], source: str) -> ScaledState:
    """Take the marker and the scales out of an official-layout state, checking that they fit.

    A file that is scaled (a marker or any scale) must scale every fp8 tensor: a missing scale
    would silently multiply that layer by the wrong factor. A file with fp8 tensors and no scale at
    all is a plain cast (scale 1), as several Wan fp8 releases are.
    """
    weights, scales, unused = {}, {}, []
    for key, tensor in state.items():
        suffix = next((s for s in SCALE_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            weight_key = key.removesuffix(suffix) + ".weight"
            if weight_key in scales:
                raise ModelLoadError(f"{source}: {weight_key} has two scales (both spellings, "
                                     f"{' and '.join(SCALE_SUFFIXES)}); the file is inconsistent.")
            scales[weight_key] = tensor
        elif key.endswith(INPUT_SCALE_SUFFIXES):
            unused.append(key)
        elif key != MARKER:
            weights[key] = tensor
    _check_scales(weights, scales, marked=MARKER in state, source=source)
    if unused:
        log.info("fp8_input_scales_unused", source=source, count=len(unused),
                 why="weights are dequantised before the matmul, which then needs no input scale")
    if scales or MARKER in state:
        log.debug("scaled_fp8_checkpoint", source=source, scales=len(scales), marked=MARKER in state)
    return ScaledState(weights, scales, marked=MARKER in state)


def _check_scales(weights: Mapping[str, Tensor], scales: Mapping[str, Tensor], *, marked: bool,
                  source: str) -> None:
    """Every scale belongs to a weight and fits its shape; a scaled file scales every fp8 tensor."""
    orphans = [k for k in scales if k not in weights]
    bad = [why for k, s in scales.items() if k in weights
           and (why := check_scale(k, s, tuple(weights[k].shape)))]
    if orphans or bad:
        detail = (f"scales without a weight: {capped(orphans)}" if orphans else "") + \
                 ("; " if orphans and bad else "") + "; ".join(bad[:4])
        raise ModelLoadError(f"{source}: malformed scaled-fp8 checkpoint ({detail}). "
                             "Fetch or convert the file again.")
    unscaled = [k for k, t in weights.items() if is_fp8(t.dtype) and k not in scales]
    if unscaled and (marked or scales):
        what = "the scaled_fp8 marker" if marked else f"{len(scales)} scales"
        raise ModelLoadError(
            f"{source}: a scaled-fp8 checkpoint (it has {what}), but {len(unscaled)} fp8 tensors "
            f"have no '<name>.scale_weight': {capped(unscaled)}. Without its scale a layer's "
            "weights are off by an unknown factor, so nothing is loaded. The file is incomplete "
            "or mixes two formats: fetch it again, or convert the original bf16 weights."
        )


def load_scaled(
    model: nn.Module, scaled: ScaledState, *, source: str, expected: str,
    dtype: Callable[[str], torch.dtype], device: torch.device | str, borrowed: bool, fp8: bool,
    granularity: Granularity = DEFAULT_GRANULARITY,
    placed_at: Callable[[str], torch.device | str | None] | None = None,
) -> None:
    """Load a model built on meta, tensor by tensor, from a state that may hold fp8 and scales.

    ``fp8``: the layers ``stores_fp8`` names become Fp8Linear; their weights keep the file's fp8
    bytes and scales, or are quantised here (one tensor at a time, from a copy at the file's
    precision). Every other tensor takes ``dtype(key)``; an fp8 one is dequantised on the way.
    Keys and shapes are checked before any tensor is read. ``placed_at``: each tensor's device
    instead of ``device`` (`memory.streamed`: host-tier blocks in host memory); None leaves it on
    meta, to be read from the file when it runs, and an fp8 layer's scale is then still placed
    on ``device`` (scales are tiny and stay resident).
    """
    if fp8:
        use_fp8_storage(model)
    layers = {f"{name}.weight": layer for name, layer in fp8_layers(model).items()}
    for key, layer in layers.items():
        layer.set_scale_shape(_scale_shape(scaled, key, layer.out_features, granularity))
    _check_fits(model, scaled, layers, source, expected)
    where = (lambda key: device) if placed_at is None else placed_at
    placed: dict[str, Tensor] = {}
    later = set()
    for key, tensor in scaled.weights.items():
        scale, at = scaled.scales.get(key), where(key)
        if at is None:
            later.add(key)
            if key in layers:  # only its scale now
                placed[scale_key(key)] = place(_scale_of(key, tensor, scale, granularity, source), torch.float32,
                                               device)
        elif key in layers:
            placed |= _fp8_weight(key, tensor, scale, at, borrowed, granularity, source)
        elif scale is not None or is_fp8(tensor.dtype):
            value = _dequantised(tensor, scale, dtype(key), borrowed)
            placed[key] = place(value, dtype(key), at)
    rest = {k: t for k, t in scaled.weights.items() if k not in placed and k not in later}
    for at in {str(where(k)) for k in rest}:
        placed |= place_all({k: t for k, t in rest.items() if str(where(k)) == at}, dtype, at, borrowed=borrowed)
    model.load_state_dict(placed, strict=placed_at is None, assign=True)
    log.debug("fp8_weights_loaded", source=source, fp8_layers=len(layers), granularity=granularity)


def _scale_of(key: str, tensor: Tensor, scale: Tensor | None, granularity: Granularity, source: str) -> Tensor:
    """The float32 scale ``_fp8_weight`` gives a layer, without storing its weight: the file's
    (an fp8 weight), or the one its quantisation takes (read once, nothing kept)."""
    if is_fp8(tensor.dtype):
        return canonical_scale(scale.clone()) if scale is not None else torch.ones(())
    work = _dequantised(tensor, scale, torch.float32, True) if scale is not None else tensor
    try:
        return quantise_scale(work, granularity)
    except ValueError as err:
        raise ModelLoadError(f"{source}: {key} cannot be stored in fp8 ({err}); the checkpoint is corrupt.") from None


def scale_key(weight_key: str) -> str:
    """``blocks.0.self_attn.q.weight`` -> ``blocks.0.self_attn.q.scale_weight``."""
    return weight_key.removesuffix("weight") + "scale_weight"


def _scale_shape(
    scaled: ScaledState, key: str, out_features: int, granularity: Granularity,
) -> tuple[int, ...]:
    """The scale a layer will hold: the file's (fp8 weights), 1 (unscaled fp8), or wanflow's own."""
    tensor = scaled.weights.get(key)
    if tensor is not None and is_fp8(tensor.dtype):
        scale = scaled.scales.get(key)
        return canonical_shape(tuple(scale.shape)) if scale is not None else ()
    return () if granularity == "tensor" else (out_features, 1)


def _check_fits(
    model: nn.Module, scaled: ScaledState, layers: Mapping[str, Fp8Linear], source: str,
    expected: str,
) -> None:
    """Missing, unexpected and mis-shaped keys, as every loader reports them (scales included)."""
    given = dict(scaled.weights) | {scale_key(k): layer.scale_weight for k, layer in layers.items()}
    report = mismatch_report(model.state_dict(keep_vars=True), given)
    if report:
        looks = signature.identify(scaled.weights).describe()
        raise ModelLoadError(
            f"{source}: does not fit {expected}:\n{report}\nThis file looks like {looks}. Point "
            "this component at the right file, or choose the model family that matches the file."
        )


def _fp8_weight(
    key: str, tensor: Tensor, scale: Tensor | None, device: torch.device | str, borrowed: bool,
    granularity: Granularity, source: str,
) -> dict[str, Tensor]:
    """An fp8 layer's weight and scale on the device: the file's fp8 bytes, or quantised here."""
    if is_fp8(tensor.dtype):
        weight = place_all({key: tensor}, None, device, borrowed=borrowed)[key]
        own_scale = _own(scale, borrowed) if scale is not None else torch.ones(())
        return {key: weight, scale_key(key): place(canonical_scale(own_scale), torch.float32, device)}
    if scale is not None:  # a scaled weight that is not fp8: quantise what it stands for
        work = _dequantised(tensor, scale, torch.float32, borrowed)
    else:
        work = _own(tensor, borrowed)  # a copy at the file's precision (its mapped pages released)
    try:
        stored, new_scale = quantise(work, granularity)
    except ValueError as err:
        raise ModelLoadError(
            f"{source}: {key} cannot be stored in fp8 ({err}); the checkpoint is corrupt."
        ) from None
    del work
    return {key: place(stored, stored.dtype, device),
            scale_key(key): place(new_scale, torch.float32, device)}


def _dequantised(tensor: Tensor, scale: Tensor | None, dtype: torch.dtype, borrowed: bool) -> Tensor:
    """stored x scale in ``dtype``, by the same arithmetic as Fp8Linear's forward."""
    own_scale = canonical_scale(_own(scale, borrowed)) if scale is not None else torch.ones(())
    return dequantise(_own(tensor, borrowed), own_scale.to(tensor.device), dtype)


def _own(tensor: Tensor, borrowed: bool) -> Tensor:
    """The tensor in memory of its own, where it is and in its dtype (a file's pages released)."""
    return place_all({"": tensor}, None, None, borrowed=borrowed)[""]
