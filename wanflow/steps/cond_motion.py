"""motion-bucket: speed control's offset of the block modulation, from ``[inputs].motion_bucket``.

DiffSynth's speed-control release is a small MLP in its own file (the family's
``motion_controller`` component) that turns a motion bucket id (0 slow … 100 fast, the range it
was trained on) into a (1, 6, D) offset added to every block's time modulation. The offset
depends on the id and the controller alone, so it is one cached step: changing the id re-runs
it and the denoise, nothing else. It is computed in fp32 unless ``[models.motion_controller]``
says otherwise: the modulation it joins is an fp32 island, and fp32 keeps every id exact
(DiffSynth computes it in the pipeline's dtype, where bf16 rounds 10 x 37 = 370 to 368).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.steps.component import component_runtime
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.text import RUNTIME_READS

NODE = "motion-bucket"
COMPONENT = "motion_controller"


@attrs.frozen
class MotionOffset:
    """{"modulation": (1, 6, D) fp32}: the controller's output for the recipe's motion bucket."""

    dtype: str = "fp32"  # [models.motion_controller].dtype ("auto" follows [runtime].dtype)
    device: str = "auto"  # [models.motion_controller].device
    kind: str = "motion-offset"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("inputs.motion_bucket", *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.models.motion_controller import load_motion_controller

        device, dtype = component_runtime(ctx.params, self.dtype, self.device)
        controller = load_motion_controller(ctx.weight(COMPONENT), dtype=dtype, device=device)
        bucket = torch.tensor([float(ctx.params["inputs.motion_bucket"])], dtype=dtype, device=device)
        with torch.no_grad():
            return {"modulation": controller(bucket).float().cpu().contiguous()}  # (1, 6, D)


@attrs.frozen
class MotionBucketId:
    """{"motion_bucket": (1,) fp32}: the recipe's motion bucket id itself, for a training sample whose
    controller trains (``[train].components = ["motion_controller"]``): the train step runs the
    controller on it at every step, with gradients, instead of reading a frozen offset."""

    kind: str = "motion-bucket-id"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("inputs.motion_bucket",)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        return {BUCKET: torch.tensor([float(ctx.params["inputs.motion_bucket"])], dtype=torch.float32)}


#: The tensor a trained controller's sample carries, and the batch field it becomes.
BUCKET = "motion_bucket"


def as_trained(spec: StepSpec) -> StepSpec:
    """A sample's motion-bucket node when the controller itself trains: the id, no model run."""
    return attrs.evolve(spec, step=MotionBucketId(), weights={})


def _node(job: Any, declared: Any) -> StepSpec | None:
    if job.values.get("inputs.motion_bucket") is None:
        return None  # no speed asked for: the base model's motion (the family requires one)
    if COMPONENT not in job.weights:
        raise ValueError(f"family {job.family.name!r} declares motion-bucket but has no {COMPONENT} "
                         "component to compute the offset with")
    dtype = job.dtype(COMPONENT)
    step = MotionOffset("fp32" if dtype == "auto" else dtype, job.device(COMPONENT))
    return StepSpec(NODE, step, weights={COMPONENT: next(iter(job.weights[COMPONENT].values()))})


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_extras(modulation=tensor(tensors, "modulation", "motion"))  # (1, 6, D)


MOTION_BUCKET = Implementation(_node, _hand_off)
