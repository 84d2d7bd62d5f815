"""denoise: the sampler loop over one DiT (or the two A14B experts), resumable after any step.

The solver state is checkpointed through the engine every few steps, so a killed run resumes
bit for bit. Guidance wraps the model (``cfg = 1`` never evaluates the negative prompt); A14B
runs the high-noise expert's steps, releases it, then loads the low-noise one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import structlog

from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime

log = structlog.get_logger(__name__)

#: Steps between solver-state checkpoints (each costs one write of the latent and its history).
CHECKPOINT_EVERY = 5
#: Key prefix of the step cache's state inside a checkpoint (resumed bit for bit with the solver's).
CACHE_PREFIX = "cache."
DENOISE_READS = ("sampler.*", "video.width", "video.height", "video.frames",
                 "runtime.device", "runtime.dtype", "runtime.attention", "model")


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
    conditions: tuple[str, ...] = ()  # input roles present besides "pos"/"neg": clip, y, z0, x0
    #: The registry's entry for ``sampler.solver`` (a plugin's is keyed by name@version through
    #: the node's ``uses``); loaded when the step runs, so planning never imports torch.
    solver: Any = attrs.field(default=None, metadata=NOT_KEYED)
    dtypes: tuple[tuple[str, str], ...] = ()  # expert role -> [models.<role>].dtype when set
    #: (LoRA weight role, DiT role, scale) in recipe order; the files' digests are weights.
    loras: tuple[tuple[str, str, float], ...] = ()
    storage: str = "compute"  # "fp8": block weights stored in fp8 ([memory].fp8; changes the numbers)
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: (DiT role, tier of each block) where the memory plan streams blocks (placement: not keyed).
    tiers: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(default=(), metadata=NOT_KEYED)
    #: The memory plan's predicted peak of this step (said if it runs out of memory; not keyed).
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "denoise"
    version: int = 2  # 2: denoising_strength < 1 rescales the grid (all steps), DiffSynth's rule
    output: str = "tensors"
    reads: tuple[str, ...] = DENOISE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.sampling import SolverState

        p = ctx.params
        device, _ = component_runtime(p)
        schedule = self.schedule(p)
        inputs = {r: ctx.input(r) for r in ("pos", *self.conditions)}
        if any(c != 1.0 for c in expert_cfgs(p, self.roles).values()):
            inputs["neg"] = ctx.input("neg")
        resumed = ctx.load_partial()
        saved = dict(resumed[1]) if resumed else {}
        cache_state = {k.removeprefix(CACHE_PREFIX): saved.pop(k) for k in list(saved) if k.startswith(CACHE_PREFIX)}
        state = SolverState.from_tensors(saved) if resumed else self._start(p, schedule, inputs)
        state = _moved(state, device)
        bar = ctx.progress(schedule.steps - state.index, unit="step")
        with torch.no_grad():
            for role, begin, stop in self._segments_from(p, schedule, state.index):
                state = self._segment(ctx, role, begin, stop, state, schedule, inputs, bar, cache_state)
                cache_state = {}  # a later segment (the other A14B expert) starts its own cache
        bar.close()
        return {"latents": state.x.float().cpu().contiguous()}

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role, _ in self.experts)

    def schedule(self, p: Mapping[str, Any]) -> Any:
        """The σ grid: from σ = strength to 0 in ``steps`` steps when a source is kept
        (``strength_schedule = "rescale"``, DiffSynth's rule), else the strength-1 grid."""
        from wanflow.sampling import make_schedule

        if self.solver is None:
            raise RuntimeError("denoise: planned without a solver; the pipeline must pass one")
        rescale = "x0" in self.conditions and p["sampler.strength_schedule"] == "rescale"
        strength = float(p["sampler.denoising_strength"]) if rescale else 1.0
        return make_schedule(self.solver.load(), p["sampler.steps"], p["sampler.shift"], strength)

    def _start(self, p: Mapping[str, Any], schedule: Any, inputs: Mapping[str, Any]) -> Any:
        """The solver state before the first step: seeded noise, or the kept input noised to the
        grid's first σ (all steps run), or, for ``"truncate"``, to the σ of its first kept step."""
        from wanflow.sampling import denoise_start, initial_noise, noised, start_state

        frames, h, w = p["video.frames"], p["video.height"], p["video.width"]
        s = self.latent_stride
        shape = (1, self.z_dim, (frames - 1) // 4 + 1, h // s, w // s)
        noise = initial_noise(shape, p["sampler.seed"], noise_device=p["sampler.noise_device"]).cpu()
        if "x0" not in self.conditions:
            return start_state(_clamped(noise, inputs), 0)
        truncate = p["sampler.strength_schedule"] == "truncate"
        start = denoise_start(schedule.steps, p["sampler.denoising_strength"]) if truncate else 0
        x = noised(_tensor(inputs, "x0"), noise, schedule.sigma(start))
        return start_state(_clamped(x, inputs), start)

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

        if "x0" in self.conditions and p["sampler.strength_schedule"] == "truncate":
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
                 inputs: Mapping[str, Any], bar: Any, resumed_cache: Mapping[str, Any]) -> Any:
        """Steps up to ``stop`` with one DiT resident, checkpointing as they go."""
        p = ctx.params
        device, dtype = component_runtime(p, dict(self.dtypes).get(role, "auto"))
        n = dict(self.experts)[role]
        loras = tuple((ctx.weight(lora), scale) for lora, dit_role, scale in self.loras if dit_role == role)
        dit = model_pool.dit([ctx.weight(f"{role}.{i}") for i in range(n)], dtype, device,
                             p["runtime.attention"], self.residency, loras, self.storage,
                             dict(self.tiers).get(role, ()))
        cache = self._cache(p, dit, schedule, state, begin, stop, resumed_cache)
        model_fn = self._guided(p, role, dit, inputs, device, cache, schedule)
        step = self.solver.load().step
        while state.index < stop:
            state = step(state, model_fn, schedule)
            state = attrs.evolve(state, x=_clamped(state.x, inputs))
            bar.update(1)
            if state.index % CHECKPOINT_EVERY == 0 or state.index == stop:
                saved = {k: v.cpu() for k, v in state.to_tensors().items()}
                if cache is not None and state.index < stop:  # the cache lives within its segment
                    saved |= {f"{CACHE_PREFIX}{k}": v.cpu() for k, v in cache.state_tensors().items()}
                ctx.save_partial(state.index, saved)
        return state

    def _guided(self, p: Mapping[str, Any], role: str, dit: Any, inputs: Mapping[str, Any],
                device: str, cache: Any, schedule: Any) -> Any:
        """The guided model function of this expert: CFG, or the recipe's guidance options
        (cfg_merge, CFG-Zero*, skip-layer guidance), over passes bound to this DiT."""
        from wanflow.sampling.guidance import (
            Guidance,
            Passes,
            SkipLayerGuidance,
            check_slg,
            guided_model,
            refuse,
        )

        slg = None
        if p["sampler.slg_blocks"]:
            slg = SkipLayerGuidance(tuple(p["sampler.slg_blocks"]), float(p["sampler.slg_scale"]),
                                    float(p["sampler.slg_start"]), float(p["sampler.slg_end"]), p["sampler.slg_mode"])
            refuse(check_slg(slg.blocks, slg.scale, slg.start, slg.end, slg.mode, (),
                             num_layers=dit.cfg.num_layers))
        cfg = expert_cfgs(p, self.roles)[role]
        guidance = Guidance(cfg, batched=bool(p["sampler.cfg_merge"]) and "neg" in inputs,
                            zero_star=bool(p["sampler.cfg_zero_star"]),
                            zero_init_steps=int(p["sampler.cfg_zero_init_steps"]), slg=slg)
        bound = _Conditioning(dit, inputs, device)
        passes = Passes(
            cond=_windowed(bound.model_fn("pos", cache, "cond"), p),
            uncond=_windowed(bound.model_fn("neg", cache, "uncond") if "neg" in inputs else None, p),
            pair=_windowed(bound.model_fn("pair", cache, "pair") if guidance.batched else None, p),
            skip=_windowed(bound.model_fn(slg.prompt, skip_blocks=slg.blocks)
                           if slg is not None and slg.prompt in inputs else None, p))
        return guided_model(passes, guidance, schedule)

    def _cache(self, p: Mapping[str, Any], dit: Any, schedule: Any, state: Any, begin: int, stop: int,
               resumed: Mapping[str, Any]) -> Any:
        """The step cache of this segment (``[sampler.cache]``), restored when resuming inside it."""
        settings = cache_settings(p)
        if settings is None:
            return None
        from wanflow.models.dit_cache import time_signals
        from wanflow.sampling.step_cache_settings import make_step_cache
        from wanflow.sampling.teacache import DitArchitecture

        signals = None
        if settings.method == "teacache":  # its plan is solved from every step's time embedding
            device = next(dit.parameters()).device
            ts = [self._model_t(state.x, t, dit).to(device) for t in schedule.timesteps]
            signals = time_signals(dit, ts)
        cache = make_step_cache(settings, schedule.timesteps, start=begin, stop=stop,
                                arch=DitArchitecture.of(dit.cfg, experts=len(self.experts)),
                                family=p["model"], signals=signals)
        if resumed:
            cache.load_state_tensors(resumed)
        if cache.plan is not None:
            log.info("step_cache", method=settings.method, plan=str(cache.plan))
        return cache

    def _model_t(self, x: Any, t: Any, dit: Any) -> Any:
        """The timestep tensor the model gets at ``t``: (1,), or per token for TI2V."""
        return _token_timesteps(x, t, dit.cfg.patch_size) if "z0" in self.conditions else t.reshape(1)


def cache_settings(p: Mapping[str, Any]) -> Any:
    """``[sampler.cache]`` as the sampling layer's settings, or None for ``method = "none"``."""
    if p["sampler.cache.method"] == "none":
        return None
    from wanflow.sampling.step_cache_settings import StepCacheSettings

    ratios = tuple((branch, tuple(p[f"sampler.cache.ratios_{branch}"])) for branch in ("cond", "uncond")
                   if p[f"sampler.cache.ratios_{branch}"])
    return StepCacheSettings(
        p["sampler.cache.method"], p["sampler.cache.threshold"], p["sampler.cache.target_speedup"],
        p["sampler.cache.mode"], p["sampler.cache.coefficients"], tuple(p["sampler.cache.calibrated"]),
        ratios, p["sampler.cache.max_skips"], p["sampler.cache.retention"]).check()


class _Conditioning:
    """One DiT with this job's conditioning bound in, serving every pass of a segment.

    The text and image tokens do not change between steps, so every block's cross-attention keys
    and values are projected once per prompt (``prepare_context``), on first use, and shared by
    the passes that read that prompt (the guidance pass, cfg_merge's pair, the skip-layer pass):
    under a memory plan that streams blocks, each preparation reads every block once more."""

    def __init__(self, dit: Any, inputs: Mapping[str, Any], device: str):
        self.dit, self.inputs, self.device = dit, inputs, device
        self.clip = _tensor(inputs, "clip").to(device) if "clip" in inputs else None
        self.y = _tensor(inputs, "y").to(device) if "y" in inputs else None
        self.first_frame = "z0" in inputs
        self._prepared: dict[str, Any] = {}

    def context(self, text: str) -> Any:
        """The prepared context of "pos" or "neg", or of "pair": both joined along the batch
        (DiffSynth's cfg_merge; both are zero-padded to 512 tokens, so they join as they are)."""
        if text not in self._prepared:
            import torch

            if text == "pair":
                from wanflow.models.dit import PreparedContext

                pos, neg = self.context("pos"), self.context("neg")
                self._prepared[text] = PreparedContext(
                    tuple(tuple(torch.cat([a, b]) for a, b in zip(kp, kn, strict=True))
                          for kp, kn in zip(pos.kv, neg.kv, strict=True)), 2 * pos.batch)
            else:
                with torch.no_grad():
                    self._prepared[text] = self.dit.prepare_context(
                        _tensor(self.inputs, text, "context").to(self.device), self.clip)
        return self._prepared[text]

    def model_fn(self, text: str, cache: Any = None, branch: str = "cond",
                 skip_blocks: tuple[int, ...] = ()) -> Any:
        """(x, t[, frames]) -> velocity of the prompt ``text`` ("pos", "neg", or "pair": x holds
        [cond; uncond] rows); ``frames``: the latent frames of a sliding window x holds."""
        dit, device = self.dit, self.device

        def velocity(x: Any, t: Any, frames: slice | None = None) -> Any:
            rows, window = x.shape[0], slice(0, x.shape[2]) if frames is None else frames
            if self.first_frame:
                tt = _token_timesteps(x, t, dit.cfg.patch_size, window.start == 0).expand(rows, -1)
            else:
                tt = t.reshape(1).repeat(rows)
            y = None if self.y is None else self.y[:, :, window].expand(rows, -1, -1, -1, -1)
            context = self.context(text)
            if cache is None or skip_blocks:
                return dit(x.to(device), tt.to(device), context, y=y, skip_blocks=skip_blocks).float()
            from wanflow.models.dit_cache import cached_forward

            return cached_forward(dit, x.to(device), tt.to(device), context, y=y, cache=cache,
                                  branch=branch).float()

        return velocity


def _windowed(fn: Any, p: Mapping[str, Any]) -> Any:
    """``fn`` over sliding windows of latent frames (``[sampler].sliding_window_*``), or whole."""
    size, stride = p["sampler.sliding_window_size"], p["sampler.sliding_window_stride"]
    if fn is None or size is None:
        return fn
    from wanflow.sampling.windows import windowed_model

    return windowed_model(fn, size, stride)


def _token_timesteps(x: Any, t: Any, patch: tuple[int, int, int], first: bool = True) -> Any:
    """TI2V: per-token timesteps (1, L), zero on the given first frame's tokens (``first``: x
    starts at the clip's first frame; a later sliding window has none)."""
    import torch

    _, _, frames, h, w = x.shape
    grid = torch.ones(frames // patch[0], h // patch[1], w // patch[2])  # (f, h, w) tokens
    if first:
        grid[0] = 0
    return (grid.flatten() * t.float())[None]  # (1, L)


def _clamped(x: Any, inputs: Mapping[str, Any]) -> Any:
    """TI2V: put the first frame's latent back after every step (and before the first)."""
    if "z0" not in inputs:
        return x
    x = x.clone()
    x[:, :, :1] = _tensor(inputs, "z0").to(device=x.device, dtype=x.dtype)  # (B, z, 1, h, w)
    return x


def _tensor(inputs: Mapping[str, Any], role: str, name: str | None = None) -> Any:
    """The tensor ``name`` (default: the role's name) of an input; an absent one is a planning bug."""
    name = name or role
    found = inputs[role]
    if name not in found:
        raise LookupError(f"denoise: input {role!r} holds {sorted(found)}, not {name!r}: the node "
                          "planned for this role computes something else")
    return found[name]


def _moved(state: Any, device: str) -> Any:
    """The solver state on the compute device (resumed states come back on the CPU)."""
    return attrs.evolve(state, x=state.x.to(device), history=tuple(h.to(device) for h in state.history),
                        last_x=None if state.last_x is None else state.last_x.to(device))
