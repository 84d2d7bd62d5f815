"""A check, before any model loads, that the chosen memory policy can fit the family's weights.

The placement layer proper (offload, streaming, fp8 storage) comes later; what the pipeline does
today is load one model at a time (a DiT evicts the encoders, one A14B expert the other). So
``none`` needs every component resident at once, the other policies at least the largest one.
Sizes are the files' bytes, a lower bound of what the weights take in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from wanflow.errors import WanflowError

GIB = 1024**3


class MemoryBudgetError(WanflowError):
    """The weights cannot fit the memory the recipe allows, under its policy."""


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
