"""An out-of-memory error during a model step, said as what it is: the memory plan was wrong.

The planner predicted each step's peak before anything loaded; when torch still runs out of
memory, the user gets that prediction beside what was observed and the settings that make the
planner place less on the device, never a bare traceback. The engine stores nothing for the
failed step and leaves its run archive incomplete (invisible), so nothing computed is lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from wanflow.errors import WanflowError

GIB = 1024**3


class OutOfMemoryDuringRun(WanflowError):
    """A step ran out of memory the plan said it had."""


@contextlib.contextmanager
def reported_oom(step: str, predicted: Any) -> Iterator[None]:
    """Turn torch's (or Python's) out-of-memory error inside the block into a planner error.

    ``predicted``: the plan's ``StepPeak`` of this step, or None when the step was planned
    without one."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise OutOfMemoryDuringRun(_message(step, predicted, exc)) from None


def _message(step: str, predicted: Any, exc: BaseException) -> str:
    device = getattr(predicted, "device_bytes", None)
    where = "device" if device is not None else "host"
    guess = device if device is not None else getattr(predicted, "host_bytes", None)
    said = f"the memory plan predicted a peak of {guess / GIB:.2f} GiB" if guess else "no peak was predicted"
    seen = _observed(where)
    return (f"step {step!r} ran out of {where} memory ({type(exc).__name__}); {said}, {seen}. Nothing "
            "was stored for this step. Fix: lower [memory].limit_gb (device) or [memory].host_limit_gb "
            "so the planner keeps less resident, or choose a slower [memory].policy (stream, disk); "
            "`wanflow plan RECIPE` shows the placement")


def _observed(where: str) -> str:
    """What was in use when it failed: torch's peak allocation on CUDA, else the process's RSS peak."""
    import torch

    if where == "device" and torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / GIB:.2f} GiB were allocated at the peak"
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        return f"the process peaked at {peak / GIB:.2f} GiB"
    except (OSError, StopIteration, ValueError):
        return "the observed peak is unknown"
