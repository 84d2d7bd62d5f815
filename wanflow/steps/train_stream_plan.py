"""Where the train step's frozen base streams its blocks: the policy's choice, before anything loads.

A LoRA's frozen base may stream its last blocks (``wanflow.memory.train_placement``): from host
memory (``[memory].policy = "stream"``) or from the mapped checkpoint (``"disk"``). What the
policy gives:

- a device run: ``stream`` and ``disk`` stream the fewest blocks that fit the device budget
  (none when the resident step fits); ``auto`` keeps the DiT resident when the step fits, and
  otherwise streams the fewest blocks from host memory that fit; ``none`` and ``offload`` keep
  it resident (the train step holds the DiT it trains for the whole step);
- a CPU run, whose device is host memory: ``stream`` streams every block through the host tier
  (the weights are not copied: nothing is saved, and the numbers of a streamed run can be checked
  on any machine), ``disk`` reads every block from the mapped file (the run holds about two
  blocks of the base); ``auto`` keeps it resident.

Only a LoRA over a Wan DiT or a variant in ``TRAIN_STREAMED`` streams (``streamable``; a
variant's side modules stay resident), its blocks stored in fp8 or not (fp8 blocks stream as
fp8, sized at their fp8 bytes); the recipe's rules refuse ``stream`` and ``disk`` for the rest,
naming why. Placement never changes the numbers, so the tiers are not in
the step's key (``TrainModel.tiers``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.errors import display_path
from wanflow.memory.planner import Budgets, MemoryPlanError, StepPeak
from wanflow.memory.train_stream_estimate import stream_tiers
from wanflow.steps.memory_plan import TrainJob, _fits, _train_refusal, sized_train_step

#: The DiTs whose frozen base streams while a LoRA trains: the Wan DiT (no variant, None) and
#: the variants (``dit_variants``) whose deferred ``load_placed`` training places
#: (``memory.train_placement.streamed_base``).
TRAIN_STREAMED = (None, "LongCat-Video", "Wan2.2-Animate", "Wan2.2 S2V")


@attrs.frozen
class TrainStepPeak(StepPeak):
    """The train step's peak, and each trained DiT's block tiers where some block streams."""

    tiers: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def describe(self) -> list[str]:
        """Readable lines for ``wanflow plan``: what each trained DiT streams."""
        where = {"host": "copied in block by block from host memory", "disk": "read from the mapped checkpoint"}
        out = []
        for role, tiers in self.tiers:
            streamed = [t for t in tiers if t != "device"]
            out.append(f"  train: {role}'s frozen base: {len(tiers) - len(streamed)} blocks resident, "
                       f"{len(streamed)} {where[streamed[0]]}")
        return out


def streamable(t: Any, values: Mapping[str, Any], files: Mapping[str, Sequence[Path]],
               parts: Sequence[str]) -> bool:
    """Whether the train step can stream its frozen base's blocks: a LoRA over Wan DiTs or the
    variants in ``TRAIN_STREAMED`` (stored in fp8 or not: fp8 blocks stream as fp8), without a component trained alone, a preset LoRA merged
    into the base, compiled blocks or several processes, with gradient checkpointing
    (``wanflow.recipe.train_rules`` refuses the rest by name)."""
    from wanflow.memory.dit_variants import variant_of

    if t.method != "lora" or parts or t.preset_lora or values.get("runtime.compile", "none") != "none":
        return False
    if not t.gradient_checkpointing or t.distribution != "none":
        return False
    variants = [variant_of(list(paths)) for paths in files.values()]
    return all(getattr(v, "name", None) in TRAIN_STREAMED for v in variants)


def fewest_streamed(train: TrainJob, budgets: Budgets, tier: str) -> int | None:
    """The fewest blocks streamed in ``tier`` with which the step fits, None when none does."""
    return next((n for n in range(train.layers + 1)
                 if _fits(train.peak(streamed=n, stream_tier=tier), budgets)), None)


def stream_fix(train: Any, budgets: Budgets) -> list[tuple[str, dict[str, Any]]]:
    """The refusal's offer of ``[memory].policy = "stream"`` (as a ``_train_fixes`` change) where the
    step can stream, does not yet, and fits with some blocks streamed from host memory."""
    if not getattr(train, "streamable", False) or not train.device_run or getattr(train, "streamed", 0):
        return []
    fewest = fewest_streamed(train, budgets, "host")
    if fewest is None:
        return []
    return [(f'[memory].policy = "stream" (the frozen base\'s last {fewest} of {train.layers} blocks '
             "streamed from host memory; same numbers)", {"streamed": fewest})]


def planned_train_step(path: Any, train: TrainJob, budgets: Budgets, policy: str) -> StepPeak:
    """The train step's peak under ``policy`` (the module docstring), or MemoryPlanError."""
    layers = train.layers
    if policy in ("stream", "disk") and not train.streamable:  # what the recipe's rules cannot see: the files
        where = f"{display_path(path)}: " if path else ""
        raise MemoryPlanError(f'{where}[memory].policy = "{policy}": the DiT this run trains does not stream its '
                              "frozen blocks while training (a LoRA over a Wan DiT, LongCat-Video's, Animate's or "
                              "S2V's does; these files hold another DiT variant); use policy \"auto\" or \"none\"",
                              ['[memory].policy = "auto"'])
    streams = train.streamable and policy in ("stream", "disk", "auto")
    tier = "disk" if policy == "disk" else "host"
    if not streams or (policy == "auto" and (not train.device_run or _fits(train.peak(), budgets))):
        return sized_train_step(path, train, budgets)
    count = layers if not train.device_run else fewest_streamed(train, budgets, tier)
    if count is None:  # not even every block streamed fits: the refusal's numbers are the streamed step's
        widest = attrs.evolve(train, streamed=layers, stream_tier=tier)
        raise _train_refusal(path, widest, widest.peak(), budgets)
    chosen = attrs.evolve(train, streamed=count, stream_tier=tier)
    found = chosen.peak()
    if not _fits(found, budgets):
        raise _train_refusal(path, chosen, found, budgets)
    tiers = tuple((role, stream_tiers(layers, count, tier)) for role in train.dit_files) if count else ()
    return TrainStepPeak("train", found.device_bytes, found.host_bytes, tiers)
