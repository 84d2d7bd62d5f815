"""LoRA files for the Wan DiT: every community dialect read into one canonical form
(``delta``, ``read``), written back in any of them (``write``), and applied to a model, merged or
on the fly (``apply``), with a report of what was patched (``report``).

The exports import torch, so each loads on first use: importing ``wanflow.lora`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wanflow.lora.apply import attach, merge
    from wanflow.lora.delta import Full, LoHa, LoKr, LoraFile, LowRank
    from wanflow.lora.describe import made_for, summarize
    from wanflow.lora.dialects import WRITABLE, LoraFormatError
    from wanflow.lora.read import read_lora
    from wanflow.lora.report import plan_patches
    from wanflow.lora.write import write_lora

#: export -> the module that defines it.
_HOMES = {
    "read_lora": "wanflow.lora.read",
    "write_lora": "wanflow.lora.write",
    "WRITABLE": "wanflow.lora.dialects",
    "LoraFormatError": "wanflow.lora.dialects",
    "summarize": "wanflow.lora.describe",
    "made_for": "wanflow.lora.describe",
    "LoraFile": "wanflow.lora.delta",
    "LowRank": "wanflow.lora.delta",
    "LoHa": "wanflow.lora.delta",
    "LoKr": "wanflow.lora.delta",
    "Full": "wanflow.lora.delta",
    "merge": "wanflow.lora.apply",
    "attach": "wanflow.lora.apply",
    "plan_patches": "wanflow.lora.report",
}

__all__ = [
    "WRITABLE", "Full", "LoHa", "LoKr", "LoraFile", "LoraFormatError", "LowRank", "attach", "made_for",
    "merge", "plan_patches", "read_lora", "summarize", "write_lora",
]


def __getattr__(name: str) -> Any:
    """Load an export from its module on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'wanflow.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
