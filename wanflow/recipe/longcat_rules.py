"""What a LongCat-Video recipe must be, and what other families must not borrow from it.

LongCat's denoise step (docs/longcat.md) reads the steps, the seed, the noise device, the
guidance scale and CFG-Zero*'s settings, the shift under DiffSynth's configuration (``euler``)
and nothing else of ``[sampler]``; the authors' sampler (``longcat``) takes its shift from the
release's scheduler config. A setting the step would not read is refused here, naming the key,
instead of changing the step's key and not the video; so are conditioning frames the VAE cannot
take and clips that leave nothing to generate after them.
"""

from __future__ import annotations

from wanflow.families.longcat import COND_FRAMES, PIPELINE, SOLVER
from wanflow.families.spec import FamilySpec
from wanflow.recipe.longcat_train_rules import check_longcat_training
from wanflow.recipe.problems import Problems, refuse_changed, refuse_whole_dit_settings
from wanflow.recipe.schema import Recipe, Sampler

_NO_GUIDANCE_OPTION = "LongCat's denoise step guides with cfg and CFG-Zero* only: remove it"
#: [sampler] keys LongCat's denoise step does not read, with why and the fix.
_UNREAD = {
    "cfg_merge": _NO_GUIDANCE_OPTION,
    "slg_blocks": _NO_GUIDANCE_OPTION, "slg_scale": _NO_GUIDANCE_OPTION, "slg_start": _NO_GUIDANCE_OPTION,
    "slg_end": _NO_GUIDANCE_OPTION, "slg_mode": _NO_GUIDANCE_OPTION,
    "sliding_window_size": "LongCat's denoise step runs the whole clip in one pass: remove it",
    "sliding_window_stride": "LongCat's denoise step runs the whole clip in one pass: remove it",
    "strength_schedule": "LongCat starts from noise (a kept source is not built for it): remove it",
}


def check_longcat(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Refuse what LongCat's denoise step cannot honour, and LongCat's settings elsewhere."""
    if family.pipeline != PIPELINE:
        _check_borrowed(recipe, family, problems)
        return
    if recipe.train is not None:
        check_longcat_training(recipe, problems)
    _check_frames(recipe, problems)
    s, defaults = recipe.sampler, Sampler()
    if s.solver == SOLVER and s.shift != defaults.shift and not problems.is_bad(("sampler", "shift")):
        problems.add(("sampler", "shift"), s.shift, "the authors' sampler takes its shift from the release's "
                     'scheduler/scheduler_config.json: remove it, or sample as DiffSynth does (solver = "euler", '
                     "shift = 1.0)")
    refuse_changed(problems, ("sampler",), s, defaults, _UNREAD)
    if s.denoising_strength != 1.0 and not problems.is_bad(("sampler", "denoising_strength")):
        problems.add(("sampler", "denoising_strength"), s.denoising_strength, "LongCat starts from noise (video "
                     "continuation is [inputs].longcat_video): use 1.0")
    if s.cache.method != "none":
        problems.add(("sampler", "cache", "method"), s.cache.method, "the step caches are calibrated on Wan "
                     'DiTs; LongCat\'s denoise step has none: use "none"')
    refuse_whole_dit_settings(problems, recipe, "LongCat's DiT")
    _check_memory(recipe, problems)


def _check_memory(recipe: Recipe, problems: Problems) -> None:
    """LongCat's DiT loads whole (its blocks cannot be streamed), so the memory plan places it
    under ``none`` or ``offload`` only, for generation and training alike (a training job's plan
    sizes its train step, which holds the DiT whole on the run's device)."""
    m = recipe.memory
    if m.policy in ("stream", "disk"):
        problems.add(("memory", "policy"), m.policy, "LongCat's DiT loads whole, so its blocks cannot be streamed "
                     'from host memory or disk: use "offload" (one model on the device at a time), "none" '
                     'or "auto"')


def _check_frames(recipe: Recipe, problems: Problems) -> None:
    """Conditioning frames the VAE can encode alone (4n+1), read only for a continuation, with
    latent frames left to generate after them."""
    k, frames = recipe.inputs.longcat_cond_frames, recipe.video.frames
    key = ("inputs", "longcat_cond_frames")
    if recipe.train is not None:  # every sample's longcat_video column is continued from its last k frames
        if (k - 1) % 4 and not problems.is_bad(key):
            lo = k - (k - 1) % 4
            problems.add(key, k, f"must be 4n+1 ({lo} or {lo + 4}; the authors use 13, DiffSynth's example 17): "
                         "the VAE encodes the first frame alone and then groups of 4")
        return
    if recipe.inputs.longcat_video is None:
        if k != COND_FRAMES and not problems.is_bad(key):
            problems.add(key, k, "is read only for a continuation: set [inputs].longcat_video, or remove it")
        return
    if (k - 1) % 4:
        lo = k - (k - 1) % 4
        problems.add(key, k, f"must be 4n+1 ({lo} or {lo + 4}; the authors use 13, DiffSynth's example 17): the "
                     "VAE encodes the first frame alone and then groups of 4")
        return
    if (frames - 1) % 4 or problems.is_bad(("video", "frames")):
        return  # the 4n+1 rule says it first
    if frames <= k:
        problems.add(("video", "frames"), frames, f"leaves no frame to generate after the {k} conditioning frames "
                     f"([inputs].longcat_cond_frames; the clip includes them): use at least {k + 4}")


def _check_borrowed(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """LongCat's solver and conditioning settings are refused in other families' recipes."""
    if recipe.sampler.solver == SOLVER and not problems.is_bad(("sampler", "solver")):
        problems.add(("sampler", "solver"), SOLVER, f"LongCat-Video's sampler runs the longcat-video family only; "
                     f"{family.name} samples with " + (", ".join(s for s in family.solvers if s != SOLVER)
                                                       or "euler, unipc or dpm++"))
    if recipe.inputs.longcat_cond_frames != COND_FRAMES:
        problems.add(("inputs", "longcat_cond_frames"), recipe.inputs.longcat_cond_frames,
                     f"is read by longcat-video only, not {family.name}: remove it")
