"""A benchmark child's own resident memory: its peak, its current size, and a peak reset.

`getrusage().ru_maxrss` is the wrong measure for a child started by fork + exec on Linux: the
kernel carries the parent's resident size across exec into it, so a parent that wrote a 4 GB
checkpoint makes every child report >= 4 GB, whatever the child did (both sides of a comparison
then show the same number). `VmHWM` in /proc/self/status belongs to the child's own address
space, and writing 5 to /proc/self/clear_refs resets it, so a phase's peak can be measured alone.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


def peak_mb() -> float:
    """Peak resident MB of this process since it started (or since `reset_peak`)."""
    found = _status_mb("VmHWM")
    return found if found is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    """Resident MB now (0 where /proc is not available)."""
    return _status_mb("VmRSS") or 0.0


def reset_peak() -> bool:
    """Start the peak over from the current size; False where the kernel offers no reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
