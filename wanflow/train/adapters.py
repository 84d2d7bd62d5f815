"""What a training run trains: LoRA adapters injected by peft, or whole components.

LoRA: peft's ``LoraConfig`` + ``inject_adapter_in_model`` on the DiT, DiffSynth's way (A Kaiming,
B zero, so the first step starts from the base model; suffix matching of the target names).
Optionally the adapter starts from a LoRA file (``lora_init``) and a preset LoRA is merged into
the base first (differential training). The trained factors keep peft's names
(``<module>.lora_A.default.weight``); the export step writes them in any LoRA dialect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from wanflow.errors import ModelInputError
from wanflow.lora.delta import LowRank

ADAPTER = "default"


def inject_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float, seed: int,
                device: torch.device | str | None = None) -> list[str]:
    """Add a LoRA adapter on every Linear whose name ends with a target; freeze everything else.

    Returns the names of the adapted modules. Peft's initialisation draws from the global RNG,
    so it runs under a fork of it seeded by ``seed``: the same recipe gives the same start.
    ``device``: where every factor lives, whatever its base weight's place (peft creates a factor
    beside its base weight: a streamed block's base may be in host memory or a meta placeholder,
    and the factors, which train, stay on the compute device).
    """
    from peft import LoraConfig, inject_adapter_in_model

    matched = adapted_modules(model, targets)
    if not matched:
        raise ModelInputError(f"[train].lora_targets = {list(targets)} match no Linear layer of the DiT; "
                              "use names such as q, k, v, o, ffn.0, ffn.2")
    excluded = lora_excluded(model)
    more = {"exclude_modules": "(" + "|".join(re.escape(p) for p in excluded) + ").*"} if excluded else {}
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                        init_lora_weights=True, **more)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        _fp32_adapters(model, seed, device)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return matched


def _fp32_adapters(model: nn.Module, seed: int, device: torch.device | str | None = None) -> None:
    """Every adapter in fp32, initialised from ``seed`` in module order, whatever the base's dtype.

    peft casts an adapter to its base weight's dtype, which over an fp8-stored base would train
    factors of 3 mantissa bits; and the draws of its own initialisation depend on that dtype. So
    the factors are cast to fp32 and initialised again here: a LoRA over an fp8 base starts
    exactly where one over a bf16 or fp32 base does. With ``device``, the factors move there
    first (a meta one is made there empty): the draws are the device's, as a resident base's are.
    """
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            if device is not None:
                for factor in (module.lora_A[ADAPTER], module.lora_B[ADAPTER]):
                    meta = any(p.is_meta for p in factor.parameters())
                    factor.to_empty(device=device) if meta else factor.to(device)
            module.lora_A[ADAPTER].float()
            module.lora_B[ADAPTER].float()
            module.reset_lora_parameters(ADAPTER, True)


def lora_excluded(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes a DiT keeps out of its LoRA (``lora_excluded_prefixes``): a
    Video-As-Prompt DiT's reference stream, which DiffSynth's LoRA training leaves alone."""
    return tuple(getattr(model, "lora_excluded_prefixes", ()))


def adapted_modules(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Linear modules peft's suffix rule matches: the name is a target or ends with '.' + target
    (outside the model's excluded prefixes)."""
    excluded = lora_excluded(model)
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
            and not name.startswith(excluded)]


def _lora_pairs(model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module, float]]:
    """Official module name -> (lora_A, lora_B, scaling) of every peft LoRA layer."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {}):
            out[name] = (module.lora_A[ADAPTER], module.lora_B[ADAPTER], float(module.scaling[ADAPTER]))
    return out


def start_from(model: nn.Module, path: Path) -> None:
    """Set the adapter to a LoRA file's factors (``lora_init``), keeping its ΔW exactly.

    The file's factors are rescaled from its alpha/rank to the adapter's scaling, so the model
    starts where the file leaves it; the ranks must agree.
    """
    from wanflow.lora.read import read_lora

    lora = read_lora(path)
    pairs = _lora_pairs(model)
    unknown = [p for p in lora.deltas if p.removesuffix(".weight") not in pairs]
    if unknown:
        raise ModelInputError(f"[train].lora_init = {path}: {len(unknown)} of its deltas patch modules the "
                              f"adapter does not train (e.g. {unknown[0]}); train the same lora_targets")
    with torch.no_grad():
        for parameter, delta in lora.deltas.items():
            a, b, scaling = pairs[parameter.removesuffix(".weight")]
            if not isinstance(delta, LowRank) or delta.rank != a.weight.shape[0]:
                raise ModelInputError(f"[train].lora_init = {path}: {parameter} is not a rank-"
                                      f"{a.weight.shape[0]} low-rank pair; set lora_rank to the file's rank")
            a.weight.copy_(delta.down.reshape(a.weight.shape))
            b.weight.copy_(delta.up.reshape(b.weight.shape) * (delta.scale / scaling))


def merge_preset(model: nn.Module, path: Path, scale: float) -> None:
    """Fold a LoRA into the base weights before the adapter is added (differential training)."""
    from wanflow.lora.apply import merge
    from wanflow.lora.read import read_lora

    merge(model, [read_lora(path)], [scale], model_name="the DiT", labels=[f"preset LoRA {path.name}"])


def full_trained(model: nn.Module) -> tuple[str, ...]:
    """The name prefixes full fine-tuning trains (``full_trained_prefixes``), () for all: a
    Video-As-Prompt DiT trains its reference stream alone, as its authors and DiffSynth do, and
    Wan2.2-Animate its Animate parts (DiffSynth's ``--trainable_models animate_adapter``)."""
    return tuple(getattr(model, "full_trained_prefixes", ()))


def unfreeze(model: nn.Module) -> None:
    """Full fine-tuning: every parameter of the component trains, or those under its
    ``full_trained_prefixes`` (the rest stays frozen)."""
    trained = full_trained(model)
    for name, param in model.named_parameters():
        param.requires_grad_(not trained or name.startswith(trained))


def full_stored(model: nn.Module) -> tuple[str, ...]:
    """The name prefixes the train step stores after full fine-tuning, () for all: the trained
    parts alone where the model's export merges them over the base's files itself
    (``exports_trained_alone``: Video-As-Prompt, whose export writes the release's layout),
    else every weight, so the generic export writes the whole DiT (Wan2.2-Animate)."""
    return full_trained(model) if getattr(model, "exports_trained_alone", False) else ()


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A fully fine-tuned component's weights under their official names: all of them, or
    the trained parts alone where ``full_stored`` says so (the frozen rest is the base's)."""
    stored = full_stored(model)
    return {n: p.detach().cpu().contiguous() for n, p in model.state_dict().items()
            if not stored or n.startswith(stored)}
