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
from typing import Literal

import structlog
import torch
from torch import Tensor, nn

from wanflow.errors import ModelLoadError, WanflowError
from wanflow.models.checkpoint_files import capped
from wanflow.models.fp8_matmul import multipliable, scaled_linear
from wanflow.models.precision import Linear, linear

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
