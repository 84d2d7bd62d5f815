"""denoise (LongCat-Video): its DiT's own loop, for text-to-video and video continuation.

LongCat's DiT is not a Wan DiT (its own forward, text handling and x0 − noise output), so it
gets its own denoise step, resumable like Wan's. The latent holds only the frames to denoise;
the conditioning frames of a continuation (``longcat-video``'s latents) are run once through the
DiT at t = 0 into a KV cache (``LongCatDiT.cache_conditioning``) that every later call attends
to, as LongCat's default loop does: the same numbers as the full pass, which tests check. The
DiT's output becomes a velocity in one place (``sampling.longcat.flow_velocity``), guidance
(CFG, CFG-Zero*) wraps it like every family's, and Euler walks the authors' grid (σ list
shifted by the release's scheduler config, with the ``enhance_hf`` tail for a continuation as
their ``generate_vc`` and without it for text-to-video as their ``generate_t2v``), their
distilled one, or DiffSynth's Wan grid.
The result is the whole clip: the conditioning latents, unchanged, then the generated frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.steps.component import component_runtime
from wanflow.steps.denoise import (
    CACHE_PREFIX,
    CHECKPOINT_EVERY,
    DENOISE_READS,
    cache_settings,
)
from wanflow.steps.dit_on_device import step_dit

#: The weight role of the release's ``scheduler/scheduler_config.json`` (the authors' grid only).
SCHEDULER = "scheduler"


@attrs.frozen
class LongCatDenoise:
    """Latents (1, 16, T, h, w) of LongCat-Video from noise, the prompts and the conditioning frames."""

    dit_files: int  # files of the DiT ("dit.0" …: shards, index, config.json)
    z_dim: int  # latent channels (the Wan2.1 VAE's 16)
    latent_stride: int  # pixels per latent along height and width
    #: The denoise input roles of the job's conditioners (the continuation's frames, when given).
    conditions: tuple[str, ...] = ()
    #: The authors' ``enhance_hf`` tail under their sampler: their ``generate_vc`` (a video
    #: continuation) walks it, ``generate_t2v`` and ``generate_i2v`` do not.
    tail: bool = False
    #: The registry's entry for ``sampler.solver`` ("longcat", "longcat-distill" or "euler"), keyed by name through
    #: ``sampler.*``; loaded when the step runs.
    solver: Any = attrs.field(default=None, metadata=NOT_KEYED)
    dit_dtype: str = "auto"  # [models.dit].dtype; "auto" follows [runtime].dtype
    #: (weight role of the LoRA file, DiT role, scale) of the recipe's ``[[lora]]`` tables, in
    #: order: merged into the DiT as a Wan DiT's are (their files' digests are weights, keyed).
    loras: tuple[tuple[str, str, float], ...] = ()
    #: How the block projections are held ("compute", "fp8", "fp8-matmul": ``fp8.STORAGES``);
    #: fp8 rounds the weights, so it is keyed. LoRAs are then applied on the fly.
    storage: str = "compute"
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The memory plan's tier of each block ("device", "host", "disk"), empty when all stay on the
    #: device: placement only, never part of the key (streamed blocks give the same numbers).
    tiers: tuple[str, ...] = attrs.field(default=(), metadata=NOT_KEYED)
    #: A plugin's attention backend (keyed through the node's ``uses``); None for wanflow's own.
    attention: Any = attrs.field(default=None, metadata=NOT_KEYED)
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "denoise-longcat"
    version: int = 2  # 2: text-to-video under the authors' sampler walks their grid without the enhance_hf tail
    output: str = "tensors"
    reads: tuple[str, ...] = DENOISE_READS

    @classmethod
    def replacing(cls, denoise: Any, tail: bool) -> LongCatDenoise:
        """LongCat's step for the job a Wan ``Denoise`` step was planned for (``tail``: it continues
        a video)."""
        (role, files), = denoise.experts
        return cls(files, denoise.z_dim, denoise.latent_stride, denoise.conditions, tail, denoise.solver,
                   dict(denoise.dtypes).get(role, "auto"), denoise.loras, denoise.storage, denoise.residency,
                   tuple(dict(denoise.tiers).get(role, ())), denoise.attention, denoise.peak)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.sampling import SolverState, start_state
        from wanflow.steps.cond_kinds import model_call

        p = ctx.params
        device, _ = component_runtime(p, self.dit_dtype)
        cond = model_call(self.conditions, {r: ctx.input(r) for r in self.conditions}).clamp  # (1, z, k, h, w)
        schedule = self.schedule(p, ctx)
        resumed = ctx.load_partial()
        saved = dict(resumed[1]) if resumed else {}
        cache_state = {k.removeprefix(CACHE_PREFIX): saved.pop(k) for k in list(saved) if k.startswith(CACHE_PREFIX)}
        state = SolverState.from_tensors(saved) if resumed else start_state(self.noise(p, cond))
        state = attrs.evolve(state, x=state.x.to(device))
        step = self.solver.load().step
        bar = ctx.progress(schedule.steps - state.index, unit="step")
        with torch.no_grad():
            dit = self._dit(ctx)
            steps = self._step_cache(p, schedule, cache_state, dit, state.x.shape[2])
            cache = None if cond is None else dit.cache_conditioning(cond.to(device))
            model_fn = self.guided(p, dit, ctx, cache, schedule, device, steps)
            while state.index < schedule.steps:
                state = step(state, model_fn, schedule)
                bar.update(1)
                if state.index % CHECKPOINT_EVERY == 0 or state.index == schedule.steps:
                    tensors = {k: v.cpu() for k, v in state.to_tensors().items()}
                    if steps is not None:  # a resumed run decides and adds as an uninterrupted one
                        tensors |= {f"{CACHE_PREFIX}{k}": v.cpu() for k, v in steps.state_tensors().items()}
                    ctx.save_partial(state.index, tensors)
        bar.close()
        x = state.x.float().cpu()
        return {"latents": (x if cond is None else torch.cat([cond.float(), x], dim=2)).contiguous()}

    def schedule(self, p: Mapping[str, Any], ctx: Any) -> Any:
        """The solver's grid: the authors' (full, with the ``enhance_hf`` tail when continuing
        frames, or distilled) at the release's scheduler shift, or the Wan Euler grid at
        ``[sampler].shift`` (DiffSynth's configuration)."""
        from wanflow.families.longcat import AUTHORS_SOLVERS
        from wanflow.sampling.longcat import authors_schedule

        solver = self.solver.load()
        if solver.name not in AUTHORS_SOLVERS:
            return solver.schedule(p["sampler.steps"], p["sampler.shift"], 1.0)
        return authors_schedule(solver.name, p["sampler.steps"], release_shift(ctx), continuation=self.tail)

    def noise(self, p: Mapping[str, Any], cond: Any) -> Any:
        """The seeded noise of the whole clip (LongCat draws it so), less the conditioning frames."""
        from wanflow.sampling import initial_noise

        s = self.latent_stride
        shape = (1, self.z_dim, (p["video.frames"] - 1) // 4 + 1, p["video.height"] // s, p["video.width"] // s)
        noise = initial_noise(shape, p["sampler.seed"], noise_device=p["sampler.noise_device"]).cpu()
        return noise if cond is None else noise[:, :, cond.shape[2]:]

    def guided(self, p: Mapping[str, Any], dit: Any, ctx: Any, cache: Any, schedule: Any, device: str,
               steps: Any = None) -> Any:
        """The guided velocity: CFG, or CFG-Zero* (``cfg_zero_star``), over the prompt and the
        negative prompt, each a LongCat forward turned into a flow velocity (both in one
        forward under ``cfg_merge``), through the step cache ``steps`` when there is one."""
        from wanflow.sampling.guidance import Guidance, Passes, guided_model
        from wanflow.steps.cond_call import tensor

        def velocity(prompt: str) -> Any:
            context = tensor(ctx.input(prompt), "context", prompt).to(device)  # (1, L, D)
            branch = {"pos": "cond", "neg": "uncond"}[prompt]
            return lambda x, t: forward(dit, x, t.reshape(1).expand(x.shape[0]).to(device), context, None, cache,
                                        steps, branch)

        cfg = float(p["sampler.cfg"])
        batched = bool(p["sampler.cfg_merge"]) and cfg != 1.0
        guidance = Guidance(cfg, batched=batched, zero_star=bool(p["sampler.cfg_zero_star"]),
                            zero_init_steps=int(p["sampler.cfg_zero_init_steps"]))
        if batched:  # cfg_merge: [prompt; negative] in one batch-2 forward, sharing the cache
            return guided_model(Passes(cond=velocity("pos"), pair=self.pair(ctx, dit, cache, device, steps)),
                                guidance, schedule)
        passes = Passes(cond=velocity("pos"), uncond=velocity("neg") if cfg != 1.0 else None)
        return guided_model(passes, guidance, schedule)

    def pair(self, ctx: Any, dit: Any, cache: Any, device: str, steps: Any = None) -> Any:
        """cfg_merge's pass: the prompt's and the negative prompt's features zero-padded to one
        length, each sample attending to its own slots (``text_lens``), so each row computes what
        its own pass would."""
        import torch
        import torch.nn.functional as F

        from wanflow.steps.cond_call import tensor

        pos, neg = (tensor(ctx.input(role), "context", role) for role in ("pos", "neg"))  # (1, L, D) each
        length = max(pos.shape[1], neg.shape[1])
        context = torch.cat([F.pad(c, (0, 0, 0, length - c.shape[1])) for c in (pos, neg)]).to(device)
        lens = torch.tensor([pos.shape[1], neg.shape[1]], device=device)
        return lambda x, t: forward(dit, x, t.reshape(1).expand(x.shape[0]).to(device), context, lens, cache,
                                    steps, "pair")

    def _step_cache(self, p: Mapping[str, Any], schedule: Any, resumed: Mapping[str, Any], dit: Any,
                    frames: int) -> Any:
        """The step cache of ``[sampler.cache]`` over the whole schedule (None for ``"none"``),
        restored when resuming. TeaCache reads the calibrated polynomial (none is published for
        LongCat) of the time embedding of the ``frames`` frames the DiT is called on; with a target
        speed-up its plan is solved from every step's embedding before sampling."""
        settings = cache_settings(p)
        if settings is None:
            return None
        import torch

        from wanflow.models.dit_cache import CacheSignals
        from wanflow.sampling.step_cache_settings import make_step_cache

        signals = None
        if settings.method == "teacache":  # the forward's own t_emb of each step, as cached_forward passes it
            device = next(dit.parameters()).device
            embedded = (dit.embed_time(torch.full((1, frames), float(t), device=device)) for t in schedule.timesteps)
            signals = [CacheSignals(e, e) for e in embedded]
        cache = make_step_cache(settings, schedule.timesteps, family=p["model"], signals=signals)
        if resumed:
            cache.load_state_tensors(resumed)
        return cache

    def _dit(self, ctx: Any) -> Any:
        """The DiT from the pool, through its row of the DiT variant table (whole, or its blocks in
        the memory plan's tiers; its block projections in fp8 under ``[memory].fp8``; its blocks
        compiled under ``[runtime].compile``),
        with the recipe's LoRAs merged into it, or applied on the fly to fp8 weights (a patched DiT
        is its own pool entry)."""
        return step_dit(ctx, self.dit_files, self.dit_dtype, self.residency, loras=self.loras,
                        storage=self.storage, tiers=self.tiers, compile_mode=ctx.params["runtime.compile"],
                        attention=self.attention)


def forward(dit: Any, x: Any, t: Any, context: Any, lens: Any, cache: Any, steps: Any, branch: str) -> Any:
    """One LongCat forward as a flow velocity, through the step cache ``steps`` when given (the
    guidance pass ``branch`` keeps its own state there)."""
    from wanflow.sampling.longcat import flow_velocity

    if steps is None:
        return flow_velocity(dit(x, t, context, lens, cache=cache))
    from wanflow.models.longcat_cache import cached_forward

    return flow_velocity(cached_forward(dit, x, t, context, lens, cache=cache, step_cache=steps, branch=branch))


def release_shift(ctx: Any) -> float:
    """The flow shift of the release's ``scheduler/scheduler_config.json`` (the step's
    ``scheduler`` weight), which the authors' grids take."""
    from wanflow.models.json_file import read_json_object
    from wanflow.sampling.longcat import scheduler_shift

    path = ctx.weight(SCHEDULER)
    return scheduler_shift(read_json_object(path, "scheduler config"), str(path))
