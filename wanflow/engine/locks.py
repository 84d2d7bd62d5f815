"""Per-key locks so that two runs on one cache never compute the same step twice.

The lock is an ``flock`` on a file under ``<cache>/locks``: the kernel releases it when its
holder dies (even by kill -9), so a stale lock recovers by itself, with no pid-guessing race.
The file also holds the holder's pid, host and start time, for the message shown while waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from wanflow.errors import EngineError

log = structlog.get_logger(__name__)


@contextlib.contextmanager
def key_lock(lock_dir: Path, key: str, timeout_s: float = 24 * 3600.0) -> Iterator[None]:
    """Hold the lock of one step key; wait while another live process holds it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{key[:32]}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, timeout_s)
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout_s: float) -> None:
    """Take the lock, logging once who holds it when we have to wait."""
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not waited:
                log.info("step.wait", lock=str(path), holder=_holder(path))
                waited = True
            if time.monotonic() > deadline:
                raise EngineError(
                    f"timed out waiting for {path} held by {_holder(path)}: "
                    "another wanflow run is computing the same step"
                ) from None
            time.sleep(0.05)


def _holder(path: Path) -> str:
    """Who holds a lock, as written in its file."""
    try:
        return path.read_text() or "unknown"
    except OSError:
        return "unknown"
