"""Named attention kernels, so faster backends can be chosen without touching models.

Every kernel takes q, k, v laid out (B, L, H, D) and returns (B, Lq, H, D). This is the layout
that the projections produce, so models never reshape for a particular kernel.

Besides torch's own kernels (``sdpa``, ``math``, ``cudnn``), three come from packages that run
only on CUDA machines: ``flash3`` (FlashAttention 3, Hopper GPUs, module ``flash_attn_interface``),
``flash4`` (FlashAttention 4, written in NVIDIA's CuTe DSL and compiled for the GPU at first use;
module ``flash_attn.cute``, PyPI ``flash-attn-4``: the FlashAttention-3-class kernel that installs
from wheels) and ``sage`` (SageAttention, module ``sageattention``). They are usable in a process
only where their package is installed. What each needs of the device and dtype is said by
:func:`backend_problems`, which validation asks before any model loads.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from wanflow.errors import ModelInputError

#: q, k, v (B, L, H, D) -> (B, Lq, H, D); no mask, default 1/sqrt(D) scale (as Wan attends).
AttentionKernel = Callable[[Tensor, Tensor, Tensor], Tensor]

#: Recipe dtypes the half-precision-only kernels accept.
HALF_DTYPES = ("bf16", "fp16")


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch's fused scaled-dot-product attention (flash/memory-efficient where available)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # (B, Lq, H, D)


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain softmax(QK^T/sqrt(D))V with fp32 statistics: slow, but a reference anyone can read."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)  # (B, Lq, H, D)


def cudnn_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """torch's SDPA held to its cuDNN backend (fast on Hopper); it fails rather than falling back,
    so the numbers are always cuDNN's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return sdpa(q, k, v)


def flash3_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FlashAttention 3 (Shah et al. 2024), which reads (B, L, H, D) as it is."""
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # some releases also return the log-sum-exp


def _flash4(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # (out, log-sum-exp)


@torch.library.custom_op("wanflow::flash4_attention", mutates_args=())
def _flash4_op(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FlashAttention 4 as one opaque op: ``torch.compile`` of a block (``[runtime].compile``)
    keeps it whole instead of tracing into the DSL's Python, which it cannot."""
    return _flash4(q, k, v)


@_flash4_op.register_fake
def _flash4_shape(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))  # (B, Lq, H, Dv), as the kernel allocates it


def flash4_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """FlashAttention 4 (the CuTe-DSL FlashAttention; sm80 to sm12x), which reads (B, L, H, D) as it is.
    Each new shape compiles its kernel once per process (seconds), then runs from memory. Where a
    gradient is wanted (training) it runs through the package's own autograd function; the opaque
    op has no backward."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _flash4(q, k, v)
    return _flash4_op(q, k, v)


def sage_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SageAttention (Zhang et al. 2024): INT8 QK^T, fp16 PV; (B, L, H, D) is its "NHD" layout."""
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


#: Built-in kernels that need a package besides torch: name -> (module, kernel, how to install).
OPTIONAL_KERNELS: dict[str, tuple[str, AttentionKernel, str]] = {
    "flash3": ("flash_attn_interface", flash3_attention,
               "build it from FlashAttention's hopper/ folder: cd flash-attention/hopper && python setup.py install"),
    "flash4": ("flash_attn.cute", flash4_attention, "pip install --pre flash-attn-4"),
    "sage": ("sageattention", sage_attention, "pip install sageattention"),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (looked up, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _builtin_kernels() -> dict[str, AttentionKernel]:
    kernels: dict[str, AttentionKernel] = {"sdpa": sdpa, "math": math_attention, "cudnn": cudnn_attention}
    kernels |= {name: kernel for name, (module, kernel, _) in OPTIONAL_KERNELS.items() if installed(module)}
    return kernels


#: The kernels usable in this process, by name.
KERNELS: dict[str, AttentionKernel] = _builtin_kernels()


def register_kernel(name: str, kernel: AttentionKernel) -> None:
    """Add a backend (e.g. a plugin's) under a new name; names are never silently replaced."""
    if name in KERNELS:
        raise ModelInputError(f"attention kernel {name!r} is already registered; pick another name.")
    KERNELS[name] = kernel


def use_kernel(name: str, kernel: AttentionKernel) -> str:
    """Make a plugin's kernel usable under its name: registered once, the same kernel again is a
    no-op, and a different kernel under a taken name is refused."""
    if KERNELS.get(name) is not kernel:
        register_kernel(name, kernel)
    return name


def check_kernel(name: str) -> str:
    """Fail early, listing the choices, when a kernel name is not registered."""
    if name not in KERNELS:
        why = ""
        if name in OPTIONAL_KERNELS:
            module, _, install = OPTIONAL_KERNELS[name]
            why = f" (its module {module} is not installed: {install})"
        raise ModelInputError(
            f"attention kernel {name!r} is not registered{why}; choose one of {sorted(KERNELS)}."
        )
    return name


def attention(q: Tensor, k: Tensor, v: Tensor, kernel: str = "sdpa") -> Tensor:
    """Attend with the named kernel: q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D)."""
    return KERNELS[check_kernel(kernel)](q, k, v)


# ----------------------------------------------------------------------------- what runs where


def _needs_cuda(device: str) -> list[str]:
    if not device.startswith("cuda"):
        return [f"it needs a CUDA device (this run's device is {device})"]
    if not torch.cuda.is_available():
        return ["it needs a CUDA device, and torch sees none on this machine"]
    return []


def _needs_half(dtype: str) -> list[str]:
    return [] if dtype in HALF_DTYPES else [f"it computes in bf16 or fp16 only (the DiT runs in {dtype})"]


def capability(device: str) -> tuple[int, int]:
    """The compute capability (major, minor) of the GPU ``device`` names (the current one for "cuda")."""
    index = torch.device(device).index
    return torch.cuda.get_device_capability(torch.cuda.current_device() if index is None else index)


def _needs_sm(device: str, low: int, high: int | None, what: str) -> list[str]:
    """A GPU of compute capability major in [low, high] (asked only where CUDA is there)."""
    major, minor = capability(device)
    if major < low or (high is not None and major > high):
        return [f"it needs {what} (this GPU is sm{major}{minor})"]
    return []


def _needs_module(name: str) -> list[str]:
    module, _, install = OPTIONAL_KERNELS[name]
    return [] if installed(module) else [f"its module {module} is not installed ({install})"]


def backend_problems(name: str, device: str, dtype: str) -> list[str]:
    """Why the built-in backend ``name`` cannot run on ``device`` ("cpu", "cuda", "cuda:1") with
    the DiT in ``dtype`` ("bf16", "fp16", "fp32"); empty when it can."""
    if name in ("sdpa", "math"):
        return []
    if name not in ("cudnn", *OPTIONAL_KERNELS):
        raise ModelInputError(f"{name!r} is not a built-in attention backend")
    found = _needs_module(name) if name in OPTIONAL_KERNELS else []
    cuda = _needs_cuda(device)
    found += cuda + _needs_half(dtype)
    if cuda:
        return found
    if name == "cudnn":
        if not torch.backends.cudnn.is_available():
            found.append("torch was built without cuDNN")
        found += _needs_sm(device, 8, None, "an Ampere or newer GPU (sm80+)")
    elif name == "flash3":
        found += _needs_sm(device, 9, 9, "a Hopper GPU (sm90: H100, H200, H20)")
    elif name == "flash4":
        found += _needs_sm(device, 8, 12, "an Ampere, Hopper or Blackwell GPU (sm80 to sm12x)")
    elif name == "sage":
        found += _needs_sm(device, 8, None, "an Ampere or newer GPU (sm80+)")
    return found
