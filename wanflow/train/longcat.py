"""The training call of LongCat-Video's DiT, as DiffSynth's ``model_fn_longcat_video`` makes it.

LongCat's DiT is not a Wan DiT: one timestep per latent frame, its own text handling and an
output of the opposite sign (x0 − noise). A training sample reaches it as DiffSynth hands it a
training sample:

- the text features of the sample's caption, with how many of each prompt's slots are real
  (the batch zero-pads prompts to one length; DiffSynth reads the same lengths off the features'
  non-zero rows, and the release's ``text_tokens_zero_pad`` then zeroes the padded slots after
  the projection);
- a continuation sample (a ``longcat_video`` column): the conditioning latents written over the
  first latent frames of the noisy clip, clean, and the DiT told they are conditioning frames
  (t = 0 there, attending only among themselves, no text), as DiffSynth writes
  ``longcat_latents`` into ``latents`` and passes ``num_cond_latents``;
- the output turned into a flow velocity by ``sampling.longcat.flow_velocity``, the one place
  that flips LongCat's sign, so the objective's target stays ε − x0 like every family's.
"""

from __future__ import annotations

import torch

from wanflow.sampling.longcat import flow_velocity

#: The conditioner role whose latents are a continuation's clean leading frames.
ROLE = "longcat"


def is_longcat(dit: torch.nn.Module) -> bool:
    """Whether ``dit`` is LongCat-Video's DiT (its own forward and sign), also inside a
    data-parallel wrapper (``DistributedDataParallel.module``)."""
    from wanflow.models.longcat import LongCatDiT

    return isinstance(getattr(dit, "module", dit), LongCatDiT)


def text_lengths(context: torch.Tensor) -> torch.Tensor:
    """(B,) real slots of each zero-padded prompt: up to its last non-zero row (at least one)."""
    nonzero = context.ne(0).any(dim=-1)  # (B, L)
    positions = torch.arange(1, context.shape[1] + 1, device=context.device)
    return (nonzero * positions).amax(dim=1).clamp(min=1)


def with_conditioning(x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """The noisy clip with a continuation's clean latents over its first frames (none: unchanged)."""
    if cond is None:
        return x
    k = cond.shape[2]
    return torch.cat([cond.to(x.device, x.dtype), x[:, :, k:]], dim=2)


def longcat_velocity(dit: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                     cond_frames: int) -> torch.Tensor:
    """The flow velocity (ε − x0 convention, fp32) of the whole clip: LongCat's forward at one
    timestep per sample (0 on the ``cond_frames`` leading frames), its output's sign flipped."""
    out = dit(x, t.to(x.device), context, text_lens=text_lengths(context), cond_frames=cond_frames)
    return flow_velocity(out)
