"""One process of a distributed training step: ``python -m wanflow.steps.train_worker JOBDIR``.

``accelerate launch`` starts it once per process. It reads what the engine step wrote into the job
folder (the step, its params, the weight paths, every encode as safetensors, the state to resume
from) through ``JobContext``, which answers the step context's questions from that folder, and
runs the same loop as one process would (the helpers of ``train_run``), with accelerate's engine
in between. Rank 0 writes checkpoints, progress and the final tensors back into the folder,
each atomically; the engine step hands them on. Each rank's output goes to ``logs/rank<N>.log``
and its failure to ``errors/rank<N>.txt``, which the engine step reports.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

#: Files of the job folder, shared by the engine step and its workers.
JOB, RESUME, FINAL, PROGRESS = "job.pkl", "resume.bin", "final.safetensors", "progress"
CHECKPOINTS, LOGS, ERRORS, PIDS = "checkpoints", "logs", "errors", "pids"


class JobContext:
    """The step context of a worker: params, encodes, weights and checkpoints from the job folder."""

    def __init__(self, job: Path, spec: dict[str, Any], rank: int):
        self.job, self.rank = job, rank
        self.params: dict[str, Any] = spec["params"]
        self._weights: dict[str, str] = spec["weights"]
        self._inputs: dict[str, dict[str, torch.Tensor]] = {}  # read once, as the engine's loads are

    def input(self, role: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if role not in self._inputs:
            self._inputs[role] = load_file(str(self.job / "inputs" / f"{role}.safetensors"))
        return self._inputs[role]

    def weight(self, role: str) -> Path:
        return Path(self._weights[role])

    def load_partial(self) -> tuple[int, bytes] | None:
        path = self.job / RESUME
        return (-1, path.read_bytes()) if path.exists() else None

    def save_partial(self, done: int, state: bytes) -> None:
        from wanflow.train.worker import atomic_write

        if self.rank == 0:
            atomic_write(self.job / CHECKPOINTS / f"{done:08d}.bin", state)

    def progress(self, total: int, desc: str = "", unit: str = "it") -> _Progress:
        return _Progress(self.job / PROGRESS if self.rank == 0 else None)


class _Progress:
    """Rank 0's optimizer steps, written where the engine step reads them for its progress bar."""

    def __init__(self, path: Path | None):
        self.path, self.done = path, 0

    def update(self, n: int = 1) -> None:
        from wanflow.train.worker import atomic_write

        self.done += n
        if self.path is not None:
            atomic_write(self.path, str(self.done).encode())

    def close(self) -> None:
        pass


def train(job: Path, rank: int) -> None:
    """The training loop of one process; rank 0 writes the step's output into the job folder."""
    from safetensors.torch import save_file

    from wanflow.steps.component import component_runtime
    from wanflow.steps.train_run import (
        Validation,
        data_order,
        distill_sigmas,
        empty_context,
        expert_for,
        sample_tensors,
        step_is_lora,
    )
    from wanflow.train.batch import Batch, collate
    from wanflow.train.loop import Settings
    from wanflow.train.worker import (
        Accelerated,
        DistributedTrainer,
        atomic_write,
        exit_with_parent,
    )

    spec = pickle.loads((job / JOB).read_bytes())
    exit_with_parent(spec["parent"])
    ctx, step = JobContext(job, spec, rank), spec["step"]
    p = ctx.params
    together = Accelerated(p["train.distribution"], int(p["train.gradient_accumulation"]))
    device = together.device
    _, compute = component_runtime(p)
    build_on = "cpu" if p["train.distribution"] == "deepspeed-zero3" else device  # ZeRO-3 partitions from the CPU
    experts = [expert_for(step, ctx, role, n, build_on, compute) for role, n in step.experts]
    settings = Settings.from_params(p, distill_sigmas(step, p))
    held_out, order = data_order(step, ctx, p, together.world)

    def fetch(indices: tuple[int, ...]) -> Batch:
        return collate([sample_tensors(ctx, i, step) for i in indices], device, step.first_frame)

    validation = Validation(step, ctx, device, held_out, fetch)
    trainer = DistributedTrainer(experts, settings, order, fetch, validation if validation.active else None,
                                 rank=together.rank, world=together.world,
                                 empty_context=empty_context(ctx, p, device))
    trainer.scratch = job
    validation.trainer = trainer
    together.prepare(trainer)
    resumed = ctx.load_partial()
    if resumed is not None:
        trainer.load_state(resumed[1])
    trainer.run(ctx.save_partial, ctx.progress(settings.steps - trainer.step))
    out = together.trained_tensors(trainer, step_is_lora(p))
    if rank == 0:
        out["history"] = torch.tensor(trainer.history, dtype=torch.float64).reshape(-1, 4)
        out.update({k: v.contiguous() for k, v in trainer.kept.items()})
        tmp = job / f".{FINAL}.tmp"
        save_file(out, str(tmp))
        atomic_write(job / FINAL, tmp.read_bytes())
    together.acc.wait_for_everyone()
    together.acc.end_training()


def main(argv: list[str]) -> int:
    """Run one worker, its output in its log file and its failure in its error file."""
    job, rank = Path(argv[0]), int(os.environ.get("RANK", "0"))
    for folder in (LOGS, ERRORS, PIDS, CHECKPOINTS):
        (job / folder).mkdir(exist_ok=True)
    (job / PIDS / f"rank{rank}").write_text(str(os.getpid()))
    log = open(job / LOGS / f"rank{rank}.log", "ab", buffering=0)  # noqa: SIM115 (lives as long as the process)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        train(job, rank)
    except BaseException as exc:  # the engine step reports it, naming this rank
        (job / ERRORS / f"rank{rank}.txt").write_text(
            f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}", encoding="utf-8")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
