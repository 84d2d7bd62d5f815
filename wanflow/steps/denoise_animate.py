"""denoise (Animate): the official clip loop, each clip sampled like any Wan job, and its decode.

Each clip has 21 latent frames: frame 0 is the reference image (its 4-channel mask all ones,
then its VAE latent), frames 1..20 are the clip's 77 pixel frames. Their 20 condition channels
are built here, clip by clip, because a clip after the first starts from the previous clip's
last ``overlap_frames`` decoded frames:
- animation: the VAE latent of [the previous clip's last frames, black…] (all black for the
  first clip), the mask 1 on those frames, 0 elsewhere;
- replacement: the VAE latent of [the previous clip's last frames, background…], the mask the
  background's "keep" mask (0 on the person) with 1 on those frames.
So this step reads the VAE, and its file is part of the step's key. The pose latents, face
tokens, reference latent and CLIP tokens come from their own cached steps (conditioner kinds of
their own, ``cond_animate``). A clip's noise is the
seeded noise of ``seed + clip``; the sampler, guidance (the unconditional pass sees the negative
prompt and black face crops) and the relighting LoRA (replacement) are the job's. The output is
every clip's latents (n, z, 21, h, w); ``AnimateDecode`` decodes them clip by clip and joins them,
dropping each later clip's overlap frames and cutting to ``[video].frames``. The clips done are
saved after each clip, so a killed run resumes at the next clip, to the same bits.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.steps.component import component_runtime
from wanflow.steps.dit_on_device import step_dit
from wanflow.steps.cond_animate import CLIP_READS, clip_plan, to_signed
from wanflow.steps.conditioning import VAE_READS
from wanflow.steps.denoise import DENOISE_READS, Denoise, expert_cfgs
from wanflow.steps.text import RUNTIME_READS
from wanflow.steps.vae_on_device import VaeOnDevice, vae_on_device


@attrs.frozen
class AnimateDenoise:
    """Latents (n, z, 21, h, w) of every clip."""

    dit_files: int  # files of the one DiT ("dit.0" …)
    z_dim: int
    latent_stride: int
    vae_version: str
    #: The registry's entry for ``sampler.solver`` (keyed by name@version through the node's uses).
    solver: Any = attrs.field(default=None, metadata=NOT_KEYED)
    dit_dtype: str = "auto"  # [models.dit].dtype
    #: (LoRA weight role, DiT role, scale): the relighting LoRA (replacement), then the recipe's.
    loras: tuple[tuple[str, str, float], ...] = ()
    storage: str = "compute"
    vae_dtype: str = "auto"
    vae_device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    attention: Any = attrs.field(default=None, metadata=NOT_KEYED)
    tiers: tuple[str, ...] = attrs.field(default=(), metadata=NOT_KEYED)
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "denoise-animate"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*DENOISE_READS, *VAE_READS, "inputs.animate_mode", "inputs.overlap_frames")

    @classmethod
    def replacing(cls, denoise: Any, decode: Any, loras: tuple[tuple[str, str, float], ...]) -> AnimateDenoise:
        """The clip loop for the job a Wan ``Denoise`` step was planned for, with the VAE of its
        ``Decode`` step and ``loras`` in place of the recipe's alone."""
        (role, files), = denoise.experts
        return cls(files, denoise.z_dim, denoise.latent_stride, decode.vae_version, denoise.solver,
                   dict(denoise.dtypes).get(role, "auto"), loras, denoise.storage, decode.dtype, decode.device,
                   denoise.residency, denoise.attention, dict(denoise.tiers).get(role, ()), denoise.peak)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.sampling import initial_noise, start_state

        p = ctx.params
        plan = clip_plan(p)
        device, _ = component_runtime(p, self.dit_dtype)
        base = Denoise(experts=(("dit", self.dit_files),), z_dim=self.z_dim, latent_stride=self.latent_stride,
                       solver=self.solver)
        schedule = base.schedule(p)
        texts = {"pos": ctx.input("pos")}
        if expert_cfgs(p, ("dit",))["dit"] != 1.0:
            texts["neg"] = ctx.input("neg")
        dit, vae = self._dit(ctx), self._vae(ctx)
        step = self.solver.load().step
        reference = ctx.input("animate_reference")
        h, w = p["video.height"] // self.latent_stride, p["video.width"] // self.latent_stride
        y_ref = torch.cat([torch.ones(1, 4, 1, h, w), reference["latent"]], dim=1)  # (1, 4 + z, 1, h, w)
        out, previous = self._resumed(ctx, vae, plan.count)
        bar = ctx.progress((plan.count - len(out)) * schedule.steps, desc="denoise", unit="step")
        with torch.no_grad():
            for k in range(len(out), plan.count):
                y = torch.cat([y_ref, self._clip_condition(ctx, vae, k, previous)], dim=2)  # (1, 4 + z, 21, h, w)
                call = self._call(ctx, k, y)
                noise = initial_noise((1, self.z_dim, y.shape[2], h, w), p["sampler.seed"] + k,
                                      noise_device=p["sampler.noise_device"])
                state = start_state(noise.to(device), 0)
                model_fn = base.guided(p, "dit", dit, texts, call, device, None, schedule)
                while state.index < schedule.steps:
                    state = step(state, model_fn, schedule)
                    bar.update(1)
                latents = state.x.float().cpu()
                out.append(latents)
                if k + 1 < plan.count:
                    ctx.save_partial(k + 1, {"latents": torch.cat(out)})  # a killed run resumes at clip k + 1
                    previous = vae.decode(latents[:, :, 1:])  # (1, 3, 77, H, W)
        bar.close()
        return {"latents": torch.cat(out).contiguous()}

    def _resumed(self, ctx: Any, vae: Any, count: int) -> tuple[list[Any], Any]:
        """(the clips a killed run finished, the last one's decoded frames): nothing, or the
        saved clips, their last decoded again as the uninterrupted run decoded it."""
        resumed = ctx.load_partial()
        if resumed is None:
            return [], None
        import torch

        out = list(resumed[1]["latents"].split(1))
        if len(out) >= count:
            return out[:count], None
        with torch.no_grad():
            return out, vae.decode(out[-1][:, :, 1:])

    def _call(self, ctx: Any, k: int, y: Any) -> Any:
        """Clip ``k``'s model call: the reference, pose and face handed over by their kinds (the
        pose and face sliced to the clip), and the clip's condition channels ``y``."""
        from wanflow.steps.cond_animate import HANDED
        from wanflow.steps.cond_kinds import model_call

        inputs = {role: ctx.input(role) for role in HANDED}
        pose, face = inputs["animate_pose"], inputs["animate_face"]
        inputs["animate_pose"] = {"latents": pose["latents"][k:k + 1]}
        inputs["animate_face"] = {"tokens": face["tokens"][k:k + 1], "uncond": face["uncond"]}
        return model_call(HANDED, inputs).with_channels(y)

    def _clip_condition(self, ctx: Any, vae: Any, k: int, previous: Any) -> Any:
        """(1, 4 + z, 20, h, w): clip ``k``'s mask and the latent of its known frames."""
        import torch

        p = ctx.params
        plan = clip_plan(p)
        h, w = p["video.height"] // self.latent_stride, p["video.width"] // self.latent_stride
        known = 0 if k == 0 else plan.overlap
        if p["inputs.animate_mode"] == "replacement":
            pixels = to_signed(ctx.input("animate_background")["frames"][k])  # (3, 77, H, W)
            mask = ctx.input("animate_mask")["keep"][k][None].clone()  # (1, 77, h, w)
        else:
            pixels = torch.zeros(3, plan.clip, p["video.height"], p["video.width"])
            mask = torch.zeros(1, plan.clip, h, w)
        if known:
            pixels[:, :known] = previous[0, :, -known:].float().cpu()
            mask[:, :known] = 1
        latent = vae.encode(pixels[None])  # (1, z, 20, h, w)
        return torch.cat([mask_channels(mask), latent], dim=1)

    def _dit(self, ctx: Any) -> Any:
        return step_dit(ctx, self.dit_files, self.dit_dtype, self.residency, loras=self.loras, storage=self.storage,
                        tiers=self.tiers, compile_mode=ctx.params["runtime.compile"], attention=self.attention)

    def _vae(self, ctx: Any) -> VaeOnDevice:
        return vae_on_device(ctx, self.vae_version, self.vae_dtype, self.vae_device, self.residency)


def mask_channels(mask: Any) -> Any:
    """(1, 4, T', h, w): a pixel-frame mask (1, T, h, w), T = 4(T' − 1) + 1, as the DiT's 4 mask
    channels per latent frame (the first frame repeated 4 times, then 4 frames per latent frame)."""
    import torch

    _, _, h, w = mask.shape
    mask = torch.cat([mask[:, :1].repeat_interleave(4, dim=1), mask[:, 1:]], dim=1)  # (1, 4T', h, w)
    return mask.view(1, mask.shape[1] // 4, 4, h, w).transpose(1, 2)


@attrs.frozen
class AnimateDecode:
    """Frames (T, H, W, 3) uint8: each clip decoded on its own (its reference frame left out),
    later clips without their first ``overlap_frames`` frames, cut to ``[video].frames``."""

    vae_version: str
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "decode-animate"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*VAE_READS, *RUNTIME_READS, *CLIP_READS)

    @classmethod
    def replacing(cls, decode: Any) -> AnimateDecode:
        return cls(decode.vae_version, decode.dtype, decode.device, decode.residency, decode.peak)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.output import to_uint8_frames

        p = ctx.params
        plan = clip_plan(p)
        vae = vae_on_device(ctx, self.vae_version, self.dtype, self.device, self.residency)
        latents = ctx.input("latents")["latents"]  # (n, z, 21, h, w)
        bar = ctx.progress(latents.shape[0], desc="decode", unit="clip")
        clips = []
        with torch.no_grad():
            for k in range(latents.shape[0]):
                video = vae.decode(latents[k:k + 1, :, 1:])[0]  # (3, 77, H, W)
                clips.append(video if k == 0 else video[:, plan.overlap:])
                bar.update(1)
        bar.close()
        video = torch.cat(clips, dim=1)[:, :plan.frames]
        return {"frames": torch.from_numpy(to_uint8_frames(video))}
