"""denoise (speech-to-video): the official clip loop, from the audio buckets to the joined video.

For clip r = 0, 1, … (as many as the recording needs, ``wanflow.audio.plan_clips``, or the first
``[inputs].num_clip`` of them, the release's ``--num_clip``):
1. noise (1, 16, B/4, h, w) from seed + r, as the official loop seeds each clip;
2. the solver's steps over the S2V DiT given the clip's audio buckets, the reference latent, the
   clip's pose latents (none: zero latents) and the motion latents of the 73 frames before it;
   guidance's unconditional pass takes the negative prompt and the buckets times 0. The first
   clip drops its motion tokens (the release's ``drop_first_motion``) unless a motion video is
   given or ``[inputs].start_from_ref`` put the reference image at the end of the zero context
   (the release's ``--start_from_ref``): the first clip then continues that context like any
   later clip;
3. decode [reference, latents] (first clip, whose 3 leading frames belong to the reference's
   latent frame and are dropped) or [motion latents, latents], keep the clip's last B frames;
4. roll the 73 frames of motion context (keep the last 73 of context + clip) and encode them again.

The clips are joined and cut to the recording's length (the last clip runs on into the silence
after it); with ``num_clip`` the video ends with its last clip and the save step cuts the sound to
it. Each finished clip is checkpointed with the motion context it leaves, so a killed run
resumes at the next clip, bit for bit. This step decodes as it goes, so it reads the VAE as well as the DiT: the VAE's file
and tiling are part of its key, and it hands the save step frames ("frames") besides the sampled
latents of every clip ("latents", (1, 16, clips·B/4, h, w)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.errors import ModelInputError
from wanflow.steps.component import component_runtime
from wanflow.steps.conditioning import VAE_READS
from wanflow.steps.denoise import DENOISE_READS
from wanflow.steps.dit_on_device import step_dit
from wanflow.steps.s2v_checks import made_clips
from wanflow.steps.s2v_encode import MOTION_FRAMES, frames_per_clip
from wanflow.steps.vae_on_device import VaeOnDevice, vae_on_device

#: Frames of the first clip that belong to the reference image's latent frame (dropped).
FIRST_CLIP_DROP = 3


@attrs.frozen
class S2VDenoise:
    """The joined video's "frames" (T, H, W, 3) uint8 and every clip's "latents"."""

    dit_files: int  # files of the one DiT ("dit.0" …)
    vae_version: str  # "wan2.1"
    pose: bool  # a pose video's latents arrive as "pose" (else zero latents)
    motion_given: bool  # [inputs].motion_video or start_from_ref: the first clip keeps its motion tokens
    solver: Any = attrs.field(default=None, metadata=NOT_KEYED)  # keyed by name through params and uses
    dit_dtype: str = "auto"
    loras: tuple[tuple[str, str, float], ...] = ()
    storage: str = "compute"
    vae_dtype: str = "auto"
    vae_device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    attention: Any = attrs.field(default=None, metadata=NOT_KEYED)
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The memory plan's tier of each block ("device", "host", "disk"), empty when all stay on the
    #: device: placement only, never part of the key (streamed blocks give the same numbers).
    tiers: tuple[str, ...] = attrs.field(default=(), metadata=NOT_KEYED)
    kind: str = "denoise-s2v"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*DENOISE_READS, *VAE_READS, "video.fps", "inputs.audio_sample_rate", "inputs.num_clip")

    @classmethod
    def replacing(cls, denoise: Any, decode: Any, pose: bool, motion_given: bool) -> S2VDenoise:
        """The clip loop for the job a Wan ``Denoise`` step was planned for, with ``decode``'s VAE."""
        if len(denoise.experts) != 1:
            raise ModelInputError("speech-to-video runs one DiT; the job names "
                                  f"{', '.join(role for role, _ in denoise.experts)}")
        (role, files), = denoise.experts
        return cls(files, decode.vae_version, pose, motion_given, denoise.solver, dict(denoise.dtypes).get(role, "auto"),
                   denoise.loras, denoise.storage, decode.dtype, decode.device, denoise.residency,
                   denoise.attention, denoise.peak, tuple(dict(denoise.tiers).get(role, ())))

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.sampling import make_schedule

        p = ctx.params
        audio = ctx.input("audio")
        clip = frames_per_clip(p)
        clips = made_clips(audio["buckets"].shape[-1] // clip, p)
        schedule = make_schedule(self.solver.load(), p["sampler.steps"], p["sampler.shift"], 1.0)
        bar = ctx.progress(clips * schedule.steps, desc="denoise", unit="step")
        loop = _ClipLoop(self._dit(ctx), self._vae(ctx), ctx, self, schedule, bar)
        with torch.no_grad():
            latents, frames = loop.run(clips, clip)
        bar.close()
        rate = int(p["inputs.audio_sample_rate"])
        length = min(frames.shape[0], math.ceil(int(audio["samples"][0]) * p["video.fps"] / rate))
        return {"latents": latents.float().cpu().contiguous(), "frames": frames[:length].contiguous()}

    def _dit(self, ctx: Any) -> Any:
        return step_dit(ctx, self.dit_files, self.dit_dtype, self.residency, loras=self.loras, storage=self.storage,
                        tiers=self.tiers, compile_mode=ctx.params["runtime.compile"], attention=self.attention)

    def _vae(self, ctx: Any) -> VaeOnDevice:
        return vae_on_device(ctx, self.vae_version, self.vae_dtype, self.vae_device, self.residency)


class _ClipLoop:
    """One run of the clip loop: the DiT, the VAE, the step's inputs and the sampling settings."""

    def __init__(self, dit: Any, vae: VaeOnDevice, ctx: Any, step: S2VDenoise, schedule: Any, bar: Any):
        from wanflow.steps.cond_call import tensor

        p = ctx.params
        self.dit, self.vae, self.step, self.schedule, self.bar, self.p = dit, vae, step, schedule, bar, p
        self.ctx = ctx
        self.device, _ = component_runtime(p, step.dit_dtype)
        self.buckets = ctx.input("audio")["buckets"]
        self.ref = ctx.input("reference")["latent"]
        self.pose = ctx.input("pose")["latents"] if step.pose else None
        motion = ctx.input("motion")
        self.context_frames, self.motion = motion["frames"], motion["latents"]
        self.cfg = float(p["sampler.cfg"])
        texts = {"pos": ctx.input("pos")} | ({"neg": ctx.input("neg")} if self.cfg != 1.0 else {})
        self.contexts = {name: dit.prepare_context(tensor(found, "context", name).to(self.device))
                         for name, found in texts.items()}

    def run(self, clips: int, clip: int) -> tuple[Any, Any]:
        """(every clip's latents joined, the joined frames (T, H, W, 3) uint8).

        After each clip its results and the rolled motion context are checkpointed, so a killed
        run resumes at the next clip and gives the same bits."""
        import torch

        from wanflow.output import to_uint8_frames

        latents, frames, start = [], [], 0
        resumed = self.ctx.load_partial()
        if resumed is not None:
            start, saved = resumed
            latents, frames = [saved["latents"]], [saved["frames"]]
            self.context_frames, self.motion = saved["context"], saved["motion"]
            self.bar.update(start * self.schedule.steps)
        for r in range(start, clips):
            first = r == 0 and not self.step.motion_given
            x = self._sample(r, clip, first)
            video = self._decoded(x, first, clip)
            latents.append(x.float().cpu())
            frames.append(torch.from_numpy(to_uint8_frames(video[0])))
            self._roll(video)
            self.ctx.save_partial(r + 1, {"latents": torch.cat(latents, dim=2), "frames": torch.cat(frames),
                                          "context": self.context_frames, "motion": self.motion})
        return torch.cat(latents, dim=2), torch.cat(frames)

    def _sample(self, r: int, clip: int, first: bool) -> Any:
        """Clip r's latents (1, 16, B/4, h, w) after every step of the solver."""
        from wanflow.models.s2v import S2VExtras, silent_audio
        from wanflow.sampling import initial_noise, start_state

        _, z, _, h, w = self.ref.shape
        frames = clip // 4
        noise = initial_noise((1, z, frames, h, w), self.p["sampler.seed"] + r, noise_device=self.p["sampler.noise_device"])
        buckets = self.buckets[..., r * clip:(r + 1) * clip].to(self.device)
        shared = {"ref_latent": self.ref.to(self.device),
                  "pose": None if self.pose is None else self.pose[:, :, r * frames:(r + 1) * frames].to(self.device),
                  "motion": None if first else self.motion.to(self.device)}
        extras = {"pos": S2VExtras(audio=self.dit.prepare_audio(buckets), **shared)}
        if "neg" in self.contexts:
            extras["neg"] = S2VExtras(audio=self.dit.prepare_audio(silent_audio(buckets)), **shared)
        model_fn = self._guided(extras)
        state = start_state(noise.to(self.device))
        step = self.step.solver.load().step
        while state.index < self.schedule.steps:
            state = step(state, model_fn, self.schedule)
            self.bar.update(1)
        return state.x

    def _guided(self, extras: Mapping[str, Any]) -> Any:
        """CFG (with CFG-Zero* when the recipe asks) over the prompt and negative passes."""
        from wanflow.sampling.guidance import Guidance, Passes, guided_model

        def velocity(name: str) -> Any:
            def fn(x: Any, t: Any) -> Any:
                tt = t.reshape(1).repeat(x.shape[0]).to(self.device)
                return self.dit(x.to(self.device), tt, self.contexts[name], extras=extras[name]).float()
            return fn

        guidance = Guidance(self.cfg, zero_star=bool(self.p["sampler.cfg_zero_star"]),
                            zero_init_steps=int(self.p["sampler.cfg_zero_init_steps"]))
        passes = Passes(cond=velocity("pos"), uncond=velocity("neg") if "neg" in extras else None)
        return guided_model(passes, guidance, self.schedule)

    def _decoded(self, x: Any, first: bool, clip: int) -> Any:
        """The clip's frames (1, 3, B or B − 3, H, W): decoded after what comes before it."""
        import torch

        before = self.ref if first else self.motion
        video = self.vae.decode(torch.cat([before, x.float().cpu()], dim=2))[:, :, -clip:]
        return video[:, :, FIRST_CLIP_DROP:] if first else video

    def _roll(self, video: Any) -> None:
        """The last 73 frames of context + clip, and their latents: the next clip's motion."""
        import torch

        n = min(MOTION_FRAMES, video.shape[2])
        self.context_frames = torch.cat([self.context_frames[:, :, n:], video[:, :, -n:]], dim=2)
        self.motion = self.vae.encode(self.context_frames)
