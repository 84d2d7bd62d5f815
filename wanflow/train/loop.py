"""The training loop: optimizer steps over micro-batches, with exact resume.

Everything random is drawn from generators seeded by (seed, step, micro-batch) and the data order
is a function of (seed, batch number), so the state a checkpoint must hold is only the trained
tensors, the optimizer's state, the step counter and the history: a run killed at any moment
and resumed from its last checkpoint ends with the same bits as one that never stopped.

A14B: both experts train in one run. Each micro-batch draws its noise level first; the expert
that denoises that level (the family's boundary) takes the batch, and only its parameters get a
gradient (AdamW leaves parameters without one untouched, state included). One expert trained
alone draws every level on its own side of the boundary, uniformly, as the draws routed to it are.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence

import attrs
import structlog
import torch

from wanflow.train.batch import Batch, distill_loss, sft_loss
from wanflow.train.captions import dropped, with_dropped
from wanflow.train.objective import TrainingSchedule, draw, generator
from wanflow.train.order import BatchOrder

log = structlog.get_logger(__name__)

#: The draws of the validation loss come from their own stream, never from a training step's.
VALIDATION_STREAM = 0x7A11D


@attrs.frozen
class Settings:
    """The ``[train]`` values the loop uses."""

    task: str = "sft"
    steps: int = 1000
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 0.0
    gradient_accumulation: int = 1
    optimizer: str = "adamw"
    schedule: str = "constant"
    warmup_steps: int = 0
    checkpoint_every: int = 250
    seed: int = 0
    timestep_range: tuple[float, float] = (0.0, 1.0)
    shift: float = 5.0
    loss_weighting: str = "diffsynth"
    validate_every: int = 0
    offload_activations: bool = False
    caption_dropout: float = 0.0  # share of samples that learn the empty prompt
    distill_sigmas: tuple[float, ...] = ()  # direct_distill: the student's σ grid

    @classmethod
    def from_params(cls, p: Mapping, distill_sigmas: Sequence[float] = ()) -> Settings:
        names = [f.name for f in attrs.fields(cls) if f.name != "distill_sigmas"]
        values = {n: p[f"train.{n}"] for n in names}
        values["timestep_range"] = tuple(values["timestep_range"])
        return cls(**values, distill_sigmas=tuple(distill_sigmas))

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.steps - self.warmup_steps)
        done = (step - self.warmup_steps) / span
        if self.schedule == "cosine":
            return self.learning_rate * 0.5 * (1 + math.cos(math.pi * done))
        if self.schedule == "linear":
            return self.learning_rate * (1 - done)
        return self.learning_rate

    def validates_at(self, step: int) -> bool:
        """Validation after optimizer step ``step`` (1-based count): every N steps and at the end."""
        return step == self.steps or (self.validate_every > 0 and step % self.validate_every == 0)


@attrs.frozen
class Expert:
    """A DiT that trains on the noise levels at or above ``t_min`` (and below ``t_max``)."""

    role: str
    model: torch.nn.Module
    t_min: float = 0.0
    t_max: float = math.inf


def settle(model: torch.nn.Module) -> None:
    """After a backward through ``model``: the blocks its placement streams (the memory layer's
    ``TrainPlacement`` on ``model.placement``) leave the device; nothing for a resident DiT."""
    placement = getattr(model, "placement", None)
    if placement is not None and hasattr(placement, "settle"):
        placement.settle()


class Alone:
    """How the loop's processes act together, for one process: there is nothing to share.

    A distributed run swaps in its own (``wanflow.train.worker.Accelerated``); these four methods
    are the only places where the loop differs between one process and several.
    """

    def share(self, shard: int, batch: int) -> float:
        """The factor on a shard's mean loss that makes the processes' average the batch's mean."""
        return 1.0

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Back-propagate a micro-batch's loss (``last``: the optimizer step's final micro-batch)."""
        loss.backward()

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def mean(self, value: float) -> float:
        """A logged number averaged over the processes."""
        return value


def make_optimizer(settings: Settings, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


@attrs.define
class Timings:
    """Seconds spent per phase over the last reported steps (logged, never stored)."""

    data: float = 0.0
    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0

    def line(self, steps: int) -> dict[str, float]:
        return {k: round(v / max(1, steps), 4) for k, v in attrs.asdict(self).items()}


class Trainer:
    """Trains the parameters that require grad in ``experts`` on ``order``'s micro-batches.

    ``fetch(indices)`` gives a collated Batch of dataset samples on the device. ``validate(step)``
    (optional) returns {name: tensor} to keep (validation latents) and a validation loss (or NaN).
    """

    def __init__(self, experts: Sequence[Expert], settings: Settings, order: BatchOrder,
                 fetch: Callable[[tuple[int, ...]], Batch],
                 validate: Callable[[int], tuple[dict[str, torch.Tensor], float]] | None = None,
                 rank: int = 0, world: int = 1, empty_context: torch.Tensor | None = None):
        self.experts, self.settings, self.order, self.fetch = list(experts), settings, order, fetch
        if settings.caption_dropout > 0 and empty_context is None:
            raise ValueError("caption dropout needs the empty prompt's encoding")
        self.empty_context = empty_context  # (1, L, D): what a dropped caption is replaced with
        self.rank, self.world = rank, world
        self.together: Alone = Alone()  # a distributed run sets its own before training
        self.validate = validate
        self.schedule = TrainingSchedule.build(settings.shift, settings.loss_weighting)
        self.range = self.schedule.index_range(settings.timestep_range)
        self._sides: dict[str, tuple[int, int]] = {}  # each expert's side, found once (``_side``)
        if len(self.experts) == 1 and settings.task != "direct_distill":
            self._side(self.experts[0])  # one A14B expert alone: refuse a range off its side before step 1
        self.params = {f"{e.role}/{n}": p for e in self.experts for n, p in e.model.named_parameters()
                       if p.requires_grad}
        if not self.params:
            raise ValueError("nothing to train: no parameter requires a gradient")
        self.optimizer = make_optimizer(settings, list(self.params.values()))
        self.step = 0
        self.history: list[list[float]] = []
        self.kept: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ state

    def state_bytes(self) -> bytes:
        """Everything a resumed run needs, as bytes (tensors and plain values only)."""
        state = {"step": self.step, "params": {k: p.detach().cpu().clone() for k, p in self.params.items()},
                 "optimizer": self.optimizer.state_dict(), "history": [list(r) for r in self.history],
                 "kept": dict(self.kept)}
        out = io.BytesIO()
        torch.save(state, out)
        return out.getvalue()

    def load_state(self, data: bytes) -> None:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        missing = set(self.params) ^ set(state["params"])
        if missing:
            raise ValueError(f"checkpoint does not match the trained parameters ({sorted(missing)[:3]}…)")
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = [list(r) for r in state["history"]]
        self.kept = dict(state["kept"])

    # ------------------------------------------------------------------ training

    def run(self, checkpoint: Callable[[int, bytes], None], progress=None) -> None:
        """Optimizer steps from the current one to ``settings.steps``, checkpointing as it goes."""
        s = self.settings
        timings, since = Timings(), self.step
        started = time.perf_counter()
        while self.step < s.steps:
            loss = self._optimizer_step(timings)
            self.step += 1
            val = math.nan
            if self.validate is not None and s.validates_at(self.step):
                kept, val = self.validate(self.step)
                self.kept.update(kept)
            self.history.append([float(self.step), loss, s.lr_at(self.step - 1), val])
            if progress is not None:
                progress.update(1)
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                checkpoint(self.step, self.state_bytes())
            if self.step % 50 == 0 or self.step == s.steps:
                done = self.step - since
                left = (time.perf_counter() - started) / max(1, done) * (s.steps - self.step)
                log.info("train.step", step=self.step, of=s.steps, loss=round(loss, 5),
                         eta_s=round(left, 1), **timings.line(done))

    def _optimizer_step(self, timings: Timings) -> float:
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr_at(self.step)
        total = 0.0
        for micro in range(s.gradient_accumulation):
            number = self.step * s.gradient_accumulation + micro
            t0 = time.perf_counter()
            whole = self.order.batch(number)
            positions, indices = self.shard(whole)
            share = self.together.share(len(positions), len(whole))
            if not positions:  # a short last batch leaves this process nothing: its first sample, weighted 0
                positions, indices = (0,), whole[:1]
            batch = self.fetch(indices)
            t1 = time.perf_counter()
            loss = self._loss(batch, (self.step, micro), positions) / s.gradient_accumulation
            if share != 1.0:
                loss = loss * share
            t2 = time.perf_counter()
            self.together.backward(loss, last=micro == s.gradient_accumulation - 1)
            for expert in self.experts:  # streamed blocks leave the device once backward is done
                settle(expert.model)
            t3 = time.perf_counter()
            timings.data += t1 - t0
            timings.forward += t2 - t1
            timings.backward += t3 - t2
            total += float(loss.detach())
        t4 = time.perf_counter()
        if s.max_grad_norm > 0:
            self.together.clip(list(self.params.values()), s.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        timings.optimizer += time.perf_counter() - t4
        return self.together.mean(total)

    def shard(self, batch: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """This process's part of a global batch: (positions in the batch, dataset indices)."""
        per = -(-len(batch) // self.world)
        positions = tuple(range(self.rank * per, min(len(batch), (self.rank + 1) * per)))
        return positions, tuple(batch[j] for j in positions)

    def _loss(self, batch: Batch, stream: tuple[int, ...], positions: tuple[int, ...]) -> torch.Tensor:
        """The micro-batch's loss; every draw is seeded by (seed, *stream[, position])."""
        s = self.settings
        context = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()) \
            if s.offload_activations else contextlib.nullcontext()
        with context:
            if s.task == "direct_distill":
                noise = torch.cat([torch.randn(batch.x0[:1].shape, generator=generator(s.seed, *stream, j))
                                   for j in positions])
                return distill_loss(self.experts[0].model, batch, noise, s.distill_sigmas)
            expert, index_range = self._route(generator(s.seed, *stream))
            d = draw(self.schedule, batch.x0, index_range, s.seed, stream, positions)
            drop = dropped(s.caption_dropout, s.seed, stream, positions)
            if any(drop):
                batch = attrs.evolve(batch, context=with_dropped(batch.context, self.empty_context, drop))
            return sft_loss(expert.model, batch, d)

    def _route(self, gen: torch.Generator) -> tuple[Expert, tuple[int, int]]:
        """The expert this micro-batch trains, and the index range of its noise levels."""
        if len(self.experts) == 1:  # one DiT, or one A14B expert alone: its side of the boundary
            return self.experts[0], self._side(self.experts[0])
        lo, hi = self.range
        first = int(torch.randint(lo, hi, (1,), generator=gen))
        t = float(self.schedule.timesteps[first])
        expert = next(e for e in self.experts if e.t_min <= t < e.t_max)
        return expert, self._side(expert)

    def _side(self, expert: Expert) -> tuple[int, int]:
        """The indices of ``timestep_range`` whose noise level ``expert`` denoises ([first, stop)):
        the whole range for one DiT; an A14B expert's side of the boundary, whether it trains
        beside the other expert or alone (then every draw is uniform on that side, as the two-expert
        run's draws routed to it are)."""
        if expert.role in self._sides:
            return self._sides[expert.role]
        lo, hi = self.range
        inside = [i for i in range(lo, hi) if expert.t_min <= float(self.schedule.timesteps[i]) < expert.t_max]
        if not inside:
            raise ValueError(f"{expert.role} denoises no noise level of train.timestep_range "
                             f"{self.settings.timestep_range}: widen the range across the boundary")
        self._sides[expert.role] = inside[0], inside[-1] + 1
        return self._sides[expert.role]

    # ------------------------------------------------------------------ validation

    def validation_loss(self, batches: Sequence[Batch]) -> float:
        """Mean loss over held-out batches at fixed draws (the same at every validation)."""
        if not batches:
            return math.nan
        with torch.no_grad():
            losses = [float(self._loss(batch, (VALIDATION_STREAM, j), (0,))) for j, batch in enumerate(batches)]
        return sum(losses) / len(losses)
