"""denoise: the sampler loop over one DiT (or the two A14B experts), resumable after any step.

The solver state is checkpointed through the engine every few steps, so a killed run resumes
bit for bit. Guidance wraps the model (``cfg = 1`` never evaluates the negative prompt); A14B
runs the high-noise expert's steps, releases it, then loads the low-noise one. Conditioning
arrives as the job's model call (``cond_call``), gathered from the conditioners' hand-offs: this
loop does not know which family it samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import structlog

from wanflow.conditioners import starts_from_latent
from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.cond_call import token_timesteps as _token_timesteps  # noqa: F401 (its old name)

log = structlog.get_logger(__name__)

#: Steps between solver-state checkpoints (each costs one write of the latent and its history).
CHECKPOINT_EVERY = 5
#: Key prefix of the step cache's state inside a checkpoint (resumed bit for bit with the solver's).
CACHE_PREFIX = "cache."
DENOISE_READS = ("sampler.*", "video.width", "video.height", "video.frames",
                 "runtime.device", "runtime.dtype", "runtime.attention", "runtime.compile", "model")


def expert_cfgs(params: Mapping[str, Any], experts: tuple[str, ...]) -> dict[str, float]:
    """Guidance per DiT role: A14B's high-noise expert takes ``cfg_high_noise`` (None: ``cfg``)."""
    cfg = float(params["sampler.cfg"])
    high = params.get("sampler.cfg_high_noise")
    return {e: float(high) if e == "dit_high_noise" and high is not None else cfg for e in experts}


@attrs.frozen
class Denoise:
    """Latents (1, z, T, h, w) from noise, text features and the conditioning inputs."""

    experts: tuple[tuple[str, int], ...]  # (weight role prefix, number of files): ("dit", 2)
    z_dim: int  # latent channels of the family's VAE
    latent_stride: int  # pixels per latent along height and width
    #: The denoise input roles of the job's conditioners, in the family's declared order (the
    #: order their channels join x); each names its kind (``wanflow.conditioners``).
    conditions: tuple[str, ...] = ()
    #: The registry's entry for ``sampler.solver`` (a plugin's is keyed by name@version through
    #: the node's ``uses``); loaded when the step runs, so planning never imports torch.
    solver: Any = attrs.field(default=None, metadata=NOT_KEYED)
    dtypes: tuple[tuple[str, str], ...] = ()  # expert role -> [models.<role>].dtype when set
    #: (LoRA weight role, DiT role, scale) in recipe order; the files' digests are weights.
    loras: tuple[tuple[str, str, float], ...] = ()
    #: "fp8": block weights stored in fp8 ([memory].fp8); "fp8-matmul": also multiplied in fp8
    #: ([runtime].fp8_matmul). Both change the numbers (``wanflow.models.fp8.STORAGES``).
    storage: str = "compute"
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The registry's entry for ``[runtime].attention`` when a plugin provides it (its identity is
    #: keyed through the node's ``uses``); None for wanflow's own kernels.
    attention: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: (DiT role, tier of each block) where the memory plan streams blocks (placement: not keyed).
    tiers: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(default=(), metadata=NOT_KEYED)
    #: The memory plan's predicted peak of this step (said if it runs out of memory; not keyed).
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "denoise"
    #: 2: denoising_strength < 1 rescales the grid (all steps), DiffSynth's rule; 3: conditions
    #: in declared order, handed over by the conditioners.
    version: int = 3
    output: str = "tensors"
    reads: tuple[str, ...] = DENOISE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.sampling import SolverState
        from wanflow.steps.cond_kinds import model_call

        p = ctx.params
        device, _ = component_runtime(p)
        schedule = self.schedule(p)
        texts = {"pos": ctx.input("pos")}
        if any(c != 1.0 for c in expert_cfgs(p, self.roles).values()):
            texts["neg"] = ctx.input("neg")
        inputs = {r: ctx.input(r) for r in self.conditions}
        call = model_call(self.conditions, inputs)
        resumed = ctx.load_partial()
        saved = dict(resumed[1]) if resumed else {}
        cache_state = {k.removeprefix(CACHE_PREFIX): saved.pop(k) for k in list(saved) if k.startswith(CACHE_PREFIX)}
        state = SolverState.from_tensors(saved) if resumed else self._start(p, schedule, inputs)
        call.check_frames(state.x.shape[2])
        state = _moved(state, device)
        bar = ctx.progress(schedule.steps - state.index, unit="step")
        with torch.no_grad():
            for role, begin, stop in self._segments_from(p, schedule, state.index):
                state = self._segment(ctx, role, begin, stop, state, schedule, (texts, call), bar, cache_state)
                cache_state = {}  # a later segment (the other A14B expert) starts its own cache
        bar.close()
        return {"latents": call.kept(state.x).float().cpu().contiguous()}

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role, _ in self.experts)

    def schedule(self, p: Mapping[str, Any]) -> Any:
        """The σ grid: from σ = strength to 0 in ``steps`` steps when a source is kept
        (``strength_schedule = "rescale"``, DiffSynth's rule), else the strength-1 grid."""
        from wanflow.sampling import make_schedule

        if self.solver is None:
            raise RuntimeError("denoise: planned without a solver; the pipeline must pass one")
        rescale = self.keeps_source and p["sampler.strength_schedule"] == "rescale"
        strength = float(p["sampler.denoising_strength"]) if rescale else 1.0
        return make_schedule(self.solver.load(), p["sampler.steps"], p["sampler.shift"], strength)

    @property
    def keeps_source(self) -> bool:
        """Whether a conditioner hands over a starting latent ([sampler].denoising_strength < 1)."""
        return starts_from_latent(self.conditions)

    def _start(self, p: Mapping[str, Any], schedule: Any, inputs: Mapping[str, Any]) -> Any:
        """The solver state before the first step: seeded noise, or the kept input noised to the
        grid's first σ (all steps run), or, for ``"truncate"``, to the σ of its first kept step."""
        from wanflow.sampling import initial_noise, noised, start_state
        from wanflow.steps.cond_kinds import model_call

        call = model_call(self.conditions, inputs)
        frames, h, w = p["video.frames"], p["video.height"], p["video.width"]
        s = self.latent_stride
        shape = (1, self.z_dim, (frames - 1) // 4 + 1 + call.drop_frames, h // s, w // s)
        noise = initial_noise(shape, p["sampler.seed"], noise_device=p["sampler.noise_device"]).cpu()
        if call.start is None:
            return start_state(call.clamped(noise), 0)
        start = self._first_step(p, schedule)
        return start_state(call.clamped(noised(call.start, noise, schedule.sigma(start))), start)

    def _segments_from(self, p: Mapping[str, Any], schedule: Any, index: int) -> list[tuple[str, int, int]]:
        """(DiT role, first step, stop) of each segment still to run from step ``index``.

        A segment's first step is where it began in an uninterrupted run, not where a resumed run
        picks it up: a step cache's warm-up and plan count from it, so a resumed run skips and
        computes exactly the steps an uninterrupted one does."""
        begin, out = self._first_step(p, schedule), []
        for role, stop in self._segments(p, schedule, begin):
            if stop > index:
                out.append((role, begin, stop))
            begin = stop
        return out

    def _first_step(self, p: Mapping[str, Any], schedule: Any) -> int:
        """The step an uninterrupted run starts at: 0, or the first kept step under "truncate"."""
        from wanflow.sampling import denoise_start

        if self.keeps_source and p["sampler.strength_schedule"] == "truncate":
            return denoise_start(schedule.steps, p["sampler.denoising_strength"])
        return 0

    def _segments(self, p: Mapping[str, Any], schedule: Any, start: int) -> list[tuple[str, int]]:
        """(DiT role, stop step) per run of steps; A14B switches expert at the boundary."""
        from wanflow.sampling import Expert, expert_segments

        if len(self.experts) == 1:
            return [(self.roles[0], schedule.steps)]
        names = {Expert.HIGH_NOISE: "dit_high_noise", Expert.LOW_NOISE: "dit_low_noise"}
        return [(names[seg.expert], seg.stop)
                for seg in expert_segments(schedule, p["sampler.boundary"], start)]

    def _segment(self, ctx: Any, role: str, begin: int, stop: int, state: Any, schedule: Any,
                 conditioning: tuple[Mapping[str, Any], Any], bar: Any, resumed_cache: Mapping[str, Any]) -> Any:
        """Steps up to ``stop`` with one DiT resident, checkpointing as they go; ``conditioning``
        is (the encoded prompts, the model call)."""
        p = ctx.params
        device, dtype = component_runtime(p, dict(self.dtypes).get(role, "auto"))
        n = dict(self.experts)[role]
        loras = tuple((ctx.weight(lora), scale) for lora, dit_role, scale in self.loras if dit_role == role)
        dit = model_pool.dit([ctx.weight(f"{role}.{i}") for i in range(n)], dtype, device,
                             p["runtime.attention"], self.residency, loras, self.storage,
                             dict(self.tiers).get(role, ()), compile_mode=p["runtime.compile"],
                             kernel=None if self.attention is None else self.attention.load())
        texts, call = conditioning
        cache = self._cache(p, role, dit, schedule, state, call, (begin, stop), resumed_cache)
        model_fn = self.guided(p, role, dit, texts, call, device, cache, schedule)
        step = self.solver.load().step
        while state.index < stop:
            state = step(state, model_fn, schedule)
            state = attrs.evolve(state, x=call.clamped(state.x))
            bar.update(1)
            if state.index % CHECKPOINT_EVERY == 0 or state.index == stop:
                saved = {k: v.cpu() for k, v in state.to_tensors().items()}
                if cache is not None and state.index < stop:  # the cache lives within its segment
                    saved |= {f"{CACHE_PREFIX}{k}": v.cpu() for k, v in cache.state_tensors().items()}
                ctx.save_partial(state.index, saved)
        return state

    def guided(self, p: Mapping[str, Any], role: str, dit: Any, texts: Mapping[str, Any], call: Any,
                device: str, cache: Any, schedule: Any) -> Any:
        """The guided model function of this expert: CFG, or the recipe's guidance options
        (cfg_merge, CFG-Zero*, skip-layer guidance), over passes bound to this DiT. Public: the
        clip loops (Animate) guide each clip's model call with it, so guidance has one home."""
        from wanflow.sampling.guidance import (
            Guidance,
            Passes,
            SkipLayerGuidance,
            check_slg,
            guided_model,
            refuse,
        )
        from wanflow.steps.dit_passes import BoundDit

        slg = None
        if p["sampler.slg_blocks"]:
            slg = SkipLayerGuidance(tuple(p["sampler.slg_blocks"]), float(p["sampler.slg_scale"]),
                                    float(p["sampler.slg_start"]), float(p["sampler.slg_end"]), p["sampler.slg_mode"])
            refuse(check_slg(slg.blocks, slg.scale, slg.start, slg.end, slg.mode, (),
                             num_layers=dit.cfg.num_layers))
        cfg = expert_cfgs(p, self.roles)[role]
        guidance = Guidance(cfg, batched=bool(p["sampler.cfg_merge"]) and "neg" in texts,
                            zero_star=bool(p["sampler.cfg_zero_star"]),
                            zero_init_steps=int(p["sampler.cfg_zero_init_steps"]), slg=slg)
        bound = BoundDit(dit, texts, call, device)
        passes = Passes(
            cond=_windowed(bound.model_fn("pos", cache, "cond"), p),
            uncond=_windowed(bound.model_fn("neg", cache, "uncond") if "neg" in texts else None, p),
            pair=_windowed(bound.model_fn("pair", cache, "pair") if guidance.batched else None, p),
            skip=_windowed(bound.model_fn(slg.prompt, skip_blocks=slg.blocks)
                           if slg is not None and slg.prompt in texts else None, p))
        return guided_model(passes, guidance, schedule)

    def _cache(self, p: Mapping[str, Any], role: str, dit: Any, schedule: Any, state: Any, call: Any,
               span: tuple[int, int], resumed: Mapping[str, Any]) -> Any:
        """The step cache of this segment (``[sampler.cache]``), restored when resuming inside it."""
        settings = cache_settings(p, role)
        if settings is None:
            return None
        from wanflow.models.dit_cache import time_signals
        from wanflow.sampling.step_cache_settings import make_step_cache
        from wanflow.sampling.teacache import DitArchitecture

        signals = None
        if settings.method == "teacache":  # its plan is solved from every step's time embedding
            device = next(dit.parameters()).device
            whole = slice(0, state.x.shape[2])
            ts = [call.timesteps(state.x, t, dit.cfg.patch_size, whole).to(device) for t in schedule.timesteps]
            signals = time_signals(dit, ts, call.dit_extras(whole, 1, device))
        cache = make_step_cache(settings, schedule.timesteps, start=span[0], stop=span[1],
                                arch=DitArchitecture.of(dit.cfg, experts=len(self.experts)),
                                family=p["model"], signals=signals)
        if resumed:
            cache.load_state_tensors(resumed)
        if cache.plan is not None:
            log.info("step_cache", method=settings.method, plan=str(cache.plan))
        return cache


def cache_settings(p: Mapping[str, Any], role: str = "dit") -> Any:
    """``[sampler.cache]`` as the sampling layer's settings for the DiT ``role``, or None for
    ``method = "none"``: A14B's high-noise expert reads ``calibrated_high_noise`` when given."""
    if p["sampler.cache.method"] == "none":
        return None
    from wanflow.sampling.step_cache_settings import StepCacheSettings

    ratios = tuple((branch, tuple(p[f"sampler.cache.ratios_{branch}"])) for branch in ("cond", "uncond")
                   if p[f"sampler.cache.ratios_{branch}"])
    return StepCacheSettings(
        p["sampler.cache.method"], p["sampler.cache.threshold"], p["sampler.cache.target_speedup"],
        p["sampler.cache.mode"], p["sampler.cache.coefficients"], _polynomial(p, role),
        ratios, p["sampler.cache.max_skips"], p["sampler.cache.retention"]).check()


def _polynomial(p: Mapping[str, Any], role: str) -> tuple[float, ...]:
    """The calibrated TeaCache polynomial of the DiT ``role``."""
    own = tuple(p.get("sampler.cache.calibrated_high_noise") or ())
    return own if role == "dit_high_noise" and own else tuple(p["sampler.cache.calibrated"])


def _windowed(fn: Any, p: Mapping[str, Any]) -> Any:
    """``fn`` over sliding windows of latent frames (``[sampler].sliding_window_*``), or whole."""
    size, stride = p["sampler.sliding_window_size"], p["sampler.sliding_window_stride"]
    if fn is None or size is None:
        return fn
    from wanflow.sampling.windows import windowed_model

    return windowed_model(fn, size, stride)


def _moved(state: Any, device: str) -> Any:
    """The solver state on the compute device (resumed states come back on the CPU)."""
    return attrs.evolve(state, x=state.x.to(device), history=tuple(h.to(device) for h in state.history),
                        last_x=None if state.last_x is None else state.last_x.to(device))
