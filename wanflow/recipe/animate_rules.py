"""What a Wan2.2-Animate recipe must be, and which of its settings other families refuse.

The mode decides the inputs: replacement reads a background video and a mask video (and applies
the relighting LoRA unless ``relighting_lora = false``); animation reads neither, so giving them
is refused rather than ignored. The clip loop reads its own settings and none of a step cache,
sliding windows or a training stage, which are refused naming the key. The videos themselves
(frame counts, sizes, a binary mask) are checked when the files are opened
(``wanflow.steps.animate_checks``).
"""

from __future__ import annotations

from wanflow.families.animate import MODES, OVERLAPS, PIPELINE, REPLACEMENT_INPUTS
from wanflow.families.spec import FamilySpec
from wanflow.recipe.problems import Problems
from wanflow.recipe.schema import Recipe

#: Animate's settings under [inputs] that are not files (files are refused by _check_inputs).
SETTINGS = ("animate_mode", "overlap_frames", "relighting_lora")


def check_animate(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Refuse Animate settings on other families, and what an Animate recipe cannot honour."""
    inputs = recipe.inputs
    if family.pipeline != PIPELINE:
        for name in SETTINGS:
            if getattr(inputs, name) is not None and name not in family.accepted_inputs:
                problems.add(("inputs", name), getattr(inputs, name), f"{family.name} does not take this "
                             "setting (it is Wan2.2-Animate's); remove it or choose wan2.2-animate-14b")
        return
    mode = inputs.animate_mode
    if mode not in MODES:
        problems.add(("inputs", "animate_mode"), mode, 'choose "animation" (the character moves as the pose '
                     'video does) or "replacement" (it takes the masked person\'s place in the background video)')
        return
    if inputs.overlap_frames not in OVERLAPS:
        problems.add(("inputs", "overlap_frames"), inputs.overlap_frames, "must be 1 or 5: the frames each clip "
                     "after the first takes from the one before (the official refert_num allows only these)")
    if mode == "replacement":
        for name in REPLACEMENT_INPUTS:
            if getattr(inputs, name) is None:
                problems.add(("inputs", name), None, f'is required by animate_mode = "replacement": add {name} '
                             f'= "path" ({_WHAT[name]}), or use animate_mode = "animation"', show_value=False)
    else:
        for name in (*REPLACEMENT_INPUTS, "relighting_lora"):
            if getattr(inputs, name) is not None:
                problems.add(("inputs", name), getattr(inputs, name), 'is read only by animate_mode = '
                             '"replacement"; remove it, or set animate_mode = "replacement"')
    _check_sampler(recipe, problems)
    if recipe.train is not None:
        problems.add(("model",), family.name, "cannot be trained with [train] yet: the training stage does not "
                     "build its inputs (reference image, pose and face videos, the clip's condition); remove "
                     "[train] to generate, or train a base family")


_WHAT = {"background_video": "the driving video with its person removed",
         "mask": "a black-and-white video, white on the person to replace"}


def _check_sampler(recipe: Recipe, problems: Problems) -> None:
    if recipe.memory.fp8:
        problems.add(("memory", "fp8"), True, "the Animate DiT's loader loads it whole in the compute dtype "
                     "(fp8 storage is not built for its parts); set fp8 = false")
    s = recipe.sampler
    if s.cache.method != "none":
        problems.add(("sampler", "cache", "method"), s.cache.method, "the Animate clip loop takes no step "
                     'cache yet; use "none"')
    if s.sliding_window_size is not None:
        problems.add(("sampler", "sliding_window_size"), s.sliding_window_size, "Animate runs long videos as "
                     "clips (the reference, pose and face are aligned with each clip's first frame); remove it")
