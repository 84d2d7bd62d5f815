"""Where and in what precision the model steps run: ``auto`` resolved once, recorded in the lock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Recipe dtype names -> torch dtype attribute names.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def effective_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; explicit choices pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def effective_dtype_name(dtype: str, device: str) -> str:
    """``auto`` is bf16 on CUDA and fp32 on the CPU (bf16 matmuls are slow on small CPU models)."""
    if dtype != "auto":
        return dtype
    return "bf16" if effective_device(device) == "cuda" else "fp32"


def torch_dtype(name: str) -> Any:
    """The torch dtype of a recipe dtype name."""
    import torch

    return getattr(torch, DTYPES[name])


def runtime_of(params: Mapping[str, Any]) -> tuple[str, Any]:
    """(device, torch dtype) a step runs with, from its ``runtime.*`` params."""
    device = effective_device(params["runtime.device"])
    return device, torch_dtype(effective_dtype_name(params["runtime.dtype"], device))


def describe_runtime(values: Mapping[str, Any]) -> dict[str, str]:
    """The lock's runtime table: effective device, dtype, attention backend, noise device and the
    CPU thread count (float sums on the CPU depend on it, so a reproduction should match it)."""
    import torch

    device = effective_device(values["runtime.device"])
    dtype = effective_dtype_name(values["runtime.dtype"], device)
    described = {"device": device, "dtype": dtype, "attention": str(values["runtime.attention"]),
                 "noise_device": str(values["sampler.noise_device"]), "cpu_threads": str(torch.get_num_threads())}
    if device == "cpu" and dtype != "fp32":  # bf16 kernels, or fp32 sums over bf16 values
        described["cpu_compute"] = _cpu_compute(dtype)
    return described


def _cpu_compute(dtype: str) -> str:
    """What a reduced-precision CPU run multiplies in here (see wanflow.models.precision)."""
    import torch

    from wanflow.models.precision import compute_dtype

    kernel = compute_dtype(torch.empty(0, dtype=torch_dtype(dtype)))
    return next(name for name, attr in DTYPES.items() if getattr(torch, attr) == kernel)
