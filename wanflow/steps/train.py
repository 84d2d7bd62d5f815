"""train: the training stage as one long, resumable engine step, and the steps that export it.

Its inputs are the cached encodes of every sample (text features, clip latents, conditioning),
so a second run with another learning rate re-encodes nothing, and its key holds everything that
changes the trained weights: the [train] settings, the samples' encodes, the base weights, the
LoRA it starts from. It checkpoints through the engine's partial state (every
``checkpoint_every`` steps), so a killed run resumes where its last checkpoint left it.

Output (tensors): the trained tensors under ``<dit role>/<parameter>`` (LoRA factors, or every
weight of a fully fine-tuned DiT; a part trained alone under ``<part>/controller.<parameter>``),
the loss history (``history``), and the validation latents
(``validation/<step>/<prompt>``). ``export`` turns them into files; ``validation-latents``,
``decode`` and ``save`` into videos.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import KEYED_WHEN_SET, NOT_KEYED
from wanflow.steps.text import RUNTIME_READS

#: [train] settings that only change how the run executes, never its numbers: where activations
#: live and when they are recomputed, how often the state is checkpointed. Out of every key.
EXECUTION_ONLY = ("gradient_checkpointing", "offload_activations", "checkpoint_every")
#: The [train] settings that change the trained numbers (paths are keyed by content elsewhere:
#: the samples through their encodes, LoRA files as weights).
TRAIN_READS = tuple(f"train.{k}" for k in (
    "task", "method", "steps", "learning_rate", "weight_decay", "max_grad_norm", "batch_size",
    "gradient_accumulation", "lora_rank", "lora_alpha", "lora_targets", "preset_lora_scale", "optimizer",
    "schedule", "warmup_steps", "seed", "timestep_range", "shift", "loss_weighting",
    "validate_every", "validation_samples", "distribution", "processes", "caption_dropout")) + ("memory.fp8",)
#: What validation sampling reads (its videos are outputs of the step).
SAMPLER_READS = ("sampler.steps", "sampler.shift", "sampler.cfg", "sampler.solver", "video.width",
                 "video.height", "video.frames", "runtime.attention")


@attrs.frozen
class TrainModel:
    """Trained tensors, loss history and validation latents from the samples' encodes."""

    experts: tuple[tuple[str, int], ...]  # (DiT role, number of weight files)
    samples: tuple[tuple[int, str, bool], ...]  # (index, bucket, held out for validation)
    conditions: tuple[str, ...]  # per-sample encodes besides text and x0: "y", "clip"
    first_frame: bool  # TI2V: the first frame is given (clean, outside the loss)
    boundary: float  # A14B: the σ·1000 where the high-noise expert hands over; 0 for one DiT
    validation_prompts: int  # how many validation prompts (their encodes are inputs)
    z_dim: int
    latent_stride: int
    init: tuple[str, ...] = ()  # weight roles present: "lora_init", "preset_lora"
    #: Families trained through their declared conditioners: (sample, the conditioner roles of its
    #: encodes, in declared order); their tensors arrive as inputs "<role>.<sample>".
    conditioned: tuple[tuple[int, tuple[str, ...]], ...] = ()
    #: A component trained alone, the DiT frozen (``FamilySpec.trainable_parts``: speed control's
    #: "motion_controller"); its file is the weight "<part>.0". () trains the DiTs.
    parts: tuple[str, ...] = attrs.field(default=(), metadata=KEYED_WHEN_SET)  # DiT training keys as before
    solver: Any = attrs.field(default=None, metadata=NOT_KEYED)  # keyed through the node's uses
    #: The memory plan's predicted peak of this step (said if it runs out of memory; not keyed).
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: (DiT role, tier of each block) where the memory plan streams the frozen base's blocks
    #: (``wanflow.steps.train_stream_plan``; placement: never keyed, the numbers are the same).
    tiers: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(default=(), metadata=NOT_KEYED)
    #: ("train.<setting>", value) of the EXECUTION_ONLY settings: honoured, never keyed.
    execution: tuple[tuple[str, Any], ...] = attrs.field(default=(), metadata=NOT_KEYED)
    kind: str = "train"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*TRAIN_READS, *SAMPLER_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom
        from wanflow.steps.train_run import run_training

        with reported_oom(self.kind, self.peak):
            return run_training(self, ctx)

    def conditioning(self, index: int) -> tuple[str, ...]:
        """The conditioner roles of sample ``index``'s encodes (families trained through their
        declared conditioners; () otherwise)."""
        return dict(self.conditioned).get(index, ())

    def encodes(self, index: int) -> tuple[str, ...]:
        """Every per-sample encode of sample ``index`` besides its text: x0, y/clip, conditioners."""
        return ("x0", *self.conditions, *self.conditioning(index))

    def run_params(self, ctx: Any) -> dict[str, Any]:
        """The keyed params with the execution-only settings added: what the loop reads."""
        return {**ctx.params, **dict(self.execution)}


@attrs.frozen
class ValidationLatents:
    """One validation video's latents, picked out of the train step's output for decoding."""

    name: str  # "validation/<step>/<prompt>"
    kind: str = "validation-latents"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ()

    def run(self, ctx: Any) -> dict[str, Any]:
        return {"latents": ctx.input("trained")[self.name]}


@attrs.frozen
class LossHistory:
    """The loss history as CSV (``fmt = "csv"``) or as a plot (``"png"``)."""

    fmt: str
    kind: str = "loss-history"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = ()

    def run(self, ctx: Any) -> bytes:
        from wanflow.train.history import to_csv, to_png

        rows = ctx.input("trained")["history"].tolist()
        return to_csv(rows) if self.fmt == "csv" else to_png(rows)


@attrs.frozen
class ExportWeights:
    """The trained weights of one DiT as a safetensors file: a LoRA in ``dialect``, or the full
    weights under the official key names, with the run's facts in the header."""

    role: str
    method: str  # "lora" | "full"
    dialect: str
    header: tuple[tuple[str, str], ...]  # base model, recipe digest, … (in the file, so keyed)
    kind: str = "export"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = ("train.lora_alpha", "train.lora_rank", "train.steps")

    def run(self, ctx: Any) -> bytes:
        from wanflow.steps.train_run import export_bytes

        return export_bytes(self, ctx)
