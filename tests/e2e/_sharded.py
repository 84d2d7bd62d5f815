"""Shared harness of the sharded-training tests: accelerate's FSDP on CPU processes, a killed run resumed.

accelerate (1.x) runs FSDP only on GPUs (docs/training-distributed.md). ``fsdp_on_cpu`` lifts
wanflow's refusal of FSDP without CUDA (``train_checks._cuda_problems``, checked at
validation) and puts ``_fsdp_on_cpu`` on the ``PYTHONPATH`` of the processes a run starts, whose
``sitecustomize`` makes accelerate's CPU state FSDP in every worker ``accelerate launch`` starts
for FSDP: from there on the run takes accelerate's own FSDP2 path over gloo. Used by the tests of
LongCat-Video (tests/e2e/test_longcat_train_sharded.py) and of the Wan DiTs
(tests/train/test_distributed_fsdp.py: Wan2.1, Wan2.2-S2V); ``killed_and_resumed`` by the DDP
tests too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "_fsdp_on_cpu"

#: Runs a recipe in a fresh interpreter: ``python -c RUN [lift] recipe runs``; with ``lift`` the
#: refusal of FSDP without CUDA is lifted there, as ``fsdp_on_cpu`` lifts it in the test's process.
_RUN = ("import sys; from pathlib import Path; from tests.e2e._run import run; from wanflow.steps import train_checks\n"
        "if sys.argv[1] == 'lift': train_checks._cuda_problems = lambda r, w: []\n"
        "run(Path(sys.argv[2]), Path(sys.argv[3]))")


def run_fsdp_on_cpu(mp: pytest.MonkeyPatch) -> None:
    """Through ``mp``: past validation (which refuses FSDP without CUDA), the workers of the runs
    started in this process run accelerate's FSDP on the CPU."""
    from wanflow.steps import train_checks

    if torch.cuda.is_available():
        pytest.skip("runs accelerate's FSDP over gloo on the CPU; with CUDA the workers would take the GPU")

    mp.setattr(train_checks, "_cuda_problems", lambda resolved, where: [])
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HARNESS), os.environ.get("PYTHONPATH")])))


@pytest.fixture()
def fsdp_on_cpu(monkeypatch):
    """``run_fsdp_on_cpu`` for one test."""
    run_fsdp_on_cpu(monkeypatch)


def killed_and_resumed(recipe: Path, runs: Path, env: dict[str, str], tmp: Path, processes: int = 2,
                       lift: bool = False) -> tuple[SimpleNamespace, int, str]:
    """Run ``recipe`` in a process killed outright once its first checkpoint is handed to the
    engine, check no worker outlives it, and run it again in a new process over the same cache
    (``env``'s; ``TMPDIR`` is set to ``tmp``, where the job folders are). Returns the completed
    run's outcome (``archive``), the step the train step resumed from and the second run's output."""
    env = {**env, "TMPDIR": str(tmp)}
    argv = [sys.executable, "-c", _RUN, "lift" if lift else "-", str(recipe), str(runs)]
    parent = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handed = wait_for(lambda: list(tmp.glob("wanflow-train-*/handed")), parent)
    os.kill(parent.pid, signal.SIGKILL)  # the engine step dies with a checkpoint handed to the engine
    parent.wait()
    pids = [int(p.read_text()) for p in (handed[0].parent / "pids").iterdir()]
    assert len(pids) == processes
    wait_for(lambda: not any(alive(pid) for pid in pids), None)  # no orphaned worker trains on

    second = subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    archives = [a for a in (runs / recipe.stem).iterdir() if (a / "COMPLETE").exists()]
    assert len(archives) == 1
    events = [json.loads(line) for line in (archives[0] / "events.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "step.resume" and e.get("node") == "train"]
    assert resumes, "the train step started over"
    return SimpleNamespace(archive=archives[0]), int(resumes[0]["done"]), second.stdout + second.stderr


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (finished, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(found, process, seconds: float = 120.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = found()
        if value:
            return value
        assert process is None or process.poll() is None, "the run ended before it was killed"
        time.sleep(0.05)
    raise AssertionError("timed out")
