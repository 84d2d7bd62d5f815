"""A micro-batch of encoded samples, and the loss of a DiT on it.

Samples arrive as the cached outputs of their encode steps: umT5 features (1, L, D), the clip's
latent x0 (1, z, T, h, w), and where the family takes them, the I2V conditioning y and CLIP
tokens, or what a derivative family's conditioners hand the DiT (extra channels as y, CLIP
tokens, DiT extras; x0 then holds any reference frames in front). A batch stacks samples of
one bucket (one size); prompts of different lengths are zero-padded, which is what the DiT does
to every prompt anyway (to 512 tokens, unmasked).

Two objectives: ``sft`` (flow matching, DiffSynth's FlowMatchSFTLoss, with TI2V's first frame
and speech-to-video's reference frame kept clean and left out of the loss) and ``direct_distill`` (run the few-step sampler with
gradients and regress the final latent on the teacher's video).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from wanflow.models.animate import AnimateExtras, PreparedFace
from wanflow.models.dit_extras import DitExtras
from wanflow.models.s2v import S2VExtras
from wanflow.models.vap_extras import VapExtras
from wanflow.train.longcat import is_longcat, longcat_velocity, with_conditioning
from wanflow.train.objective import Draw, noised, velocity_target, weighted_mse


@attrs.frozen(eq=False)
class Batch:
    """Encoded samples of one size, on the training device."""

    context: torch.Tensor  # (B, L, D) zero-padded
    x0: torch.Tensor  # (B, z, T, h, w) fp32
    y: torch.Tensor | None = None  # (B, 4 + z, T, h, w): I2V / FLF2V
    clip: torch.Tensor | None = None  # (B·n, 257, 1280): Wan2.1 I2V / FLF2V
    first_frame: bool = False  # TI2V: frame 0 is the given image (kept clean)
    #: What derivative conditioners give the DiT (VACE context, reference, camera, modulation).
    extras: DitExtras | None = None
    #: LongCat-Video continuation: the clean latents (B, z, k, h, w) over the clip's first k frames.
    longcat: torch.Tensor | None = None
    #: Speed control whose motion controller trains: each sample's motion bucket id (B,), which
    #: the controller turns into the modulation offset inside the step.
    motion_bucket: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.x0.shape[0])

    @property
    def clean_first(self) -> bool:
        """Latent frame 0 is clean and out of the loss: TI2V's given image, or speech-to-video's
        reference (x0's frame 0 is then the reference's latent, which the DiT reads apart)."""
        return self.first_frame or isinstance(self.extras, S2VExtras)


def collate(samples: Sequence[dict[str, Any]], device: str, first_frame: bool = False) -> Batch:
    """Stack encoded samples (each a dict with context, x0 and optionally y, clip, extras)."""
    longest = max(s["context"].shape[1] for s in samples)
    context = torch.cat([F.pad(s["context"], (0, 0, 0, longest - s["context"].shape[1])) for s in samples])
    parts = {name for s in samples for name in s}
    if any(set(s) != parts for s in samples):
        raise ValueError(f"a batch mixes samples with and without {sorted(parts - set.intersection(*map(set, samples)))}: "
                         "their conditioning differs, so they cannot share a batch; use [train].batch_size = 1")

    def stacked(name: str) -> torch.Tensor | None:
        if name not in samples[0]:
            return None
        return torch.cat([s[name] for s in samples]).to(device)

    extras = stacked_extras([s["extras"] for s in samples], device) if "extras" in parts else None
    return Batch(context.to(device), stacked("x0").float(), stacked("y"), stacked("clip"), first_frame, extras,
                 stacked("longcat"), stacked("motion_bucket"))


def stacked_extras(extras: Sequence[DitExtras], device: str) -> DitExtras:
    """The samples' DiT extras as one batch: tensors joined along the batch, the VACE scale shared."""
    first = extras[0]
    if any(e.vace_scale != first.vace_scale for e in extras):
        raise ValueError("a batch mixes VACE scales; the scale is a recipe setting, the same for every sample")
    fields = {}
    s2v = ("audio", "ref_latent", "pose", "motion") if isinstance(first, S2VExtras) else ()
    for name in ("vace_context", "reference", "camera", "modulation", *s2v):
        given = [getattr(e, name) for e in extras]
        if all(t is None for t in given):
            continue
        if any(t is None for t in given):
            raise ValueError(f"a batch mixes samples with and without {name}; use [train].batch_size = 1")
        fields[name] = torch.cat(given).to(device)
    if isinstance(first, VapExtras):
        fields |= _stacked_reference([e for e in extras if isinstance(e, VapExtras)], len(extras), device)
    if isinstance(first, AnimateExtras):
        fields |= _stacked_animate([e for e in extras if isinstance(e, AnimateExtras)], len(extras), device)
    return attrs.evolve(first, **fields)


def _stacked_reference(extras: Sequence[VapExtras], count: int, device: str) -> dict[str, torch.Tensor]:
    """Video-As-Prompt's reference stream inputs joined along the batch (captions zero-padded to
    one length, as the main prompts are; the model pads them to 512 with zeros anyway)."""
    if len(extras) != count:
        raise ValueError("a batch mixes samples with and without a reference video; use [train].batch_size = 1")
    longest = max(e.vap_context.shape[1] for e in extras)
    context = torch.cat([F.pad(e.vap_context, (0, 0, 0, longest - e.vap_context.shape[1])) for e in extras])
    return {"vap_latents": torch.cat([e.vap_latents for e in extras]).to(device), "vap_context": context.to(device),
            "vap_clip": torch.cat([e.vap_clip for e in extras]).to(device)}


def _stacked_animate(extras: Sequence[AnimateExtras], count: int, device: str) -> dict[str, Any]:
    """Animate's pose latents and face inputs (prepared tokens, or crops the DiT encodes itself when
    its face encoders train) joined along the batch, each sample's own. Guidance's unconditional
    face is left out: training runs no unconditional pass."""
    faces = [e.face for e in extras]
    prepared = [isinstance(f, PreparedFace) for f in faces]
    if len(extras) != count or any(e.pose is None or f is None for e, f in zip(extras, faces)) or (
            any(prepared) and not all(prepared)):
        raise ValueError("a batch mixes Animate samples with other inputs; use [train].batch_size = 1")
    face = (PreparedFace(torch.cat([f.tokens for f in faces]).to(device)) if all(prepared)
            else torch.cat(faces).to(device))
    out = {"pose": torch.cat([e.pose for e in extras]).to(device), "face": face}
    if any(f.name == "uncond_face" for f in attrs.fields(type(extras[0]))):
        out["uncond_face"] = None
    return out


def token_timesteps(batch: Batch, t: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B,) timesteps, or per token (B, L) with 0 on the clean first frame (TI2V)."""
    if not batch.first_frame:
        return t
    _, _, frames, h, w = batch.x0.shape
    grid = torch.ones(frames // patch[0], h // patch[1], w // patch[2], device=t.device)
    grid[0] = 0
    return grid.flatten()[None] * t[:, None]


def velocity(dit: torch.nn.Module, batch: Batch, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The DiT's velocity at noisy latents ``x`` and timesteps ``t`` (B,), fp32.

    Speech-to-video (DiffSynth's ``model_fn_wans2v``): frame 0 of x is the reference, read by
    the DiT apart from the frames it predicts; it comes back unchanged in front of them.
    LongCat-Video: its own forward (``train.longcat``), a continuation's leading frames as
    conditioning frames."""
    if is_longcat(dit):
        cond_frames = 0 if batch.longcat is None else batch.longcat.shape[2]
        return longcat_velocity(dit, x, t, batch.context, cond_frames)
    if isinstance(batch.extras, S2VExtras):
        extras = attrs.evolve(batch.extras, ref_latent=x[:, :, :1])
        pred = dit(x[:, :, 1:], t.to(x.device), batch.context, extras=extras).float()
        return torch.cat([x[:, :, :1].float(), pred], dim=2)
    timesteps = token_timesteps(batch, t.to(x.device), dit.cfg.patch_size)
    more = {} if batch.extras is None else {"extras": batch.extras}  # DiTs without extras take none
    if batch.motion_bucket is not None:  # a trained motion controller runs inside the step
        more["motion_bucket"] = batch.motion_bucket
    return dit(x, timesteps, batch.context, clip_fea=batch.clip, y=batch.y, **more).float()


def sft_loss(dit: torch.nn.Module, batch: Batch, d: Draw) -> torch.Tensor:
    """Weighted MSE between the predicted velocity and ε − x0 at the drawn noise levels."""
    x0 = batch.x0
    noise = d.noise.to(x0.device)
    x = noised(x0, noise, d.sigma)
    target = velocity_target(x0, noise)
    if batch.clean_first:  # TI2V's image, S2V's reference: the first latent frame is clean, not learned
        x = torch.cat([x0[:, :, :1], x[:, :, 1:]], dim=2)
    x = with_conditioning(x, batch.longcat)  # LongCat: as DiffSynth, every frame stays in the loss
    pred = velocity(dit, batch, x, d.t)
    if batch.clean_first:
        pred, target = pred[:, :, 1:], target[:, :, 1:]
    return weighted_mse(pred, target, d.weight)


def distill_loss(dit: torch.nn.Module, batch: Batch, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Run the Euler sampler over ``sigmas`` from ``noise`` with gradients; MSE to the teacher x0."""
    x = noise.to(batch.x0.device)
    if batch.clean_first:
        x = torch.cat([batch.x0[:, :, :1], x[:, :, 1:]], dim=2)
    for i in range(len(sigmas) - 1):
        t = torch.full((batch.size,), float(sigmas[i]) * 1000.0, device=x.device)
        x = x + velocity(dit, batch, x, t) * float(sigmas[i + 1] - sigmas[i])
        if batch.clean_first:
            x = torch.cat([batch.x0[:, :, :1], x[:, :, 1:]], dim=2)
    return F.mse_loss(x.float(), batch.x0.float())
