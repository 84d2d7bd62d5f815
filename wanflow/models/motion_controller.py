"""Speed control: a small MLP that turns a motion bucket id into an offset of the block modulation.

DiffSynth's speed-control release for Wan2.1-T2V-1.3B is this controller alone, in its own file
(``linear.{0,2,4}``): the sinusoidal embedding (256 wide, of 10 x the bucket id, computed in
float64) -> Linear -> SiLU -> Linear -> SiLU -> Linear to 6 x D. Its output, shaped (B, 6, D),
is added to every block's time modulation e0 (``DitExtras.modulation``), not to the head's time
embedding. A larger id asks for more motion; the released controller was trained on ids 0-100.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs
import structlog
import torch
from torch import Tensor, nn

from wanflow.errors import ModelLoadError
from wanflow.models import signature
from wanflow.models.checkpoint_files import open_weights
from wanflow.models.dit import sinusoidal_embedding
from wanflow.models.dit_extras import DitExtras
from wanflow.models.loading import build_on_meta, load_state_into
from wanflow.models.precision import Linear

log = structlog.get_logger(__name__)

#: The bucket id is scaled by this before its sinusoidal embedding (the release's convention).
ID_SCALE = 10.0


class MotionController(nn.Module):
    """Motion bucket id (B,) -> modulation offset (B, 6, dim), in the weights' dtype."""

    def __init__(self, dim: int = 1536, freq_dim: int = 256):
        super().__init__()
        self.dim, self.freq_dim = dim, freq_dim
        self.linear = nn.Sequential(
            Linear(freq_dim, dim), nn.SiLU(), Linear(dim, dim), nn.SiLU(), Linear(dim, 6 * dim)
        )

    def forward(self, bucket_id: Tensor) -> Tensor:
        feats = sinusoidal_embedding(bucket_id.reshape(-1) * ID_SCALE, self.freq_dim)  # (B, 256)
        return self.linear(feats.to(self.linear[0].weight.dtype)).unflatten(1, (6, self.dim))


def load_motion_controller(
    weights: str | os.PathLike | Mapping[str, Tensor], dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> MotionController:
    """The controller from its own file (or a state dict), its width read off the weights."""
    opened = open_weights(weights)
    found = signature.identify(opened.state)
    if found.kind != "motion-controller":
        raise ModelLoadError(
            f"{opened.source}: expected a speed-control motion controller (linear.0/2/4), but this is "
            f"{found.describe()}. Point this component at the controller file (model.safetensors "
            "of the speed-control release)."
        )
    dim, freq_dim = found.details["dim"], found.details["freq_dim"]
    model = build_on_meta(lambda: MotionController(dim, freq_dim))
    load_state_into(model, opened.state, source=opened.source, expected=f"a motion controller (dim {dim})",
                    dtype=dtype, device=device, borrowed=opened.borrowed)
    log.debug("motion_controller_loaded", source=opened.source, dim=dim)
    return model


class ControlledDiT(nn.Module):
    """A frozen DiT under a motion controller that trains (``[train].components =
    ["motion_controller"]``, DiffSynth's ``--trainable_models motion_controller``).

    Each forward runs the controller on the batch's bucket ids (B,) with gradients and adds its
    offset to every block's modulation as a generation does (``DitExtras.modulation``, fp32), so
    the loss's gradient reaches the controller through the whole frozen block stack. Full
    fine-tuning's rules see the controller alone: its parameters are the ``full_trained_prefixes``
    and the only ones stored (``exports_trained_alone``).
    """

    #: The controller's parameters, by name in this module (``controller.linear.0.weight``, …).
    full_trained_prefixes = ("controller.",)
    exports_trained_alone = True

    def __init__(self, dit: nn.Module, controller: MotionController):
        super().__init__()
        self.dit, self.controller = dit, controller

    @property
    def cfg(self):  # what the training objective reads of the DiT (its patch size)
        return self.dit.cfg

    def forward(self, x: Tensor, t: Tensor, context: Tensor, *, motion_bucket: Tensor | None = None,
                extras: DitExtras | None = None, **kwargs) -> Tensor:
        if motion_bucket is None:
            raise ValueError("a DiT whose motion controller trains needs each sample's motion bucket id")
        bucket = motion_bucket.reshape(-1).to(device=x.device, dtype=self.controller.linear[0].weight.dtype)
        offset = self.controller(bucket).float()  # (B, 6, D), as the generation's step hands it over
        extras = attrs.evolve(extras if extras is not None else DitExtras(), modulation=offset)
        return self.dit(x, t, context, extras=extras, **kwargs)
