"""A training sample's conditioning as the DiT reads it, from its conditioners' own hand-offs.

The sample's encodes are the tensors of the inference conditioners (``train_conditioning``);
``cond_kinds.model_call`` hands them over exactly as denoise does, and what the model call holds
becomes the sample's part of a batch: its extra channels (``y``), image tokens (``clip``) and
DiT extras. The leading latent frames a conditioner adds in front of the noise (VACE's
reference images) are, in the clean latent a sample learns, the references' own latents: they
are prepended to x0 and learnt with the clip, as DiffSynth trains VACE (its ``input_latents``
hold the reference latents before the video's). Speech-to-video's encodes are read by its clip
loop, not by a model call: a sample of it is put together by ``train_s2v``. LongCat-Video's
continuation latents are the clip's clean leading frames, which its training call writes over the
noisy clip (``wanflow.train.longcat``), as DiffSynth's model function does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def conditioning_tensors(roles: Sequence[str], found: Mapping[str, Mapping[str, Any]], x0: Any) -> dict[str, Any]:
    """{"y", "clip", "extras", "x0"}: what the sample's model call gives the DiT, x0 with any
    leading frames the call adds (batch 1 each)."""
    import torch

    from wanflow.steps.cond_kinds import model_call
    from wanflow.steps.train_s2v import ROLES as S2V_ROLES
    from wanflow.steps.train_s2v import sample_tensors
    from wanflow.train.longcat import ROLE as LONGCAT_ROLE

    if S2V_ROLES & set(roles):
        return sample_tensors(found, x0)
    if LONGCAT_ROLE in roles:
        return longcat_tensors(roles, found)
    call = model_call(tuple(roles), found)
    if call.start is not None or call.clamp is not None or call.clean_frames:
        raise ValueError("training: a conditioner set a starting latent or clamped frames, which the training "
                         "objective does not take; the family's conditioners are planned wrongly")
    out: dict[str, Any] = {}
    if call.channels:
        out["y"] = torch.cat(call.channels, dim=1) if len(call.channels) > 1 else call.channels[0]
    if call.tokens is not None:
        out["clip"] = call.tokens
    if call.extras is not None and not call.extras.empty:
        out["extras"] = call.extras
    if call.drop_frames:
        out["x0"] = torch.cat([leading_latents(call, x0.shape[1]), x0], dim=2)
    return out


def leading_latents(call: Any, z: int) -> Any:
    """(1, z, n, h, w): the clean latents of the n frames the call adds in front of x: each
    reference's VAE latent, the first z channels of the VACE context's leading frames."""
    context = call.extras.vace_context if call.extras is not None else None
    if context is None:
        raise ValueError("training: leading frames without a VACE context to take their latents from")
    return context[:, :z, : call.drop_frames].float()


def longcat_tensors(roles: Sequence[str], found: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{"longcat"}: a LongCat-Video continuation's conditioning latents (1, z, k, h, w), the one
    conditioning its DiT reads."""
    from wanflow.steps.cond_call import tensor
    from wanflow.train.longcat import ROLE

    if set(roles) != {ROLE}:
        raise ValueError(f"training: LongCat-Video reads its continuation frames alone, not {sorted(roles)}")
    return {"longcat": tensor(found[ROLE], "latents", ROLE).float()}
