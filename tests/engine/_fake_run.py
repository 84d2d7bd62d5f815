"""Run the fake pipeline in a separate process (for kill -9 and concurrency tests).

Usage: python _fake_run.py WORLD CACHE RUNS RESULT.json
FAKE_HANG_FSYNC=marker hangs inside the first store write, after the temp file is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import _fakes

from wanflow.engine import Cache, RunOptions, run_job


def _hang_in_fsync(marker: str) -> None:
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        Path(marker).write_text("ready")
        time.sleep(600)

    os.fsync = fsync


def main(world: str, cache_dir: str, runs: str, result: str) -> None:
    if os.environ.get("FAKE_HANG_FSYNC"):
        _hang_in_fsync(os.environ["FAKE_HANG_FSYNC"])
    started = time.time()
    resolved, pipe = _fakes.make_world(Path(world))
    with Cache(Path(cache_dir)) as cache:
        out = run_job(resolved, pipe, cache, RunOptions(runs_dir=Path(runs), quiet=True))
    Path(result).write_text(json.dumps({
        "archive": str(out.archive), "started": started, "ended": time.time(), "save": out.results["save"].digest,
        "hits": {n: r.hit for n, r in out.results.items()}}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
