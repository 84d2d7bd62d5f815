"""A training run killed with SIGKILL at a random moment resumes and ends bit-identical."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e._train import write_dataset, write_train_recipe


def _start(recipe: Path, cache: Path, models_root: Path, runs: Path) -> subprocess.Popen:
    env = {**os.environ, "WANFLOW_MODELS": str(models_root), "WANFLOW_OFFLINE": "1", "WANFLOW_CACHE": str(cache),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "wanflow", "run", str(recipe), "--runs-dir", str(runs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_after_a_checkpoint(proc: subprocess.Popen, which: int, delay: float) -> list[str]:
    """Read the run's output until its ``which``-th training checkpoint, wait ``delay`` s, SIGKILL it."""
    lines, seen = [], 0
    for line in proc.stdout:
        lines.append(line)
        seen += "train.checkpoint" in line
        if seen == which:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return lines


def _archive(runs: Path) -> Path:
    (found,) = [p.parent for p in runs.glob("*/*/COMPLETE")]
    return found


def test_a_killed_training_run_resumes_to_bit_identical_weights(env, tmp_path, models_root):
    """Every run goes through the CLI in a fresh process, as a user's would (the step keys
    include the CPU thread count, which a test process may have changed)."""
    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "wan2.1-t2v-1.3b", metadata, steps=40, checkpoint_every=4,
                                batch_size=2, gradient_accumulation=2, schedule="cosine", warmup_steps=3)
    reference = _start(recipe, tmp_path / "cache-a", models_root, tmp_path / "runs-a")
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-2000:]
    expected = _archive(tmp_path / "runs-a") / "outputs"
    # a random checkpoint among the first six of nine, then a random moment within the next step or
    # so: mid-training whatever the machine's speed (at least 16 steps are left to run)
    chance = random.Random()
    which, delay = chance.randint(1, 6), chance.uniform(0.0, 0.02)
    killed = _start(recipe, tmp_path / "cache-b", models_root, tmp_path / "runs-b")
    lines = _kill_after_a_checkpoint(killed, which, delay)
    assert killed.returncode == -signal.SIGKILL, "".join(lines[-20:])

    resumed = _start(recipe, tmp_path / "cache-b", models_root, tmp_path / "runs-c")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:]
    archive = _archive(tmp_path / "runs-c")
    events = [json.loads(line) for line in (archive / "events.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e["event"] == "step.resume" and e["node"] == "train"]
    assert resumes and 4 * which <= resumes[0]["done"] < 40, f"killed {delay:.3f} s after checkpoint {which}"
    for name in ("lora.safetensors", "loss.csv"):
        assert (archive / "outputs" / name).read_bytes() == (expected / name).read_bytes(), name
