"""Block streaming while a LoRA trains: the frozen base's blocks in host memory or on disk.

A LoRA over a 14B DiT needs its base only to compute with: the base never changes, so its blocks
can wait in host memory (``stream``) or in the mapped checkpoint (``disk``) and come in one at a
time, as generation's `BlockPlacement` brings them, while the LoRA's factors stay on the device.
What training adds to generation's placement:

- only the frozen parameters stream. The factors (peft's ``lora_A``/``lora_B``, fp32, trained)
  stay resident and keep their identity, since the optimizer holds them; peft's wrapped base
  Linear (``<module>.base_layer.weight``) streams under its checkpoint name (``<module>.weight``).
- gradient checkpointing is required (the recipe's rules refuse streaming without it): without it
  autograd would keep every block's weights alive from the forward to the backward. With it, the
  forward saves each block's input only, and backward recomputes the block: its pre-hook fires
  again, the weights are fetched again, and its post-hook drops them from the module (or, when
  torch stops the recomputation early once it has what backward needs, the next block's fetch
  does). The tensors the recomputation saved — the fetched weights among them — are autograd's
  until that block's backward is done: that is what keeps them alive, not the module.
- backward runs the blocks last to first, so a block fetched there starts fetching the one
  *before* it; the forward's end starts fetching the last block, which backward recomputes first.
- after backward (``settle``) nothing offloaded stays present: with A14B only the expert that
  runs holds a block on the device.

Placement never changes the numbers: the same bytes reach the same kernels in the same order, so
a LoRA trained streamed equals one trained resident bit for bit (``tests/train/test_train_stream.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.memory.placement import BlockPlacement, _Block

#: Marks of a trained LoRA factor's parameter name (peft's), which stays resident.
TRAINED = (".lora_A.", ".lora_B.")
#: peft's wrapped base layer: ``<module>.base_layer.weight`` is the checkpoint's ``<module>.weight``.
BASE_LAYER = ".base_layer."


def frozen_source(name: str) -> str | None:
    """The checkpoint name a block parameter streams under, or None for a trained factor."""
    if any(mark in name for mark in TRAINED):
        return None
    return name.replace(BASE_LAYER, ".")


def in_backward() -> bool:
    """Whether the autograd engine is running a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


class TrainPlacement(BlockPlacement):
    """`BlockPlacement` of a DiT that trains a LoRA (the module docstring says what differs).

    ``fetched`` lists the blocks whose fetch was started ahead, in order (index, "forward" or
    "backward"): what the tests read to see that backward prefetches in backward order.
    """

    def __init__(self, model: nn.Module, tiers: Sequence[str], device: torch.device | str,
                 checkpoint: Mapping[str, Tensor] | None = None):
        self.fetched: list[tuple[int, str]] = []
        super().__init__(model, tiers, device, checkpoint, select=frozen_source)

    def _register(self) -> None:
        super()._register()
        self.hooks.append(self.model.register_forward_hook(lambda m, a, o: self._ahead_of_backward()))

    def _ahead_of_backward(self) -> None:
        """After a forward that a backward follows: start fetching the block backward needs first."""
        if self.order and torch.is_grad_enabled() and self.model.training:
            self._prefetch(self.order[-1])

    def _next(self, block: _Block) -> _Block | None:
        """The block after ``block`` in the direction the pass runs: backward goes last to first."""
        position = self.order.index(block)
        if in_backward():
            return self.order[position - 1] if position > 0 else None
        return self.order[position + 1] if position + 1 < len(self.order) else None

    def _prefetch(self, block: _Block) -> None:
        if not block.present and block.index not in self.pending:
            self.fetched.append((block.index, "backward" if in_backward() else "forward"))
        super()._prefetch(block)

    def settle(self) -> None:
        """After backward: drop what is still present and finish pending reads."""
        self._end()


def load_frozen_base(files: Sequence[str | os.PathLike], tiers: Sequence[str], dtype: torch.dtype,
                     device: torch.device | str, attention_kernel: str) -> tuple[nn.Module, dict[str, Tensor]]:
    """A Wan DiT for a LoRA to train over, its blocks loaded for ``tiers`` and no placement yet:
    resident weights on ``device``, host-tier blocks in host memory, disk-tier blocks left as meta
    placeholders (never read here); and the mapped checkpoint's views the disk tier reads.

    The placement comes after the adapter is injected (``place_for_training``), so that peft
    finds real (or meta) base weights and the factors are made on the device."""
    from wanflow.memory.streamed import open_dit_views
    from wanflow.models.dit import WanDiT, keeps_fp32
    from wanflow.models.dit_loader import config_beside
    from wanflow.models.loading import build_on_meta, mismatch_report
    from wanflow.models.residency import place_all

    paths = [Path(f) for f in files]
    views = open_dit_views(paths)
    config = config_beside(paths[0], views)  # as ``load_dit`` reads it: the derivatives' parts included
    model = build_on_meta(lambda: WanDiT(config, attention_kernel)).set_compute_dtype(dtype)
    report = mismatch_report(model.state_dict(keep_vars=True), views)
    if report:
        raise ModelLoadError(f"{', '.join(map(str, paths))}: does not fit the Wan DiT config:\n{report}")

    def tier_of(name: str) -> str:
        return tiers[int(name.split(".")[1])] if name.startswith("blocks.") else "device"

    def target(name: str) -> torch.dtype:
        return torch.float32 if keeps_fp32(name) else dtype

    for tier, where in (("device", device), ("host", "cpu")):
        part = {k: v for k, v in views.items() if tier_of(k) == tier}
        model.load_state_dict(place_all(part, target, where, borrowed=False), strict=False, assign=True)
    return model.requires_grad_(False), views


def streamed_base(tiers: Sequence[str]) -> tuple[Callable[..., nn.Module], Callable[[nn.Module], TrainPlacement]]:
    """(``load``, ``place``) for ``wanflow.train.build.build_expert``: ``load`` (``load_dit``'s
    signature) loads the frozen base for ``tiers``, ``place`` places it once the adapter exists."""
    views: dict[str, Tensor] = {}
    where: list[torch.device | str] = []

    def load(weights: Sequence[str | os.PathLike], *, dtype: torch.dtype, device: torch.device | str,
             attention_kernel: str, storage: str) -> nn.Module:
        if storage != "compute":
            raise ModelInputError("[memory].fp8 with the frozen base's blocks streamed while training is not "
                                  'supported yet; set fp8 = false, or [memory].policy = "none"')
        model, found = load_frozen_base(weights, tiers, dtype, device, attention_kernel)
        views.update(found)
        where.append(device)
        return model

    def place(model: nn.Module) -> TrainPlacement:
        return place_for_training(model, tiers, where[-1], views)

    return load, place


def place_for_training(model: nn.Module, tiers: Sequence[str], device: torch.device | str,
                       views: Mapping[str, Tensor]) -> TrainPlacement:
    """Put ``model``'s frozen blocks in ``tiers`` once its adapter is injected on ``device``; the
    handle lives on ``model.placement`` (where the training loop's ``settle`` finds it)."""
    placement = TrainPlacement(model, tiers, device, checkpoint=views)
    model.placement = placement
    return placement
