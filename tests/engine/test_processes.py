"""Faults across processes: kill -9 mid-write and mid-step, and two runs on one cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from wanflow.engine import Cache, RunOptions, run_job
from wanflow.engine.archive import list_runs

from ._fakes import make_world
from .conftest import count

SCRIPT = Path(__file__).with_name("_fake_run.py")


def _start(tmp: Path, tag: str, **env: str) -> tuple[subprocess.Popen, Path]:
    result = tmp / f"{tag}.json"
    full_env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), **env}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp / "world"), str(tmp / "cache"),
                             str(tmp / "runs"), str(result)], env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, result


def _finish(proc: subprocess.Popen, result: Path) -> dict:
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(result.read_text())


def _kill_when_ready(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the fake run never reached its kill point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _reference(tmp: Path) -> str:
    """The save digest of an uninterrupted in-process run on a separate cache."""
    resolved, pipe = make_world(tmp / "world")
    with Cache(tmp / "ref-cache") as c:
        return run_job(resolved, pipe, c, RunOptions(runs_dir=tmp / "ref-runs", quiet=True)
                       ).results["save"].digest


def test_kill_during_store_write_then_next_run_is_clean(tmp_path: Path, counts: Path) -> None:
    marker = tmp_path / "in-fsync"
    proc, _ = _start(tmp_path, "killed", FAKE_HANG_FSYNC=str(marker))
    _kill_when_ready(proc, marker)
    assert list((tmp_path / "cache" / "tmp").iterdir())  # the half-written temp file
    out = _finish(*_start(tmp_path, "next"))
    assert not any(out["hits"].values()) and out["save"] == _reference(tmp_path)
    with Cache(tmp_path / "cache") as cache:
        rep = cache.verify()
        assert rep.corrupt == () and rep.checked == 6 and rep.dangling_keys == 0
        assert not list(cache.store.tmp.iterdir())  # the dead writer's temp file is gone
    assert sorted(r.complete for r in list_runs(tmp_path / "runs")) == [False, True]


def test_kill_during_long_step_resumes_from_its_checkpoint(tmp_path: Path, counts: Path) -> None:
    marker = tmp_path / "at-step-4"
    proc, _ = _start(tmp_path, "killed", FAKE_KILL_AT="4", FAKE_MARKER=str(marker))
    _kill_when_ready(proc, marker)
    out = _finish(*_start(tmp_path, "resumed"))
    assert (counts / "log.txt").read_text().splitlines() == ["denoise.start 0", "denoise.start 4"]
    assert out["hits"] == {"encode-text:positive": True, "encode-text:negative": True,
                           "encode-conditioning": True, "denoise": False, "decode": False,
                           "save": False}
    assert out["save"] == _reference(tmp_path)
    with Cache(tmp_path / "cache") as cache:
        assert cache.verify().corrupt == () and not list(cache.index.items("partial"))


def test_two_concurrent_runs_compute_each_step_once(tmp_path: Path, counts: Path) -> None:
    make_world(tmp_path / "world")
    slow = {"FAKE_STEP_SLEEP": "0.15"}
    a, b = _start(tmp_path, "a", **slow), _start(tmp_path, "b", **slow)
    ra, rb = _finish(*a), _finish(*b)
    assert ra["save"] == rb["save"] and ra["archive"] != rb["archive"]
    assert max(ra["started"], rb["started"]) < min(ra["ended"], rb["ended"])  # they overlapped
    assert count(counts, "denoise") == 1 and count(counts, "encode-text") == 2
    assert count(counts, "save") == 1
    assert sorted([ra["hits"]["denoise"], rb["hits"]["denoise"]]) == [False, True]
    with Cache(tmp_path / "cache") as cache:
        assert cache.verify().corrupt == ()
