"""Block streaming while a LoRA trains: the frozen base's blocks in host memory or on disk.

A LoRA over a 14B DiT needs its base only to compute with: the base never changes, so its blocks
can wait in host memory (``stream``) or in the mapped checkpoint (``disk``) and come in one at a
time, as generation's `BlockPlacement` brings them, while the LoRA's factors stay on the device.
What training adds to generation's placement:

- only the frozen parameters stream. The factors (peft's ``lora_A``/``lora_B``, fp32, trained)
  stay resident and keep their identity, since the optimizer holds them; peft's wrapped base
  Linear (``<module>.base_layer.weight``) streams under its checkpoint name (``<module>.weight``).
- an fp8-stored base (``[memory].fp8``) streams as fp8, loaded as generation loads it
  (``streamed.load_tiered``, ``fp8_placed``): peft wraps the ``Fp8Linear``, whose fp8 weight
  streams under its checkpoint name, the name the disk tier's read conversion is keyed by (a
  bf16 file's weight quantised at each read); its ``scale_weight`` is a buffer
  (``<module>.base_layer.scale_weight``), which stays resident on the device with the rest.
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

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
                 checkpoint: Mapping[str, Tensor] | None = None,
                 convert: Mapping[str, Callable[[Tensor], Tensor]] | None = None):
        self.fetched: list[tuple[int, str]] = []
        super().__init__(model, tiers, device, checkpoint, convert, select=frozen_source)

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
                     device: torch.device | str, attention_kernel: str, storage: str = "compute") -> nn.Module:
    """A Wan DiT for a LoRA to train over, loaded for ``tiers`` as generation loads it
    (``streamed.load_placed_dit``, its config read as ``load_dit`` reads it: resident weights on
    ``device``, host-tier blocks in host memory, disk-tier blocks meta placeholders; fp8 blocks
    under ``storage = "fp8"``) with no placement yet: ``model.tiered`` holds what
    ``place_for_training`` needs.

    The placement comes after the adapter is injected, so that peft finds real (or meta) base
    weights and the factors are made on the device."""
    from wanflow.memory.streamed import load_placed_dit

    model, _ = load_placed_dit([Path(f) for f in files], None, tiers, dtype, device, attention_kernel, storage,
                               deferred=True)
    return model


def streamed_base(tiers: Sequence[str], variant: Any = None
                  ) -> tuple[Callable[..., nn.Module], Callable[[nn.Module], TrainPlacement]]:
    """(``load``, ``place``) for ``wanflow.train.build.build_expert``: ``load`` (``load_dit``'s
    signature) loads the frozen base for ``tiers`` (a Wan DiT, or ``variant``'s DiT through its
    ``load_placed``, ``memory.dit_variants``), ``place`` places it once the adapter exists."""

    def load(weights: Sequence[str | os.PathLike], *, dtype: torch.dtype, device: torch.device | str,
             attention_kernel: str, storage: str) -> nn.Module:
        if variant is None:
            return load_frozen_base(weights, tiers, dtype, device, attention_kernel, storage)
        placed = getattr(importlib.import_module(variant.placed_module), variant.load_placed)
        extra = {"storage": storage} if variant.fp8 else {}
        return placed(list(weights), tiers, dtype=dtype, device=device, attention_kernel=attention_kernel,
                      deferred=True, **extra)

    return load, place_for_training


def place_for_training(model: nn.Module) -> TrainPlacement:
    """Put ``model``'s frozen blocks in the tiers it was loaded for (``model.tiered``) once its
    adapter is injected; the handle lives on ``model.placement`` (where the training loop's
    ``settle`` finds it)."""
    tiered = model.tiered
    placement = TrainPlacement(model, tiered.tiers, tiered.device, tiered.checkpoint, tiered.convert)
    model.placement = placement
    return placement
