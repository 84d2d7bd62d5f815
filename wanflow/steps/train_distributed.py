"""The train step in several processes: a job folder, ``accelerate launch``, and the workers followed.

The engine step stays the one the engine knows (same key, same output, same partial state): it
writes into a private job folder everything a worker needs (the step with its sampler resolved,
the params, the weight paths, every encode the step reads as safetensors, the state to resume
from), writes accelerate's (and DeepSpeed's) configuration, launches the workers and follows
them: each checkpoint rank 0 writes is handed to ``ctx.save_partial`` (so a killed distributed
run resumes like a single-process one), its progress drives the bar, and its final tensors are
the step's output. A failed worker is reported by rank, with its last lines of output; if the
engine step itself is interrupted, its workers are ended with it (and end on their own if it
is killed outright).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import structlog
import torch

from wanflow.errors import WanflowError
from wanflow.steps.component import component_runtime
from wanflow.steps.train_worker import (
    CHECKPOINTS,
    ERRORS,
    FINAL,
    JOB,
    LOGS,
    PROGRESS,
    RESUME,
)
from wanflow.train.distributed import launch_command, write_configs

log = structlog.get_logger(__name__)

#: The module every worker runs.
WORKER = "wanflow.steps.train_worker"
#: Lines of a failed worker's output shown in the error.
TAIL_LINES = 25
#: The file where the engine step records the last checkpoint it handed to the engine.
HANDED = "handed"


class TrainingWorkerError(WanflowError):
    """A process of a distributed training run failed; the message names its rank and output."""


@attrs.frozen
class LoadedSolver:
    """A sampler already loaded, standing in for the registry entry (which does not pickle)."""

    fn: Any

    def load(self) -> Any:
        return self.fn


def run_distributed(step: Any, ctx: Any) -> dict[str, torch.Tensor]:
    """Train in ``[train].processes`` processes through accelerate; the output of run_training."""
    with tempfile.TemporaryDirectory(prefix="wanflow-train-") as tmp:
        job = Path(tmp)
        write_job(job, step, ctx)
        _, compute = component_runtime(ctx.params)
        config = write_configs(job, ctx.params, str(compute).removeprefix("torch."), trained_shard_unit(step, ctx))
        resumed = ctx.load_partial()
        if resumed is not None:
            (job / RESUME).write_bytes(bytes(resumed[1]))
            log.info("train.resumed", step=resumed[0], of=ctx.params["train.steps"])
        done = resumed[0] if resumed is not None else 0
        trained = follow(launch_command(config, job, WORKER), job, ctx, done)
        log.info("train.distributed.done", processes=ctx.params["train.processes"], resumed_at=done,
                 trained_steps=trained)
        from safetensors.torch import load_file

        return load_file(str(job / FINAL))


def trained_shard_unit(step: Any, ctx: Any) -> str:
    """The transformer block class FSDP wraps, read off the trained DiT's files (A14B's two experts
    are Wan DiTs alike)."""
    from wanflow.memory.dit_variants import shard_unit

    role, n = step.experts[0]
    return shard_unit([ctx.weight(f"{role}.{i}") for i in range(n)])


def write_job(job: Path, step: Any, ctx: Any) -> None:
    """The step, params, weight paths and every encode the step reads, into the job folder."""
    from safetensors.torch import save_file

    (job / "inputs").mkdir()
    p = step.run_params(ctx)
    roles = [f"{kind}.{i}" for i, _, _ in step.samples for kind in ("text", *step.encodes(i))]
    roles += [f"val.pos.{k}" for k in range(step.validation_prompts)]
    if step.validation_prompts and float(p["sampler.cfg"]) != 1.0:
        roles.append("val.neg")
    for role in roles:
        save_file({k: v.contiguous() for k, v in ctx.input(role).items()}, str(job / "inputs" / f"{role}.safetensors"))
    weights = {f"{role}.{i}": str(ctx.weight(f"{role}.{i}")) for role, n in step.experts for i in range(n)}
    weights |= {name: str(ctx.weight(name)) for name in (*step.init, *(f"{part}.0" for part in step.parts))}
    solver = LoadedSolver(step.solver.load()) if step.solver is not None else None
    spec = {"step": attrs.evolve(step, solver=solver), "params": dict(p), "weights": weights, "parent": os.getpid()}
    (job / JOB).write_bytes(pickle.dumps(spec))


def follow(command: list[str], job: Path, ctx: Any, done: int) -> int:
    """Run the workers to the end, handing on checkpoints and progress; raise on a failure.
    Returns the optimizer steps the workers took (fewer than ``steps`` when resumed)."""
    steps = int(ctx.params["train.steps"])
    bar = ctx.progress(steps - done, desc="train", unit="step")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(job / "launcher.log", "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    shown = 0
    try:
        while proc.poll() is None:
            time.sleep(0.25)
            shown = _advance(bar, job, shown)
            _hand_on(job, ctx)
    except BaseException:
        _end(proc)
        raise
    shown = _advance(bar, job, shown)
    _hand_on(job, ctx)
    bar.close()
    if proc.returncode != 0 or not (job / FINAL).exists():
        raise TrainingWorkerError(failure_report(job, proc.returncode))
    return shown


def _advance(bar: Any, job: Path, shown: int) -> int:
    try:
        now = int((job / PROGRESS).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return shown
    if now > shown:
        bar.update(now - shown)
    return max(now, shown)


def _hand_on(job: Path, ctx: Any) -> None:
    """Pass the newest checkpoint rank 0 wrote to the engine; drop it and any older one."""
    found = sorted((job / CHECKPOINTS).glob("*.bin")) if (job / CHECKPOINTS).exists() else []
    if not found:
        return
    newest = found[-1]
    ctx.save_partial(int(newest.stem), newest.read_bytes())
    (job / HANDED).write_text(newest.stem)
    for path in found:
        path.unlink()


def _end(proc: subprocess.Popen) -> None:
    """End the launcher and its workers (their own process group), politely, then not."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def failure_report(job: Path, returncode: int | None) -> str:
    """Which ranks failed and how, with their last lines of output."""
    lines = [f"distributed training failed (accelerate launch exited with {returncode})"]
    errors = sorted((job / ERRORS).glob("rank*.txt")) if (job / ERRORS).exists() else []
    for path in errors:
        rank = path.stem.removeprefix("rank")
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        lines += [f"rank {rank}: {first}", f"  last lines of rank {rank}'s output:",
                  *_tail(job / LOGS / f"rank{rank}.log")]
    if not errors:  # killed (memory, a signal) before it could say why: every rank's tail, then the launcher's
        logs = sorted((job / LOGS).glob("rank*.log")) if (job / LOGS).exists() else []
        for path in logs:
            lines += [f"rank {path.stem.removeprefix('rank')} (no error recorded) last lines:", *_tail(path)]
        lines += ["accelerate launch's last lines:", *_tail(job / "launcher.log")]
    return "\n".join(lines)


def _tail(path: Path) -> list[str]:
    if not path.exists():
        return ["    (no output)"]
    text = path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()
    return [f"    {line}" for line in text[-TAIL_LINES:]] or ["    (no output)"]
