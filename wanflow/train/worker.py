"""The training loop's processes acting together through accelerate (one per worker process).

``Accelerated`` is what the loop's ``Alone`` is for one process: it wraps the experts and the
optimizer with the engine accelerate was launched for (DDP, FSDP, DeepSpeed), weights each
process's shard so that averaging gradients over the processes gives the global batch's mean,
back-propagates through the engine, clips the global gradient and averages the logged loss.
``DistributedTrainer`` checkpoints: under DDP every process holds every trained tensor, so its
state is the single-process one; under FSDP and ZeRO each holds a shard, so accelerate's
``save_state`` writes them all and rank 0 packs the folder.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import attrs
import torch

from wanflow.errors import WanflowError
from wanflow.train.adapters import full_stored
from wanflow.train.loop import Alone, Trainer

#: distribution -> the accelerate DistributedType names that mean it really runs.
ENGINES = {"ddp": ("MULTI_CPU", "MULTI_GPU"), "fsdp": ("FSDP",),
           "deepspeed-zero2": ("DEEPSPEED",), "deepspeed-zero3": ("DEEPSPEED",)}


class EngineMismatch(WanflowError):
    """accelerate started another engine than the recipe asked for (it falls back silently)."""


class Accelerated(Alone):
    """The loop's collective operations, run by accelerate's Accelerator."""

    def __init__(self, distribution: str, gradient_accumulation: int):
        from accelerate import Accelerator

        # accelerate divides by its own accumulation count; the loop already divides its losses
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=1)
        got = self.acc.distributed_type.name
        if got not in ENGINES[distribution]:
            raise EngineMismatch(
                f'[train].distribution = "{distribution}": accelerate runs this process as {got} '
                f"(on {'CUDA' if torch.cuda.is_available() else 'the CPU'}), not {ENGINES[distribution][0]}; "
                'FSDP and DeepSpeed need CUDA GPUs: use "ddp" here')
        self.distribution = distribution
        self.accumulation = gradient_accumulation
        self.sharded = distribution != "ddp"

    @property
    def rank(self) -> int:
        return self.acc.process_index

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def device(self) -> str:
        return str(self.acc.device)

    def prepare(self, trainer: Trainer) -> None:
        """Wrap every expert and the optimizer; the trainer trains and validates through them."""
        plain = [e.model for e in trainer.experts]
        prepared = self.acc.prepare(*plain, trainer.optimizer)
        *models, trainer.optimizer = prepared
        for model, dit in zip(models, plain, strict=True):
            if model is not dit and not hasattr(model, "cfg"):
                model.cfg = dit.cfg  # the loss reads the DiT's patch size from the model it calls
        trainer.experts = [attrs.evolve(e, model=m) for e, m in zip(trainer.experts, models, strict=True)]
        # FSDP2 and ZeRO replace or partition parameters: the trained ones are read back from the models
        trainer.params = {f"{e.role}/{n}": p for e in trainer.experts
                          for n, p in self.acc.unwrap_model(e.model).named_parameters() if p.requires_grad}
        trainer.together = self

    # ------------------------------------------------------------------ the loop's hooks

    def share(self, shard: int, batch: int) -> float:
        """world · shard / batch: the engines average gradients, so each shard's mean loss is
        weighted by its share of the batch (1 when the batch splits evenly, 0 for an empty shard)."""
        return self.world * shard / batch

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.acc.gradient_state._set_sync_gradients(last)
        if self.distribution.startswith("deepspeed"):
            loss = loss * self.accumulation  # DeepSpeed divides by its accumulation count again
        self.acc.backward(loss)

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> None:
        self.acc.clip_grad_norm_(params, max_norm)  # the norm of the whole (all-reduced or sharded) gradient

    def mean(self, value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(total, reduction="mean"))

    # ------------------------------------------------------------------ outputs

    def trained_tensors(self, trainer: Trainer, lora: bool) -> dict[str, torch.Tensor]:
        """What run_training returns as trained tensors, gathered whole (every process must call)."""
        out = {}
        for e in trainer.experts:
            state = self.acc.get_state_dict(e.model)
            stored = full_stored(self.acc.unwrap_model(e.model))  # () : every weight
            for name, tensor in state.items():
                key = f"{e.role}/{name}"
                if lora and key in trainer.params:
                    out[key] = tensor.detach().float().cpu().contiguous()
                elif not lora and name.startswith(stored or ("",)):
                    out[key] = tensor.detach().cpu().contiguous()
        return out


class DistributedTrainer(Trainer):
    """The loop, checkpointing through the engine when the processes hold shards of the state."""

    together: Accelerated
    scratch: Path = Path(tempfile.gettempdir())  # the worker sets its job folder (shared by the ranks)

    def state_bytes(self) -> bytes:
        """DDP: the single-process state (every rank holds it whole). FSDP/ZeRO: accelerate's
        save_state of every rank's shard plus the loop's own counters, packed by rank 0 (every
        rank must call; the others get empty bytes)."""
        if not self.together.sharded:
            return super().state_bytes()
        acc, folder = self.together.acc, self.scratch / f"state-{self.step}"
        acc.save_state(str(folder))
        if acc.is_main_process:
            meta = io.BytesIO()
            torch.save({"step": self.step, "history": self.history, "kept": dict(self.kept)}, meta)
            (folder / "wanflow-trainer.pt").write_bytes(meta.getvalue())
        acc.wait_for_everyone()
        data = _tar(folder) if acc.is_main_process else b""
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(folder)
        return data

    def load_state(self, data: bytes) -> None:
        if not self.together.sharded:
            super().load_state(data)
            return
        acc, folder = self.together.acc, self.scratch / "resumed-state"
        if acc.is_main_process:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(folder, filter="data")
        acc.wait_for_everyone()
        acc.load_state(str(folder))
        meta = torch.load(folder / "wanflow-trainer.pt", weights_only=True)
        self.step, self.kept = int(meta["step"]), dict(meta["kept"])
        self.history = [list(r) for r in meta["history"]]


def _tar(folder: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return out.getvalue()


def exit_with_parent(parent: int, every: float = 1.0) -> threading.Thread:
    """A daemon thread that ends this worker when the process that launched the run is gone
    (a killed run leaves no workers behind, training on)."""

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(3)

    thread = threading.Thread(target=watch, name="wanflow-parent-watch", daemon=True)
    thread.start()
    return thread


def atomic_write(path: Path, data: bytes) -> None:
    """Write then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
