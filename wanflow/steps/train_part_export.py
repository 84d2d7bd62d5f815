"""The export of a component trained alone: speed control's motion controller, in the release's layout.

DiffSynth's full-training script for the speed-control release trains the motion controller alone
(``--trainable_models motion_controller``); its release is that controller in one file,
``model.safetensors`` holding ``linear.{0,2,4}.{weight,bias}``. The train step keeps the
controller's fp32 master weights (``<part>/controller.<name>``); this step writes them under the
release's names, in the dtype of the controller file the run started from (the release's own,
so the trained file takes its place as it is), with the run's facts in the header.
The file loads wherever the release does: ``[models.motion_controller].source`` of a generation,
``load_motion_controller``.
"""

from __future__ import annotations

from typing import Any

import attrs

#: Where the train step's output holds the trained controller: "<part>/" + this + its own names.
TRAINED_PREFIX = "controller."


@attrs.frozen
class ExportPart:
    """The trained ``part`` (its base file is the weight ``part``) as one safetensors file."""

    part: str  # "motion_controller"
    header: tuple[tuple[str, str], ...]  # base model, recipe digest, … (in the file, so keyed)
    kind: str = "export-part"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = ("train.steps",)

    def run(self, ctx: Any) -> bytes:
        from wanflow.models.stable_safetensors import save_stable

        trained = ctx.input("trained")
        prefix = f"{self.part}/{TRAINED_PREFIX}"
        tensors = {k.removeprefix(prefix): v for k, v in trained.items() if k.startswith(prefix)}
        dtypes = base_dtypes(ctx.weight(self.part), tensors)
        header = dict(self.header) | {"wanflow.method": "full", "wanflow.component": self.part,
                                      "wanflow.steps": str(ctx.params["train.steps"])}
        return save_stable({k: v.to(dtypes[k]).contiguous() for k, v in sorted(tensors.items())}, metadata=header)


def base_dtypes(path: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """Each trained tensor's dtype in the base file, which must hold the same names and shapes."""
    from safetensors import safe_open

    from wanflow.errors import ModelLoadError

    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        if names != set(tensors):
            raise ModelLoadError(f"{path}: the trained tensors {sorted(set(tensors) ^ names)[:4]} do not match "
                                 "this file's; train again from this base.")
        out = {}
        for name, tensor in tensors.items():
            base = f.get_slice(name)
            if tuple(base.get_shape()) != tuple(tensor.shape):
                raise ModelLoadError(f"{path}: trained {name} is {tuple(tensor.shape)}, the base's is "
                                     f"{tuple(base.get_shape())}; train again from this base.")
            out[name] = f.get_tensor(name).dtype
    return out
