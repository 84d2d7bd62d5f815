"""The one form every LoRA dialect is read into: weight deltas keyed by the model's parameter names.

A LoRA file from any trainer (DiffSynth, PEFT, diffusers, ComfyUI, musubi/kohya, VideoX-Fun,
lightx2v, LyCORIS) becomes a :class:`LoraFile`: for each parameter of the Wan DiT it changes,
named exactly as the official checkpoint names it (``blocks.0.self_attn.q.weight``,
``blocks.0.modulation``, ``head.head.bias``), one :class:`Delta` that can say its rank and build
ΔW in fp32. Readers and writers (``wanflow.lora.dialects``) translate names and factor layouts;
application (``wanflow.lora.apply``) only ever sees this form, so a new dialect is a new reader,
never a new branch in the model code.

The scale a trainer stores (``alpha``) is applied here, per dialect as its trainer meant it:
``scale = alpha / rank`` where alpha is stored, 1 where it is not (PEFT, DiffSynth and
diffusion-pipe train with alpha = rank).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, Union

import attrs
import torch


class Delta(Protocol):
    """A change of one parameter: ``tensor()`` is ΔW (fp32, the parameter's shape) at scale 1."""

    @property
    def rank(self) -> int | None: ...

    def tensor(self) -> torch.Tensor: ...


def _scale(alpha: float | None, rank: int) -> float:
    """The trainer's scale: alpha / rank where alpha is stored, else 1 (alpha = rank)."""
    return 1.0 if alpha is None or alpha <= 0 else float(alpha) / rank


@attrs.frozen(eq=False)
class LowRank:
    """ΔW = up @ down · alpha/rank: ``down`` (r, in[, *kernel]), ``up`` (out, r[, 1…])."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None  # as stored in the file; None = no alpha key (scale 1)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return _scale(self.alpha, self.rank)

    def tensor(self) -> torch.Tensor:
        down, up = self.down.float(), self.up.float()
        delta = up.flatten(1) @ down.flatten(1)  # (out, in·k)
        return (delta * self.scale).reshape(up.shape[0], *down.shape[1:])


@attrs.frozen(eq=False)
class LoHa:
    """LyCORIS LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha/rank (rank = rows of w1b)."""

    w1a: torch.Tensor  # (out, r)
    w1b: torch.Tensor  # (r, in)
    w2a: torch.Tensor  # (out, r)
    w2b: torch.Tensor  # (r, in)
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    def tensor(self) -> torch.Tensor:
        product = (self.w1a.float() @ self.w1b.float()) * (self.w2a.float() @ self.w2b.float())
        return product * _scale(self.alpha, self.rank)


@attrs.frozen(eq=False)
class LoKr:
    """LyCORIS LoKr: ΔW = kron(w1, w2) · scale, each factor whole or as a low-rank pair.

    The scale is alpha/rank only when a factor is factorised (ComfyUI's and LyCORIS' rule); with
    both factors whole it is 1."""

    w1: torch.Tensor | None = None  # (out_l, in_m), or w1a @ w1b
    w2: torch.Tensor | None = None  # (out_k, in_n), or w2a @ w2b
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        if self.w2b is not None:
            return int(self.w2b.shape[0])
        if self.w1b is not None:
            return int(self.w1b.shape[0])
        return None

    def tensor(self) -> torch.Tensor:
        w1 = self.w1.float() if self.w1 is not None else self.w1a.float() @ self.w1b.float()
        w2 = self.w2.float() if self.w2 is not None else self.w2a.float() @ self.w2b.float()
        rank = self.rank
        return torch.kron(w1, w2) * (1.0 if rank is None else _scale(self.alpha, rank))


@attrs.frozen(eq=False)
class Full:
    """A whole delta (``.diff``, ``.diff_b``, ``.diff_m``): ΔW itself."""

    diff: torch.Tensor

    @property
    def rank(self) -> None:
        return None

    def tensor(self) -> torch.Tensor:
        return self.diff.float()


AnyDelta = Union[LowRank, LoHa, LoKr, Full]


@attrs.frozen(eq=False)
class LoraFile:
    """One LoRA file read into the canonical form.

    ``deltas``: official parameter name → its delta. ``unread``: keys of the file that no rule of
    its dialect could turn into a delta (reported, never silently dropped). ``metadata``: the
    safetensors header's string metadata, as stored. ``reasons``: for each unread key, why.
    """

    dialect: str  # "diffsynth", "peft", "diffusers", "comfyui", "musubi", "videox-fun", "lycoris", …
    deltas: Mapping[str, AnyDelta]
    unread: tuple[str, ...] = ()
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    reasons: Mapping[str, str] = attrs.field(factory=dict)  # unread key -> why it was not read
