"""fp8 weight storage for the DiT's block projections, computed in the activations' dtype.

A 14B DiT is 29 GB in bf16 and 15 GB with its block projections stored as float8 e4m3: the one
change that lets its weights fit a 24 GB card at all. Only storage changes: each forward turns
the layer's weight back into the activations' dtype (``weight.to(dtype) * scale``, one layer at a
time) and multiplies there, so kernels, accumulation and every other layer stay as they were.

What is stored in fp8: the weight of every Linear inside ``blocks.N`` (self- and cross-attention
q/k/v/o, the image k/v of I2V, both FFN layers): about 98 % of any released Wan DiT's weights.
What is not: biases, norms, the modulation tables and the patch embedding (small, and the norms
and modulation scale every token); the text and image embeddings (the first layers the
conditioning meets, outside the blocks); the fp32 islands (time embedding, time projection,
head), which stay fp32 for the same reason they are fp32 at all.

Each weight carries a float32 ``scale_weight`` (stored value x scale = weight): one per output
row. An e4m3 number has 4 significant bits, so its relative rounding error does not depend on
the scale; what the scale decides is which values fall below e4m3's normal range (2^-6 of the
largest value) and lose precision there. A scale per row keeps a row of small weights from being
measured against the largest weight of the whole matrix; ``benchmarks/fp8_error.py`` measures
the difference (docs/fp8.md). Checkpoints that carry one scale per tensor (ComfyUI's scaled fp8)
or per block of a row load as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Literal

import attrs
import structlog
import torch
from torch import Tensor, nn

from wanflow.errors import ModelLoadError, WanflowError
from wanflow.models import signature
from wanflow.models.checkpoint_files import capped
from wanflow.models.fp8_matmul import multipliable, scaled_linear
from wanflow.models.loading import mismatch_report
from wanflow.models.precision import Linear, linear
from wanflow.models.residency import place, place_all

log = structlog.get_logger(__name__)

#: The dtype weights are quantised to: 4 exponent bits, 3 mantissa bits, finite (no inf), max 448.
FP8_DTYPE_NAME = "float8_e4m3fn"
#: The largest finite e4m3fn value: a row's largest weight maps onto it.
FP8_MAX = 448.0

#: How a DiT's block projections are held and multiplied: in the compute dtype; stored in fp8 and
#: multiplied in the compute dtype ([memory].fp8); stored and multiplied in fp8 (and
#: [runtime].fp8_matmul). The denoise steps key this value.
STORAGES = ("compute", "fp8", "fp8-matmul")


def stores_in_fp8(storage: str) -> bool:
    """Whether a ``storage`` value keeps the block projections in fp8."""
    return storage in ("fp8", "fp8-matmul")


#: Which scale a weight gets when wanflow quantises it: one per output row, or one per tensor.
Granularity = Literal["row", "tensor"]
DEFAULT_GRANULARITY: Granularity = "row"  # measured: see the module docstring and docs/fp8.md

#: State-dict keys of the weights stored in fp8: every Linear inside the DiT's blocks (a Wan DiT's,
#: and LongCat-Video's own names: its fused qkv, kv_linear and SwiGLU; its adaLN modulation is an fp32 island).
FP8_WEIGHT_KEY = re.compile(
    r"blocks\.\d+\.(?:(?:self_attn|cross_attn)\.(?:q|k|v|o|k_img|v_img)|ffn\.[02]"
    r"|attn\.(?:qkv|proj)|cross_attn\.(?:q_linear|kv_linear|proj)|ffn\.w[123])\.weight"
)

#: Rows of a weight quantised at once: bounds the fp32 temporaries to 16 MiB at any size.
QUANT_BLOCK_ELEMENTS = 1 << 22


class Fp8UnsupportedError(WanflowError):
    """fp8 storage was asked where torch cannot do it (no float8 dtypes, or none on the device)."""


def stores_fp8(key: str) -> bool:
    """Whether a DiT parameter (official state-dict name) is stored in fp8."""
    return FP8_WEIGHT_KEY.fullmatch(key) is not None


def fp8_dtype() -> torch.dtype:
    """torch.float8_e4m3fn, or Fp8UnsupportedError on a torch that has no float8 dtypes."""
    dtype = getattr(torch, FP8_DTYPE_NAME, None)
    if not isinstance(dtype, torch.dtype):
        raise Fp8UnsupportedError(
            f"fp8 weight storage needs torch.{FP8_DTYPE_NAME}, which torch {torch.__version__} "
            "does not have (float8 dtypes arrived in torch 2.1). Upgrade torch, or store the "
            "weights in bf16 instead of fp8."
        )
    return dtype


def is_fp8(dtype: torch.dtype) -> bool:
    """Whether a dtype is one of torch's float8 formats (e4m3fn, e5m2, ...)."""
    return str(dtype).startswith("torch.float8_")


def require_fp8(device: torch.device | str) -> None:
    """Refuse, before anything loads, fp8 storage that torch cannot cast on ``device``."""
    dtype = fp8_dtype()
    try:
        probe = torch.zeros(2, device=device).to(dtype)
        probe.to(torch.bfloat16)
    except Exception as err:  # noqa: BLE001 - whatever stops the probe stops fp8 on this device
        raise Fp8UnsupportedError(
            f"fp8 weight storage: torch {torch.__version__} cannot cast to and from {dtype} on "
            f"device {device!r} ({str(err).splitlines()[0][:160]}). Store the weights in bf16 "
            "on this device, or use a device (CPU, CUDA) whose torch supports float8."
        ) from None


# ----------------------------------------------------------------------------- quantisation


def quantise(
    weight: Tensor, granularity: Granularity = DEFAULT_GRANULARITY,
) -> tuple[Tensor, Tensor]:
    """(e4m3fn weight, float32 scale) with weight ~ stored * scale, on the weight's device.

    The scale is ``amax / 448`` of each row ((out, 1)) or of the tensor (0-d), 1 where that amax
    is 0; values are rounded to nearest. Rows are processed in blocks, so the float32 working
    copies stay under QUANT_BLOCK_ELEMENTS elements whatever the weight's size.
    """
    scale = quantise_scale(weight, granularity)
    return quantised_with(weight, scale), scale


def quantise_scale(weight: Tensor, granularity: Granularity = DEFAULT_GRANULARITY) -> Tensor:
    """The float32 scale ``quantise`` gives ``weight``: ``amax / 448`` per row (out, 1) or per
    tensor (0-d), 1 where that amax is 0."""
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"quantise: expected a 2-D floating weight, not {weight.dtype} "
                         f"{tuple(weight.shape)}")
    step = max(1, QUANT_BLOCK_ELEMENTS // max(1, weight.shape[1]))
    amax = torch.cat([weight[r:r + step].float().abs().amax(dim=1, keepdim=True)
                      for r in range(0, weight.shape[0], step)])  # (out, 1)
    if granularity == "tensor":
        amax = amax.amax()
    if not torch.isfinite(amax).all():
        raise ValueError("quantise: the weight holds inf or NaN values")
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def quantised_with(weight: Tensor, scale: Tensor) -> Tensor:
    """``weight`` in e4m3fn under a known ``scale`` (``quantise_scale``'s): the bytes ``quantise``
    stores, so a block quantised again at each read from its file equals the one quantised at load."""
    step = max(1, QUANT_BLOCK_ELEMENTS // max(1, weight.shape[1]))
    stored = torch.empty(weight.shape, dtype=fp8_dtype(), device=weight.device)
    rows = scale.expand(weight.shape[0], 1)
    for r in range(0, weight.shape[0], step):
        block = weight[r:r + step].float() / rows[r:r + step]
        stored[r:r + step] = block.clamp_(-FP8_MAX, FP8_MAX)
    return stored


def dequantise(stored: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``stored.to(dtype) * scale``, the scale per tensor, per row (out, 1) or per block (out, n, 1).

    fp8 -> bf16/fp16/fp32 is exact; the product is rounded once to ``dtype``.
    """
    out_features = stored.shape[0]
    scale = scale.to(dtype)
    if scale.ndim == 3:  # blocks of each row: (out, n_blocks, 1)
        blocks = stored.to(dtype).view(out_features, scale.shape[1], -1)
        return (blocks * scale).view(stored.shape)
    return stored.to(dtype) * scale


def check_scale(key: str, scale: Tensor, weight_shape: tuple[int, ...]) -> str | None:
    """Why ``scale`` cannot scale a weight of ``weight_shape`` (None when it can)."""
    shape, rows = tuple(scale.shape), weight_shape[0] if weight_shape else 0
    if not scale.is_floating_point() or is_fp8(scale.dtype):
        return f"{key}: scale of dtype {scale.dtype}; expected float32, bf16 or fp16"
    if scale.numel() == 1:
        return None
    per_row = shape in ((rows,), (rows, 1))
    per_block = len(shape) == 3 and shape[0] == rows and shape[2] == 1 \
        and len(weight_shape) == 2 and weight_shape[1] % shape[1] == 0
    if len(weight_shape) == 2 and (per_row or per_block):
        return None
    return (f"{key}: scale of shape {shape} is neither one scale, one per row ({rows}, 1) nor one "
            f"per block of each row ({rows}, n, 1) of the weight {weight_shape}")


def canonical_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """How a layer keeps a scale: 0-d per tensor, (out, 1) per row, (out, n, 1) per block of a row."""
    if math.prod(shape) == 1:
        return ()
    return (shape[0], 1) if len(shape) == 1 else shape


def canonical_scale(scale: Tensor) -> Tensor:
    """A checkpoint's scale as float32 in its canonical shape."""
    return scale.float().reshape(canonical_shape(tuple(scale.shape)))


# ----------------------------------------------------------------------------- the layer


class Fp8Linear(Linear):
    """A Linear whose weight is stored in float8 with a float32 ``scale_weight`` buffer.

    Same keys as the layer it replaces, plus ``<name>.scale_weight``: the scaled-fp8 checkpoint
    layout. Each forward dequantises the weight to the activations' dtype, then runs the layer's
    usual GEMM (``precision.linear``); with ``matmul = "fp8"`` (``use_fp8_matmul``) it multiplies
    the fp8 weight itself, its input quantised token by token (``wanflow.models.fp8_matmul``).
    The bias stays in the model's dtype. The weight never requires grad (fp8 storage is for
    frozen weights; LoRAs attach on top of it).
    """

    scale_weight: Tensor
    #: How the forward multiplies: "dequantise" (in the activations' dtype) or "fp8".
    matmul: str = "dequantise"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        nn.Module.__init__(self)  # not Linear's: it would allocate a full-precision weight
        self.in_features, self.out_features = in_features, out_features
        stored = torch.empty(out_features, in_features, dtype=fp8_dtype(), device=device)
        self.weight = nn.Parameter(stored, requires_grad=False)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        self.register_buffer("scale_weight", torch.ones(out_features, 1, device=device))

    def reset_parameters(self) -> None:
        """Nothing to initialise: an fp8 layer only ever holds loaded weights."""

    def set_scale_shape(self, shape: tuple[int, ...]) -> None:
        """Expect a checkpoint's scale of this shape (before loading: the shapes are checked)."""
        self.scale_weight = torch.empty(shape, device=self.scale_weight.device)

    def dequantised(self, dtype: torch.dtype) -> Tensor:
        """The weight in ``dtype`` (a temporary the size of this one layer)."""
        return dequantise(self.weight, self.scale_weight, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.matmul == "fp8":
            return scaled_linear(x, self.weight, self.scale_weight, self.bias)
        return linear(x, self.dequantised(x.dtype), self.bias)

    def extra_repr(self) -> str:
        scale = tuple(self.scale_weight.shape)
        return f"{super().extra_repr()}, storage={self.weight.dtype}, scale={scale}, matmul={self.matmul}"


def use_fp8_storage(model: nn.Module) -> list[str]:
    """Replace every Linear whose weight ``stores_fp8`` with an Fp8Linear, in place; their names.

    Meant for a model built on the meta device, before its weights load: the new layers are
    empty shells of the same shape (and bias) on the same device.
    """
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and not isinstance(module, Fp8Linear)
             and stores_fp8(f"{name}.weight")]
    for name in names:
        old = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        layer = Fp8Linear(old.in_features, old.out_features, bias=old.bias is not None,
                          device=old.weight.device, dtype=old.weight.dtype)
        setattr(model.get_submodule(parent_name), child, layer)
    return names


def use_fp8_matmul(model: nn.Module, source: str) -> int:
    """Make every fp8 layer of a loaded model multiply in fp8; how many there are.

    Refused (ModelLoadError, nothing changed) where a layer's scale or shape does not suit the
    fp8 kernels: a checkpoint that scales blocks of a row.
    """
    layers = fp8_layers(model)
    unfit = [f"{name}: {why}" for name, layer in layers.items()
             if (why := multipliable(layer.weight, layer.scale_weight))]
    if unfit:
        raise ModelLoadError(f"{source}: [runtime].fp8_matmul cannot multiply these layers in fp8: "
                             f"{capped(unfit)}. Set fp8_matmul = false (the weights stay fp8 and are "
                             "multiplied in the compute dtype), or use a file with one scale per row.")
    for layer in layers.values():
        layer.matmul = "fp8"
    return len(layers)


def fp8_layers(model: nn.Module) -> dict[str, Fp8Linear]:
    """The model's fp8 layers by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Fp8Linear)}


# ----------------------------------------------------------------------------- scaled-fp8 files

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
