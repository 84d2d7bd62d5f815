"""LoRAs applied to a model: merged into its weights, or on the fly with its weights untouched.

``merge`` writes W + Σ scale·ΔW into each patched parameter, once, before sampling: every
forward then costs what the base model costs. It is for weights that are plain and resident and
owned by the job that patches them. ``attach`` leaves every weight as it is and adds the LoRAs
in each forward: for weights stored in fp8, streamed in and out by a memory policy, or pooled
and shared with jobs that run without the LoRA. ``handle.remove()`` gives back the model exactly
as it was.

Rounding. Each patched value is computed in fp32 (W upcast, each ΔW added in the LoRAs' order)
and rounded once to the parameter's dtype. Adding ΔW in bf16 would round after every LoRA, and a
change smaller than half a bf16 step of W (8 bits of mantissa: |ΔW| < |W|/512, common for a
distillation LoRA at a low scale) would vanish altogether. Rounding once gives the bf16 value
nearest the exact sum, and keeps each parameter's dtype, so fp32 islands stay fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor, nn

from wanflow.errors import ModelInputError
from wanflow.lora.delta import AnyDelta, LoraFile, LowRank
from wanflow.lora.report import PatchReport, plan_patches
from wanflow.models.precision import linear

#: (delta, scale) pairs patching one parameter, in the order of the LoRAs.
Terms = list[tuple[AnyDelta, float]]
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def merge(
    model: nn.Module, loras: Sequence[LoraFile], scales: Sequence[float], *,
    model_name: str = "", labels: Sequence[str] | None = None,
) -> PatchReport:
    """Add scale·ΔW of each LoRA, in order, to the model's parameters in place.

    Everything is planned (and every error raised) before the first weight changes. ΔW is built
    on each parameter's own device, from factors moved there (small), one parameter at a time.
    """
    report, terms = _plan(model, loras, scales, model_name, labels)
    params = dict(model.named_parameters())
    stored = [name for name in terms if params[name].dtype not in COMPUTE_DTYPES]
    if stored:
        raise ModelInputError(
            f"{len(stored)} parameters the LoRA patches are stored in {params[stored[0]].dtype} (fp8 "
            f"storage, e.g. {stored[0]}): merged, the LoRA would be lost in their rounding; apply it on "
            "the fly (attach), as the pipeline does for fp8 weights")
    with torch.no_grad():
        for name, pairs in terms.items():
            params[name].copy_(patched_value(params[name], pairs))
    return report


def attach(
    model: nn.Module, loras: Sequence[LoraFile], scales: Sequence[float], *,
    model_name: str = "", labels: Sequence[str] | None = None,
) -> AttachedLoras:
    """Apply the LoRAs in every forward without changing any weight; returns the handle.

    A LowRank delta of a Linear weight adds ``x @ (scale·down)ᵀ @ upᵀ`` to the layer's output
    (a forward hook): two thin GEMMs, ΔW never formed. Every other delta (LoHa, LoKr, Full, LoRA
    on a conv, biases, norms, modulation) is materialised: a pre-hook on the module owning the
    parameter puts ``patched_value`` (W + ΔW, as ``merge`` computes it) in the parameter's place
    for that call, and a hook run even when the forward raises puts the parameter back.
    """
    report, terms = _plan(model, loras, scales, model_name, labels)
    handles = []
    for name, pairs in terms.items():
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        linear_weight = isinstance(module, nn.Linear) and attr == "weight"
        low_rank = [(d, s) for d, s in pairs if linear_weight and isinstance(d, LowRank)]
        rest = [(d, s) for d, s in pairs if not (linear_weight and isinstance(d, LowRank))]
        if low_rank:
            handles.append(module.register_forward_hook(LowRankPath(low_rank, module.weight)))
        if rest and getattr(module, attr).dtype not in COMPUTE_DTYPES:
            kinds = sorted({type(d).__name__ for d, _ in rest})
            raise ModelInputError(
                f"{name} is stored in fp8: only low-rank LoRA factors can be applied to it on the fly, "
                f"and this LoRA has {', '.join(kinds)} deltas for it; set [memory].fp8 = false to use it")
        if rest:
            swap = Swap(attr, rest, getattr(module, attr).device)
            handles.append(module.register_forward_pre_hook(swap.put))
            # prepended, so attachments stacked on one module are undone last-in, first-out
            handles.append(module.register_forward_hook(swap.restore, prepend=True, always_call=True))
    return AttachedLoras(report, handles)


@attrs.define
class AttachedLoras:
    """The LoRAs ``attach`` applies on the fly; ``remove()`` (or leaving a ``with``) detaches them."""

    report: PatchReport
    handles: list

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __enter__(self) -> AttachedLoras:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def patched_value(param: Tensor, terms: Terms) -> Tensor:
    """W + Σ scale·ΔW, summed in fp32 in order on W's device, rounded once to W's dtype."""
    value = param.detach().to(torch.float32, copy=True)
    for delta, scale in terms:
        delta = on_device(delta, value.device).tensor()
        value.add_(delta.reshape(value.shape), alpha=scale)
    return value.to(param.dtype)


def _real(device: torch.device) -> torch.device:
    """Where factors can live: a block streamed by the memory policy holds meta placeholders
    between its calls, so its LoRA factors wait on the CPU and follow the weights when they come."""
    return torch.device("cpu") if device.type == "meta" else device


def on_device(delta: AnyDelta, device: torch.device) -> AnyDelta:
    """The delta with its factors on `device` (the factors move, so ΔW is built there)."""
    moved = {f.name: value.to(device) for f in attrs.fields(type(delta))
             if isinstance(value := getattr(delta, f.name), Tensor) and value.device != device}
    return attrs.evolve(delta, **moved) if moved else delta


class LowRankPath:
    """Forward hook of a Linear: its output plus x @ downᵀ @ upᵀ, the LoRA scales folded into down.

    Several LowRank deltas of one layer are stacked into one pair of rank Σr. The factors are kept
    in the weight's dtype (fp32 where the weight is stored in fp8) and follow the activations'
    device and dtype; the GEMMs go through ``precision.linear``, as the layer's own does."""

    def __init__(self, terms: Terms, weight: Tensor):
        dtype = weight.dtype if weight.dtype in COMPUTE_DTYPES else torch.float32
        down = torch.cat([d.down.float() * (d.scale * s) for d, s in terms])  # (R, in)
        up = torch.cat([d.up.float().flatten(1) for d, _ in terms], dim=1)  # (out, R)
        device = _real(weight.device)
        self.down, self.up = down.to(device, dtype), up.to(device, dtype)

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x = args[0]
        if (self.down.device, self.down.dtype) != (x.device, x.dtype):  # weights moved or cast
            self.down, self.up = self.down.to(x.device, x.dtype), self.up.to(x.device, x.dtype)
        return output + linear(linear(x, self.down), self.up)


class Swap:
    """Puts W + ΔW in a parameter's place for one call of its module, then the parameter back.

    A hook rather than ``torch.nn.utils.parametrize``: parametrize renames the parameter
    (``parametrizations.weight.original``) while attached, and names decide which parameters are
    fp32 islands and how the memory layer and ``state_dict`` find them. Here no name changes,
    nothing is stored beyond the factors, and ΔW exists only during the call."""

    def __init__(self, name: str, terms: Terms, device: torch.device):
        self.name, device = name, _real(device)
        self.device = device
        self.terms = [(on_device(d, device), s) for d, s in terms]
        self.saved: list[Tensor] = []

    def put(self, module: nn.Module, args: tuple) -> None:
        param = module._parameters[self.name]
        if param.device != self.device:  # the memory layer moved the weights: the factors follow
            self.device = param.device
            self.terms = [(on_device(d, param.device), s) for d, s in self.terms]
        self.saved.append(param)
        module._parameters[self.name] = patched_value(param, self.terms)

    def restore(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.saved:
            module._parameters[self.name] = self.saved.pop()


def _plan(
    model: nn.Module, loras: Sequence[LoraFile], scales: Sequence[float], model_name: str,
    labels: Sequence[str] | None,
) -> tuple[PatchReport, dict[str, Terms]]:
    """The report (raising on any problem) and, per patched parameter, its terms in LoRA order."""
    if len(loras) != len(scales):
        raise ValueError(f"{len(loras)} LoRAs but {len(scales)} scales")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    report = plan_patches(list(zip(loras, scales)), shapes, model_name, labels=labels)
    terms: dict[str, Terms] = {}
    for lora, patches in zip(loras, report.loras):
        if patches.scale == 0:  # a sweep's scale-0 point is the base model: nothing to add
            continue
        for name in patches.patched:
            terms.setdefault(name, []).append((lora.deltas[name], patches.scale))
    return report, terms

