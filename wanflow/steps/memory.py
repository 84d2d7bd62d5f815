"""The memory a recipe allows: a check before any model loads, and the rule the model pool keeps.

The placement layer proper (offload, streaming, fp8 storage) comes later; what the pipeline does
today is keep whole models resident. Under ``none`` every component may stay resident at once;
under every other policy one large model (a DiT or an encoder) at a time, so a DiT evicts the
encoders and one A14B expert the other. So ``none`` needs every component to fit at once, the
other policies at least the largest one. The check's sizes are the files' bytes, a lower bound
of what the weights take in memory; the pool (`wanflow.steps.model_pool`) holds the loaded
models to the same `Residency`, measured on the models themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from wanflow.errors import WanflowError

GIB = 1024**3


class MemoryBudgetError(WanflowError):
    """The weights cannot fit the memory the recipe allows, under its policy."""


@attrs.frozen
class Residency:
    """What the model pool may keep loaded at once: the recipe's policy and its budget in bytes.

    Built at planning, with the budget `check_budget` checks (`device_budget`), and handed to the
    model steps as a field that is not part of their key (it cannot change their output).
    """

    policy: str  # [memory].policy
    budget_bytes: int  # [memory].limit_gb, else the device's memory

    @property
    def one_large_model(self) -> bool:
        """Every policy but ``none`` keeps one large model (a DiT or an encoder) at a time."""
        return self.policy != "none"


def required_bytes(policy: str, component_bytes: Mapping[str, int]) -> int:
    """What must be resident at once: everything for ``none``, else the largest component."""
    sizes = list(component_bytes.values()) or [0]
    return sum(sizes) if policy == "none" else max(sizes)


def check_budget(policy: str, component_bytes: Mapping[str, int], budget: int, where: str) -> None:
    """Raise before any model loads when the policy cannot fit the weights in ``budget`` bytes."""
    need = required_bytes(policy, component_bytes)
    if need <= budget:
        return
    largest = max(component_bytes, key=component_bytes.__getitem__)
    fix = ('set [memory].policy = "offload" (one model resident at a time)' if policy == "none"
           else f"raise [memory].limit_gb above {need / GIB:.1f}, or use a machine with more memory")
    raise MemoryBudgetError(
        f"{where}: [memory].policy = {policy!r} needs at least {need / GIB:.2f} GiB resident "
        f"(largest component {largest!r}: {component_bytes[largest] / GIB:.2f} GiB) but the budget is "
        f"{budget / GIB:.2f} GiB; {fix}")


def component_sizes(files: Mapping[str, Sequence[Path]]) -> dict[str, int]:
    """Bytes on disk of each component's files (configs and tokenizers count too; they are small)."""
    return {name: sum(Path(f).stat().st_size for f in paths) for name, paths in files.items()}


def device_budget(limit_gb: float | None, device: str) -> int:
    """``[memory].limit_gb`` when set, else the device's total memory."""
    if limit_gb is not None:
        return int(limit_gb * GIB)
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
