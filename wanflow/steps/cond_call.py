"""The per-job model call: everything the conditioners hand the DiT, gathered in one record.

Each conditioner's hand-off adds its part (``with_*``); denoise, guidance and sliding windows
read the record without knowing which conditioners filled it, so they stay the same size
whatever the family. A part set twice is refused: two conditioners disagreeing about, say, the
starting latent is a family declaration error, never a silent override.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from wanflow.models.dit_extras import DitExtras


@attrs.frozen
class ModelCall:
    """What a job's conditioners hand the model; empty for text-to-video."""

    #: Extra input channels (1, c, T, h, w) each, joined to x in the family's declared order.
    channels: tuple[Any, ...] = ()
    tokens: Any = None  # CLIP tokens (n, 257, 1280), joined to the text context
    extras: DitExtras | None = None  # the DiT's optional parts (VACE, reference, camera, modulation)
    clean_frames: int = 0  # leading latent frames whose tokens take timestep 0
    clamp: Any = None  # (1, z, k, h, w): the first k latent frames, put back after every step
    start: Any = None  # (1, z, T, h, w): the latent a denoising_strength < 1 starts from
    drop_frames: int = 0  # leading latent frames added to the noise and removed after sampling

    # ------------------------------------------------------------------ what hand-offs add

    def with_channels(self, tensor: Any) -> ModelCall:
        return attrs.evolve(self, channels=(*self.channels, tensor))

    def with_tokens(self, tensor: Any) -> ModelCall:
        return attrs.evolve(self, tokens=_once("the image tokens", self.tokens, tensor))

    def with_extras(self, **fields: Any) -> ModelCall:
        """Fields of ``DitExtras`` (``vace_context=…``); each may be set by one conditioner."""
        current, blank = self.extras or DitExtras(), DitExtras()
        for name in fields:
            if getattr(current, name) is not getattr(blank, name):
                raise ValueError(f"two conditioners set the DiT extra {name!r}; a family declares one")
        return attrs.evolve(self, extras=attrs.evolve(current, **fields))

    def with_clean_frames(self, frames: int) -> ModelCall:
        return attrs.evolve(self, clean_frames=_once("the clean frames", self.clean_frames or None, frames))

    def with_clamp(self, latent: Any) -> ModelCall:
        return attrs.evolve(self, clamp=_once("the clamped frames", self.clamp, latent))

    def with_start(self, latent: Any) -> ModelCall:
        return attrs.evolve(self, start=_once("the starting latent", self.start, latent))

    def with_dropped_frames(self, frames: int) -> ModelCall:
        return attrs.evolve(self, drop_frames=_once("the dropped frames", self.drop_frames or None, frames))

    # ------------------------------------------------------------------ what the sampler reads

    def on(self, device: Any) -> ModelCall:
        """The channels joined once (not at every model call) and the tensors the DiT reads
        whole moved to ``device``."""
        import torch

        channels = (torch.cat(self.channels, dim=1).to(device),) if self.channels else ()
        tokens = None if self.tokens is None else self.tokens.to(device)
        return attrs.evolve(self, channels=channels, tokens=tokens)

    def check_frames(self, frames: int) -> None:
        """Refuse conditioning that does not cover exactly the ``frames`` latent frames sampled:
        a window cuts every framed tensor to its frames, so a longer one would be cut silently."""
        counts = {f"channels[{i}]": int(c.shape[2]) for i, c in enumerate(self.channels)}
        counts.update({} if self.extras is None else self.extras.frame_counts())
        wrong = {name: n for name, n in counts.items() if n != frames}
        if wrong:
            raise RuntimeError(f"denoise: the latent has {frames} frames but the conditioning holds {wrong} "
                               "latent frames: a conditioner was planned for another clip length")

    def y(self, window: slice, rows: int) -> Any:
        """The extra channels of the latent frames ``window``, for ``rows`` batch rows; None: none."""
        if not self.channels:
            return None
        import torch

        y = torch.cat(self.channels, dim=1) if len(self.channels) > 1 else self.channels[0]
        return y[:, :, window].expand(rows, -1, -1, -1, -1)

    def timesteps(self, x: Any, t: Any, patch: tuple[int, int, int], window: slice) -> Any:
        """The timesteps the DiT gets for x (rows, C, n, h, w) covering ``window``: (rows,), or
        (rows, L) per token when leading frames are clean (those inside the window at 0)."""
        rows = x.shape[0]
        if not self.clean_frames:
            return t.reshape(1).repeat(rows)
        clean = max(0, min(self.clean_frames, window.stop) - window.start)
        return token_timesteps(x, t, patch, clean).expand(rows, -1)

    def dit_extras(self, window: slice, rows: int, device: Any, prompt: str = "pos") -> DitExtras | None:
        """The DiT extras of the frames ``window`` for the pass of ``prompt`` ("pos", "neg",
        "pair") on ``device``; None when no conditioner gave one."""
        if self.extras is None or self.extras.empty:
            return None
        # batch 1: DitExtras.expand drops a tensor already of ``rows``
        extras = self.extras.frames(window).for_prompt(prompt)
        return (extras if rows == 1 else extras.expand(rows)).to(device)

    def clamped(self, x: Any) -> Any:
        """x with its clamped leading frames put back (before the first step and after each)."""
        if self.clamp is None:
            return x
        x = x.clone()
        x[:, :, : self.clamp.shape[2]] = self.clamp.to(device=x.device, dtype=x.dtype)  # (B, z, k, h, w)
        return x

    def kept(self, latents: Any) -> Any:
        """The sampled latents without the dropped leading frames."""
        return latents[:, :, self.drop_frames:] if self.drop_frames else latents


@attrs.frozen
class Implementation:
    """A conditioner kind's two halves: its cached step for a job, and its hand-off.

    ``node(job, declared)`` gives the StepSpec computing the kind's tensors for this job, or None
    when the job gives it nothing to do (no image for an optional start image). ``hand_off(tensors,
    call)`` adds those tensors to the model call; it reads nothing but them.
    """

    node: Callable[[Any, Any], Any]
    hand_off: Callable[[Mapping[str, Any], ModelCall], ModelCall]


def token_timesteps(x: Any, t: Any, patch: tuple[int, int, int], clean: int = 1) -> Any:
    """Per-token timesteps (1, L): 0 on the tokens of the first ``clean`` latent frames of x
    (TI2V's first frame), ``t`` elsewhere."""
    import torch

    _, _, frames, h, w = x.shape
    grid = torch.ones(frames // patch[0], h // patch[1], w // patch[2])  # (f, h, w) tokens
    grid[: clean // patch[0]] = 0
    return (grid.flatten() * t.float())[None]  # (1, L)


def tensor(found: Mapping[str, Any], name: str, role: str) -> Any:
    """The tensor ``name`` of the input ``role``; an absent one is a planning bug, said as such."""
    if name not in found:
        raise LookupError(f"denoise: input {role!r} holds {sorted(found)}, not {name!r}: the node "
                          "planned for this role computes something else")
    return found[name]


def _once(what: str, current: Any, new: Any) -> Any:
    if current is not None:
        raise ValueError(f"two conditioners set {what}; a family declares one that does")
    return new
