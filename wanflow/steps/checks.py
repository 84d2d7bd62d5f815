"""What the Wan pipeline cannot honour in a resolved recipe: reported by `wanflow validate`,
refused by planning, never silently ignored.

Three kinds of problem, each naming the file and key: settings that a later version builds
("not implemented yet"), settings this machine or these plugins cannot serve (CUDA, an attention
backend, an output format), and input files that would only fail after minutes of work (see
``input_checks``). No model loads here; torch is imported only to ask about a setting that
needs it (``"cuda"``, an attention backend other than torch's own).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from wanflow.errors import WanflowError, display_path
from wanflow.steps.input_checks import format_value, input_problems

Where = Callable[[str], str]

#: Output formats that first-party plugins add, so that a missing one can be named.
PLUGIN_FORMATS = {"gif": "wanflow-gif"}

#: The attention backend every torch has (``F.scaled_dot_product_attention``; the schema's
#: default of ``[runtime].attention``): it needs no look-up.
TORCH_ATTENTION = "sdpa"


def locator(resolved: Any) -> Where:
    """``where(key)``: the file (or ``--set``) a resolved value came from, for messages."""
    def where(key: str) -> str:
        origin = resolved.origins.get(key, "")  # "recipe", "include:<file>", "--set" or "sweep"
        if origin.startswith("include:") or origin == "--set":
            return origin.removeprefix("include:")
        return display_path(resolved.path)

    return where


def unsupported(resolved: Any, catalog: Any = None) -> list[str]:
    """Everything the pipeline cannot honour, all at once; ``catalog`` (the plugin registry, as
    bound to the pipeline) answers which output formats are installed."""
    where = locator(resolved)
    return [*_not_implemented(resolved, where), *_machine_problems(resolved.values, where, catalog),
            *_guidance_problems(resolved.values, where),
            *_format_problems(resolved.values, where, catalog), *input_problems(resolved, where)]


def _not_implemented(resolved: Any, where: Where) -> list[str]:
    """Settings that validate as data but that no step can honour: a training stage's dataset,
    packages and weights that would only fail once models load."""
    found: list[str] = []
    if resolved.recipe.train is not None:
        from wanflow.steps.train_checks import train_problems

        found += train_problems(resolved, where)
    return found


def _machine_problems(values: Any, where: Where, catalog: Any = None) -> list[str]:
    """CUDA asked for on a machine without it; an attention backend that is not installed or
    cannot run on this run's device and dtype; blocks compiled where the compiler cannot run."""
    found = []
    asked = [k for k in ("runtime.device", "sampler.noise_device") if values.get(k) == "cuda"]
    if asked and not cuda_available():
        fixes = {"runtime.device": '"auto" (CUDA when present, else the CPU) or "cpu"',
                 "sampler.noise_device": '"cpu" (the same noise for a seed on every machine)'}
        for key in asked:
            table, name = key.split(".")
            found.append(f'{where(key)}: [{table}].{name} = "cuda": this machine has no CUDA device that '
                         f"torch can use; use {fixes[key]}")
    if values.get("memory.fp8"):
        found += _fp8_problems(values, where)
    if values.get("runtime.fp8_matmul"):
        found += _fp8_matmul_problems(values, where)
    backend = values.get("runtime.attention", TORCH_ATTENTION)
    if backend != TORCH_ATTENTION:  # torch's own runs everywhere: no look-up, no torch import
        found += _attention_problems(backend, values, where, catalog)
    if values.get("runtime.sparse_attention") == "flex":
        found += _flex_problems(where)
    if values.get("runtime.compile", "none") != "none":
        from wanflow.memory.pool import compile_problems
        from wanflow.steps.runtime import effective_device

        found += [f'{where("runtime.compile")}: [runtime].compile = {format_value(values["runtime.compile"])}: '
                  f'{why}; set it to "none"'
                  for why in compile_problems(effective_device(values.get("runtime.device", "auto")))]
    return found


def _attention_problems(backend: str, values: Any, where: Where, catalog: Any) -> list[str]:
    """``[runtime].attention`` naming no installed backend, or one that cannot run on this run's
    device with the DiT's dtype (each backend says why: its package, CUDA, the GPU, the dtype)."""
    from wanflow.steps.runtime import effective_device

    device = effective_device(values.get("runtime.device", "auto"))
    dtypes = _dit_dtypes(values, device)
    checks = attention_backends(catalog)

    def why_not(name: str) -> list[str]:
        return list(dict.fromkeys(reason for dtype in dtypes for reason in checks[name](device, dtype)))

    here = ", ".join(name for name in sorted(checks) if not why_not(name))
    stated = f"{where('runtime.attention')}: [runtime].attention = {format_value(backend)}"
    if backend not in checks:
        return [f"{stated}: no attention backend of that name is installed (available: {here}); "
                f'use "{TORCH_ATTENTION}", or install the plugin that registers {format_value(backend)}']
    reasons = why_not(backend)
    if reasons:
        return [f"{stated}: cannot run here: {'; '.join(reasons)} (available here: {here}); "
                f'use "{TORCH_ATTENTION}" (the default), or run where it can']
    return []


def _flex_problems(where: Where) -> list[str]:
    """FlexAttention asked of a torch that has none (torch 2.5 brought it): read from the
    package's metadata, without importing torch."""
    from wanflow.engine.plan import runtime_env
    from wanflow.models.longcat_bsa_params import torch_has_flex

    if torch_has_flex():
        return []
    return [f'{where("runtime.sparse_attention")}: [runtime].sparse_attention = "flex": this torch '
            f"({runtime_env()['torch']}) has no FlexAttention (torch 2.5 or later); use \"gather\" or \"auto\" "
            "(gather where flex is missing), or upgrade torch"]


def _dit_dtypes(values: Any, device: str) -> list[str]:
    """The dtypes the DiTs compute in: each ``[models.dit*].dtype`` set, else the run's."""
    from wanflow.steps.runtime import effective_dtype_name

    overridden = {v for k, v in values.items() if k.startswith("models.dit") and k.endswith(".dtype") and v != "auto"}
    return sorted(overridden or {effective_dtype_name(values.get("runtime.dtype", "auto"), device)})


def _fp8_problems(values: Any, where: Where) -> list[str]:
    """fp8 storage on a torch or device that cannot hold float8 weights."""
    from wanflow.models.fp8 import Fp8UnsupportedError, require_fp8
    from wanflow.steps.runtime import effective_device

    try:
        require_fp8(effective_device(values.get("runtime.device", "auto")))
    except Fp8UnsupportedError as exc:
        return [f"{where('memory.fp8')}: [memory].fp8 = true: {exc}; set it to false"]
    return []


def _fp8_matmul_problems(values: Any, where: Where) -> list[str]:
    """fp8 matmuls where torch or the GPU cannot run them, or with the DiT in another dtype than
    the kernels return."""
    from wanflow.models.fp8_matmul import problems
    from wanflow.steps.runtime import effective_device

    device = effective_device(values.get("runtime.device", "auto"))
    reasons = list(dict.fromkeys(why for dtype in _dit_dtypes(values, device) for why in problems(device, dtype)))
    if not reasons:
        return []
    return [f"{where('runtime.fp8_matmul')}: [runtime].fp8_matmul = true: cannot run here: {'; '.join(reasons)}; "
            "set it to false (the fp8 weights are then multiplied in the compute dtype)"]


def _guidance_problems(values: Any, where: Where) -> list[str]:
    """CFG-Zero* and skip-layer guidance settings that cannot act (checked only when set: the
    checks live with the sampler, which imports torch)."""
    zero_star, zero_init = values.get("sampler.cfg_zero_star"), values.get("sampler.cfg_zero_init_steps")
    blocks = values.get("sampler.slg_blocks") or ()
    size, stride = values.get("sampler.sliding_window_size"), values.get("sampler.sliding_window_stride")
    if not (zero_star or zero_init or blocks or size is not None or stride is not None):
        return []
    from wanflow.sampling.guidance import check_slg, check_zero_star, key_name
    from wanflow.sampling.windows import check_windows

    cfgs = [values["sampler.cfg"]] + ([values["sampler.cfg_high_noise"]]
                                      if values.get("sampler.cfg_high_noise") is not None else [])
    found = list(check_zero_star(bool(zero_star), int(zero_init or 0), values["sampler.steps"], cfgs))
    if size is not None or stride is not None:
        found += check_windows(size, stride, values["video.frames"])  # video frames: it counts the latent ones
    if blocks:
        found += check_slg(tuple(blocks), values["sampler.slg_scale"], values["sampler.slg_start"],
                           values["sampler.slg_end"], values["sampler.slg_mode"], cfgs)
    return [f"{where(p.key)}: {key_name(p.key)} = {format_value(p.value)}: {p.message}" for p in found]


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch: asked only when a recipe says "cuda")."""
    import torch

    return bool(torch.cuda.is_available())


def attention_backends(catalog: Any = None) -> dict[str, Callable[[str, str], list[str]]]:
    """Each installed attention backend and its ``problems(device, dtype)``: the plugin registry's
    when the pipeline is bound to one, else wanflow's own kernels (imports torch)."""
    if isinstance(getattr(catalog, "attention", None), dict):
        return {name: entry.problems for name, entry in catalog.attention.items()}
    import functools

    from wanflow.models.attention import KERNELS, OPTIONAL_KERNELS, backend_problems

    builtin = ("sdpa", "math", "cudnn", *OPTIONAL_KERNELS)
    checks = {name: functools.partial(backend_problems, name) for name in builtin}
    return checks | {name: (lambda device, dtype: []) for name in KERNELS if name not in checks}


def _format_problems(values: Any, where: Where, catalog: Any) -> list[str]:
    """An output format that no installed plugin saves (planning would fail after the downloads)."""
    fmt = values.get("output.format")
    if catalog is None or fmt is None:
        return []
    try:
        catalog.provided("saver", fmt)
        return []
    except WanflowError:
        installed = ", ".join(sorted(getattr(catalog, "savers", ()))) or "none"
    hint = ""
    if fmt in PLUGIN_FORMATS:
        hint = f"; the {PLUGIN_FORMATS[fmt]} plugin provides it: pip install {PLUGIN_FORMATS[fmt]}"
        if os.environ.get("WANFLOW_NO_PLUGINS", "") in ("1", "true", "yes"):
            hint += " (plugins are turned off here: --no-plugins or WANFLOW_NO_PLUGINS=1)"
    return [f"{where('output.format')}: [output].format = {format_value(fmt)}: no installed plugin saves "
            f"this format (installed formats: {installed}){hint}"]
