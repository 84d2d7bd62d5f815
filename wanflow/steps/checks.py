"""What the Wan pipeline cannot honour in a resolved recipe: reported by `wanflow validate`,
refused by planning, never silently ignored. Pure: no model loads (torch only where a check
must ask what the machine has)."""

from __future__ import annotations

from typing import Any

from wanflow.recipe.problems import display_path


def unsupported(resolved: Any) -> list[str]:
    """Settings this pipeline cannot honour yet: reported by validate, refused by planning, never ignored."""
    values, problems = resolved.values, []

    def where(key: str) -> str:
        origin = resolved.origins.get(key, "")  # "recipe", "include:<file>", "--set" or "sweep"
        if origin.startswith("include:") or origin == "--set":
            return origin.removeprefix("include:")
        return display_path(resolved.path)

    if resolved.recipe.lora:
        problems.append(f"{where('lora')}: [[lora]]: LoRA is not applied by the Wan pipeline yet; "
                        "remove the [[lora]] tables to generate without them")
    if values.get("runtime.teacache_threshold") is not None:
        problems.append(f"{where('runtime.teacache_threshold')}: [runtime].teacache_threshold = "
                        f"{values['runtime.teacache_threshold']}: TeaCache is not implemented yet; "
                        "remove the key (every step computed)")
    if values.get("memory.fp8"):
        problems.append(f"{where('memory.fp8')}: [memory].fp8 = true: fp8 weight storage is not "
                        "implemented yet; set it to false (weights stay in the compute dtype)")
    return problems
