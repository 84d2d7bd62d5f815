"""diffusers' home for alpha: PEFT's LoraConfig, as JSON in the safetensors header.

diffusers writes no ``.alpha`` keys; ``save_lora_weights`` puts the adapter's LoraConfig
(``r``, ``lora_alpha``, ``alpha_pattern``, ``rank_pattern``, ``target_modules``…) under the
header key ``lora_adapter_metadata``, each entry prefixed ``transformer.``, and
``load_lora_weights`` builds the adapter from it. Reading honours it (a file whose lora_alpha is
not r has scale lora_alpha/r in diffusers); writing uses it to carry alpha without folding it
into the factors.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

#: The header key diffusers keeps the adapter's LoraConfig under.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"

#: (module as diffusers names it, its rank) -> the alpha that gives PEFT's scale, or None.
AlphaLookup = Callable[[str, int], "float | None"]


def alphas_from_header(header: Mapping[str, str]) -> AlphaLookup:
    """alpha per module from diffusers' ``lora_adapter_metadata`` (PEFT's LoraConfig), if any.

    PEFT scales by lora_alpha / r (alpha_pattern per module; / √r with use_rslora); returned as
    the alpha that gives that scale with ``LowRank``'s alpha / rank."""
    raw = header.get(ADAPTER_METADATA_KEY)
    try:
        doc = json.loads(raw) if raw else None
    except json.JSONDecodeError as err:
        log.warning("lora.adapter_metadata_unreadable", error=str(err), note="alpha taken as rank (scale 1)")
        doc = None
    if not isinstance(doc, dict):
        return lambda module, rank: None
    if any(k.startswith("transformer.") for k in doc):
        doc = {k.removeprefix("transformer."): v for k, v in doc.items() if k.startswith("transformer.")}
    default, patterns = doc.get("lora_alpha"), doc.get("alpha_pattern") or {}
    rslora = bool(doc.get("use_rslora"))

    def alpha(module: str, rank: int) -> float | None:
        found = next((v for p, v in patterns.items() if _matches(p, module)), default)
        if not isinstance(found, (int, float)):
            return None
        return float(found) * math.sqrt(rank) if rslora else float(found)

    return alpha


def _matches(pattern: str, module: str) -> bool:
    """PEFT's rule: the pattern matches the module name's end, at a dot."""
    try:
        return re.match(rf"(.*\.)?({pattern})$", module) is not None
    except re.error:
        log.warning("lora.adapter_pattern_invalid", pattern=pattern, note="ignored")
        return False


def config_json(modules: Mapping[str, tuple[int, float]], *, lora_bias: bool) -> str:
    """diffusers' lora_adapter_metadata: the LoraConfig that gives every module its rank and alpha."""
    r = Counter(rank for rank, _ in modules.values()).most_common(1)[0][0] if modules else 1
    alpha = Counter(a for _, a in modules.values()).most_common(1)[0][0] if modules else 1.0
    anchored = {m: "^" + re.escape(m) for m in modules}
    config = {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {anchored[m]: k for m, (k, _) in modules.items() if k != r},
        "alpha_pattern": {anchored[m]: a for m, (_, a) in modules.items() if a != alpha},
        "target_modules": sorted(modules),
        "lora_bias": lora_bias,
        "use_dora": False,
        "use_rslora": False,
    }
    return json.dumps({f"transformer.{k}": v for k, v in config.items()}, indent=2, sort_keys=True)
