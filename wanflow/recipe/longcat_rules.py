"""What a LongCat-Video recipe must be, and what other families must not borrow from it.

LongCat's denoise step (docs/longcat.md) reads the steps, the seed, the noise device, the
guidance scale and CFG-Zero*'s settings, the shift under DiffSynth's configuration (``euler``)
and nothing else of ``[sampler]``; the authors' sampler (``longcat``) takes its shift from the
release's scheduler config. A setting the step would not read is refused here, naming the key,
instead of changing the step's key and not the video; so are conditioning frames the VAE cannot
take and clips that leave nothing to generate after them.
"""

from __future__ import annotations

from wanflow.families.longcat import (
    AUTHORS_SOLVERS,
    COND_FRAMES,
    DISTILLED_LORA,
    DISTILLED_SOLVER,
    PIPELINE,
    REPO,
)
from wanflow.families.spec import FamilySpec
from wanflow.recipe.longcat_refine_rules import SETTINGS as REFINE_SETTINGS
from wanflow.recipe.longcat_refine_rules import check_refine
from wanflow.recipe.longcat_train_rules import check_longcat_training
from wanflow.recipe.problems import Problems, refuse_changed
from wanflow.recipe.schema import Inputs, Recipe, Runtime, Sampler

_NO_GUIDANCE_OPTION = "LongCat's denoise step guides with cfg and CFG-Zero* only: remove it"
#: [sampler] keys LongCat's denoise step does not read, with why and the fix.
_UNREAD = {
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
    _check_segment_prompts(recipe, problems)
    _check_image(recipe, problems)
    _check_cond_latents(recipe, problems)
    _check_append(recipe, problems)
    check_refine(recipe, problems)
    s, defaults = recipe.sampler, Sampler()
    if s.solver in AUTHORS_SOLVERS and s.shift != defaults.shift and not problems.is_bad(("sampler", "shift")):
        problems.add(("sampler", "shift"), s.shift, "the authors' sampler takes its shift from the release's "
                     'scheduler/scheduler_config.json: remove it, or sample as DiffSynth does (solver = "euler", '
                     "shift = 1.0)")
    if s.solver == DISTILLED_SOLVER:
        _check_distilled(recipe, problems)
    refuse_changed(problems, ("sampler",), s, defaults, _UNREAD)
    if s.denoising_strength != 1.0 and not problems.is_bad(("sampler", "denoising_strength")):
        problems.add(("sampler", "denoising_strength"), s.denoising_strength, "LongCat starts from noise (video "
                     "continuation is [inputs].longcat_video): use 1.0")
    if s.cache.method == "teacache" and s.cache.coefficients != "calibrated":
        problems.add(("sampler", "cache", "coefficients"), s.cache.coefficients, "no TeaCache polynomial is "
                     "published for LongCat-Video: calibrate one on it (wanflow cache calibrate RECIPE, "
                     'docs/step-cache.md) and use coefficients = "calibrated", or use "first-block" or "easycache"')
    if s.cache.method == "teacache" and s.cache.mode != "e":
        problems.add(("sampler", "cache", "mode"), s.cache.mode, "LongCat's blocks take no shared modulation "
                     'to read: use the time embedding, mode = "e"')


#: The distilled schedule picks its steps from the authors' 50 (``sampling.longcat.DISTILL_GRID``).
_DISTILL_GRID = 50


def _check_distilled(recipe: Recipe, problems: Problems) -> None:
    """The distilled schedule has at most 50 steps, and samples the distilled model: the base
    with the release's cfg_step LoRA, which a generation recipe must name."""
    steps = recipe.sampler.steps
    if steps > _DISTILL_GRID and not problems.is_bad(("sampler", "steps")):
        problems.add(("sampler", "steps"), steps, f"the distilled schedule picks its steps from the authors' "
                     f"{_DISTILL_GRID} timesteps (it was distilled for 16): use at most {_DISTILL_GRID}")
    if recipe.train is None and not any(lora.target == "dit" for lora in recipe.lora):
        problems.add(("sampler", "solver"), DISTILLED_SOLVER, "samples the distilled model, the DiT with the "
                     f"release's {DISTILLED_LORA}: add it as [[lora]] (source = \"modelscope:{REPO}\", "
                     f'file = "{DISTILLED_LORA}"), or use solver = "longcat"')


def _check_frames(recipe: Recipe, problems: Problems) -> None:
    """Conditioning frames the VAE can encode alone (4n+1), read only for a continuation (of the
    input video, or of each clip of a long video by the next), with latent frames left to
    generate after them."""
    k, frames = recipe.inputs.longcat_cond_frames, recipe.video.frames
    key = ("inputs", "longcat_cond_frames")
    if recipe.train is not None:
        for name in ("longcat_segments", "longcat_segment_prompts"):
            if getattr(recipe.inputs, name):
                problems.add(("inputs", name), getattr(recipe.inputs, name), "chains generated clips, which a "
                             "training stage does not make: remove it")
    if recipe.train is not None:  # every sample's longcat_video column is continued from its last k frames
        if (k - 1) % 4 and not problems.is_bad(key):
            lo = k - (k - 1) % 4
            problems.add(key, k, f"must be 4n+1 ({lo} or {lo + 4}; the authors use 13, DiffSynth's example 17): "
                         "the VAE encodes the first frame alone and then groups of 4")
        return
    if recipe.inputs.longcat_video is None and _segments(recipe) == 0:
        if k != COND_FRAMES and not problems.is_bad(key):
            problems.add(key, k, "is read only for a continuation: set [inputs].longcat_video or "
                         "[inputs].longcat_segments, or remove it")
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


def _segments(recipe: Recipe) -> int:
    """A long video's segments after the first clip: ``longcat_segments``, or one per segment prompt."""
    return max(recipe.inputs.longcat_segments, len(recipe.inputs.longcat_segment_prompts))


def _check_segment_prompts(recipe: Recipe, problems: Problems) -> None:
    """One prompt per segment, none empty, as many as ``longcat_segments`` says where both are set."""
    prompts, count = recipe.inputs.longcat_segment_prompts, recipe.inputs.longcat_segments
    key = ("inputs", "longcat_segment_prompts")
    if not prompts or recipe.train is not None:
        return
    if count and count != len(prompts):
        problems.add(key, list(prompts), f"gives {len(prompts)} prompts for [inputs].longcat_segments = {count} "
                     "segments: give one prompt per segment, or remove longcat_segments (the prompts set the count)")
    empty = [i for i, text in enumerate(prompts) if not text.strip()]
    if empty:
        problems.add(key, list(prompts), f"prompt {empty[0]} is empty: give every segment its text")


def _check_image(recipe: Recipe, problems: Problems) -> None:
    """Image-to-video holds the image as the clip's first frame: not beside a video to continue,
    and with frames after it."""
    if recipe.inputs.image is None or recipe.train is not None:
        return
    if recipe.inputs.longcat_video is not None:
        problems.add(("inputs", "image"), recipe.inputs.image, "LongCat-Video continues a video or starts from "
                     "an image, not both: remove [inputs].image or [inputs].longcat_video")
    elif recipe.video.frames < 5 and not problems.is_bad(("video", "frames")):
        problems.add(("video", "frames"), recipe.video.frames, "leaves no frame to generate after the image "
                     "(the clip's first frame): use at least 5")


def _check_cond_latents(recipe: Recipe, problems: Problems) -> None:
    """The posterior setting is read where frames are encoded and held clean (a video to continue,
    an image, a long video's segments, the refinement), and a training stage encodes the mean."""
    value, inputs = recipe.inputs.longcat_cond_latents, recipe.inputs
    key = ("inputs", "longcat_cond_latents")
    if value is None or problems.is_bad(key):
        return
    if recipe.train is not None:
        if value == "sample":
            problems.add(key, value, "a training stage encodes its samples' conditioning frames to the posterior "
                         'mean, as DiffSynth\'s trainer does: use "mean" or remove it')
        return
    held = inputs.longcat_video is not None or inputs.image is not None or _segments(recipe) or inputs.longcat_refine
    if not held:
        problems.add(key, value, "is read only where frames are encoded and held clean: set [inputs].longcat_video, "
                     "[inputs].image, [inputs].longcat_segments or [inputs].longcat_refine, or remove it")


def _check_append(recipe: Recipe, problems: Problems) -> None:
    """The input video is put before the new frames only where there is one, in a generation."""
    if not recipe.inputs.longcat_append_to_input:
        return
    key = ("inputs", "longcat_append_to_input")
    if recipe.train is not None:
        problems.add(key, True, "writes a generated video, which a training stage does not make: remove it")
    elif recipe.inputs.longcat_video is None:
        problems.add(key, True, "puts the video a continuation continues before its new frames, and there is "
                     "none: set [inputs].longcat_video, or remove it")


def _check_borrowed(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """LongCat's solver, its conditioning settings and its refinement's sparse attention are refused in
    other families' recipes."""
    solver = recipe.sampler.solver
    if solver in AUTHORS_SOLVERS and not problems.is_bad(("sampler", "solver")):
        problems.add(("sampler", "solver"), solver, f"LongCat-Video's sampler runs the longcat-video family only; "
                     f"{family.name} samples with " + (", ".join(s for s in family.solvers if s not in AUTHORS_SOLVERS)
                                                       or "euler, unipc or dpm++"))
    defaults = Inputs()
    for name in ("longcat_cond_frames", "longcat_cond_latents", "longcat_append_to_input", "longcat_resolution",
                 "longcat_segments", "longcat_segment_prompts", "longcat_refine",
                 *REFINE_SETTINGS):
        if getattr(recipe.inputs, name) != getattr(defaults, name):
            value = getattr(recipe.inputs, name)
            problems.add(("inputs", name), list(value) if isinstance(value, tuple) else value,
                         f"is read by longcat-video only, not {family.name}: remove it")
    if recipe.runtime.sparse_attention != Runtime().sparse_attention:
        problems.add(("runtime", "sparse_attention"), recipe.runtime.sparse_attention, "chooses how "
                     f"longcat-video's 720p refinement computes its block-sparse attention; {family.name} attends "
                     "densely: remove it")
