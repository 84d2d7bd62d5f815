"""Where and in what precision the model steps run: ``auto`` resolved once, recorded in the lock.

What ``auto`` means here, the CPU thread count and what a bf16 CPU matmul runs in are facts about
the machine that only torch can tell, and they feed every step key. Importing torch takes longer
than a fully cached run, so a fresh process answers from a probe remembered in the cache folder,
filed under everything that can change the answer (torch build, visible GPUs, thread variables,
CPU affinity and flags, …). A process that has already imported torch asks torch itself, since
it may have changed the thread count; when that answer disagrees with the remembered one, the
memo is rewritten and the disagreement logged.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

#: Recipe dtype names -> torch dtype attribute names.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

#: Bumped when the probe records something new, so older memos are never read for it.
PROBE_VERSION = 1

#: Environment variables (by prefix) that can change what torch reports about the machine.
PROBE_ENV_PREFIXES = ("CUDA_", "NVIDIA_", "HIP_", "ROCR_", "OMP_", "KMP_", "GOMP_", "MKL_", "DNNL_",
                      "ONEDNN_", "ATEN_", "PYTORCH_", "TORCH_", "LD_PRELOAD", "LD_LIBRARY_PATH")


@attrs.frozen
class MachineProbe:
    """What torch says about this machine, as far as the step keys need it."""

    cuda: bool
    cpu_threads: int
    cpu_compute: Mapping[str, str]  # reduced dtype name -> the dtype CPU matmuls run in

    def as_json(self) -> dict[str, Any]:
        return {"cuda": self.cuda, "cpu_threads": self.cpu_threads, "cpu_compute": dict(self.cpu_compute)}


def machine() -> MachineProbe:
    """Torch's answer when torch is loaded already; else the remembered one (probed on a miss)."""
    if "torch" in sys.modules:
        return _live()
    path = _memo_path()
    found = _read_memo(path)
    if found is None:
        found = _probe()
        _write_memo(path, found)
    _served[path] = found
    return found


#: Memos this process answered from, checked against torch once it is loaded.
_served: dict[Path, MachineProbe] = {}


def effective_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; explicit choices pass through."""
    if device != "auto":
        return device
    return "cuda" if machine().cuda else "cpu"


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


def dit_storage(values: Mapping[str, Any]) -> str:
    """How the DiT's block projections are held and multiplied (``wanflow.models.fp8.STORAGES``):
    keyed by the denoise steps, since fp8 storage and fp8 matmuls change the numbers."""
    if not values.get("memory.fp8"):
        return "compute"
    return "fp8-matmul" if values.get("runtime.fp8_matmul") else "fp8"


def describe_runtime(values: Mapping[str, Any]) -> dict[str, str]:
    """The lock's runtime table: effective device, dtype, attention backend, noise device and the
    CPU thread count (float sums on the CPU depend on it, so a reproduction should match it)."""
    probe = machine()
    device = effective_device(values["runtime.device"])
    dtype = effective_dtype_name(values["runtime.dtype"], device)
    described = {"device": device, "dtype": dtype, "attention": str(values["runtime.attention"]),
                 "noise_device": str(values["sampler.noise_device"]), "cpu_threads": str(probe.cpu_threads)}
    if device == "cpu" and dtype != "fp32":  # bf16 kernels, or fp32 sums over bf16 values
        described["cpu_compute"] = probe.cpu_compute[dtype]
    return described


def _probe() -> MachineProbe:
    """Ask torch (importing it)."""
    import torch

    from wanflow.models.precision import compute_dtype

    def kernel(name: str) -> str:
        found = compute_dtype(torch.empty(0, dtype=torch_dtype(name)))
        return next(n for n, attr in DTYPES.items() if getattr(torch, attr) == found)

    return MachineProbe(cuda=bool(torch.cuda.is_available()), cpu_threads=int(torch.get_num_threads()),
                        cpu_compute={name: kernel(name) for name in ("bf16", "fp16")})


def _live() -> MachineProbe:
    """Torch's answer now; a memo served earlier in this process that disagrees is rewritten."""
    probe = _probe()
    for path, served in list(_served.items()):
        if served != probe:
            import structlog

            structlog.get_logger(__name__).warning(
                "runtime.memo_stale", remembered=served.as_json(), torch_says=probe.as_json(),
                note="the remembered answer is replaced; steps keyed on it will run again")
            _write_memo(path, probe)
            _served[path] = probe
    return probe


def machine_state() -> dict[str, str]:
    """Everything the probe's answer can depend on, read without importing torch."""
    from wanflow.engine.plan import runtime_env

    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(PROBE_ENV_PREFIXES)}
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {"probe": str(PROBE_VERSION), "python": sys.executable, "torch": runtime_env()["torch"],
            "torch_at": _torch_location(), "host": platform.node(), "arch": platform.machine(),
            "env": json.dumps(env), "cpus": str(os.cpu_count()), "affinity": json.dumps(affinity),
            "cpu_quota": _read("/sys/fs/cgroup/cpu.max"), "cpu": _cpu_identity(),
            "gpu_nodes": json.dumps(sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/kfd"))),
            "gpu_driver": _read("/proc/driver/nvidia/version")}


def _torch_location() -> str:
    """The installed torch's folder and the mtime of its version file: a reinstall changes it."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "absent"
    version_file = Path(spec.origin).with_name("version.py")
    stamp = version_file.stat().st_mtime_ns if version_file.exists() else 0
    return f"{Path(spec.origin).parent}@{stamp}"


def _cpu_identity() -> str:
    """The first processor's model name and feature flags (which kernels exist for bf16, fp16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = []
            for line in f:
                if not line.strip():
                    break
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line.strip())
    except OSError:
        return platform.processor()
    return "\n".join(lines)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _memo_path() -> Path:
    """``<cache>/runtime/<hash of the machine state>.json`` (the cache root of ``WANFLOW_CACHE``)."""
    from wanflow.engine.cache import default_root

    state = json.dumps(machine_state(), sort_keys=True)
    return default_root() / "runtime" / f"{hashlib.sha256(state.encode()).hexdigest()}.json"


def _read_memo(path: Path) -> MachineProbe | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return MachineProbe(cuda=bool(data["cuda"]), cpu_threads=int(data["cpu_threads"]),
                            cpu_compute={k: str(v) for k, v in data["cpu_compute"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent or unreadable: probe again and rewrite it


def _write_memo(path: Path, probe: MachineProbe) -> None:
    """Write atomically; a cache folder that cannot be written only costs the next run a probe."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(probe.as_json(), sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        import structlog

        structlog.get_logger(__name__).debug("runtime.memo_unwritable", path=str(path), error=str(exc))
