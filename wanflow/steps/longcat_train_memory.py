"""LongCat-Video's train step in its job's memory plan: its inputs, sized, or refused with the fixes.

What a Wan training job's plan does for its train step (``steps.memory_plan``: ``TrainJob``,
``sized_train_step``, the same refusal and the same [train] changes offered), for LongCat's DiT:
its config and weights read off its own headers (its fp32 islands, ``longcat_config.keeps_fp32``),
its train step sized by ``memory.longcat_train_estimate`` at the dataset's largest bucket (a
continuation's conditioning frames are tokens of its clip). A LoRA's frozen base may be stored
in fp8 (``[memory].fp8``: its block projections at one byte, as a refusal may offer) and stream
its last blocks from host memory or disk as a Wan DiT's (``train_stream_plan``,
``train_stream_estimate``: the blocks at their stored bytes). A distributed
run is sized as a Wan DiT's (``train_estimate.spread``): one process's device peak as a whole
replica (an upper bound for FSDP and ZeRO, which shard), every process's host memory and, under
DeepSpeed, the optimizer state (and ZeRO-3's parameters) it keeps on the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.memory import longcat_train_estimate as lte
from wanflow.memory.estimates import FP32, latent_grid
from wanflow.memory.longcat_estimate import longcat_tokens
from wanflow.memory.planner import Budgets, StepPeak
from wanflow.memory.sizes import TensorInfo, block_index, component_size
from wanflow.memory.train_estimate import Trained, TrainPeak, TrainSetup, spread
from wanflow.memory.train_stream_estimate import streamed_peak
from wanflow.models import longcat_config
from wanflow.steps.memory_plan import (
    TrainSettings,
    adapted_weights,
    linear_weights,
    train_settings,
)
from wanflow.steps.train_stream_plan import planned_train_step, streamable


@attrs.frozen(kw_only=True)
class LongCatTrainJob(TrainSettings):
    """LongCat's train step; ``peak`` re-estimates it with changed [train] settings (the changes a
    refusal offers)."""

    config: longcat_config.LongCatConfig
    tensors: Mapping[str, TensorInfo]  # the DiT's header: every tensor's shape and dtype

    @property
    def layers(self) -> int:
        """The DiT's blocks (what ``train_stream_plan`` streams the last of)."""
        return self.config.depth

    def peak(self, **changes: Any) -> TrainPeak:
        job = attrs.evolve(self, **changes)
        lora = job.method == "lora"
        size = component_size("dit", job.tensors, job.itemsize if lora else FP32, keeps_fp32=longcat_config.keeps_fp32,
                              blocks=True)
        size = size.as_fp8() if lora and job.fp8 else size
        shapes = {name: t.shape for name, t in job.tensors.items()}
        adapters = None
        if lora:
            adapters, params, block = lte.lora_adapters(linear_weights(shapes), adapted_weights(shapes, job.targets), job.rank)
        else:
            params = sum(math.prod(shape) for shape in shapes.values())
            block = sum(math.prod(shape) for name, shape in shapes.items() if block_index(name) == 0)
        dit = Trained(size.weight_bytes, params, block, job.config.depth)
        setup = TrainSetup(job.method, job.batch, job.grid, job.itemsize if lora else FP32, job.checkpointing,
                           job.offload, adapters)
        loading = component_size("dit", job.tensors, FP32, keeps_fp32=longcat_config.keeps_fp32).largest_tensor_bytes
        found = lte.train_peak(job.config, setup, dit, device_run=job.device_run, accumulation=job.accumulation,
                               loading_bytes=loading)
        found = streamed_peak(found, [size.block_bytes], job.streamed, job.stream_tier, device_run=job.device_run)
        return spread(found, [dit], job.distribution, job.processes)


def longcat_train_job(job: Any, config: longcat_config.LongCatConfig, tensors: Mapping[str, TensorInfo],
                      itemsize: int, device: str) -> LongCatTrainJob:
    """The train step's inputs: the [train] settings, the DiT's header and the dataset's largest bucket."""
    from wanflow.steps.train_data import training_dataset

    t = job.resolved.recipe.train
    targets = [s.target for s in training_dataset(job.resolved).samples]
    grids = {s: latent_grid(s.frames, s.height, s.width, "wan2.1") for s in targets}
    largest = max(targets, key=lambda s: (longcat_tokens(config, grids[s]), s))
    files = {"dit": [w.path for w in job.weights["dit"].values()]}
    return LongCatTrainJob(config=config, tensors=tensors, streamable=streamable(t, job.values, files, ()),
                           **train_settings(t, job.values, files, grids[largest], largest.bucket, itemsize, device))


def longcat_train_step_peak(job: Any, config: longcat_config.LongCatConfig, tensors: Mapping[str, TensorInfo],
                            itemsize: int, device: str, budgets: Budgets) -> StepPeak:
    """The train step's predicted peak (with the frozen base's streamed blocks where the policy
    streams them, ``train_stream_plan``), or MemoryPlanError naming the [train] changes that fit."""
    train = longcat_train_job(job, config, tensors, itemsize, device)
    return planned_train_step(getattr(job.resolved, "path", None), train, budgets, job.values["memory.policy"])
