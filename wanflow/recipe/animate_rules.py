"""What a Wan2.2-Animate recipe must be, and which of its settings other families refuse.

The mode decides the inputs: replacement reads a background video and a mask video (and applies
the relighting LoRA unless ``relighting_lora = false``); animation reads neither, so giving them
is refused rather than ignored. The clip loop reads its own settings and none of a step cache,
sliding windows, which are refused naming the key; its DiT takes ``[memory].fp8`` (fp8 block
projections) and ``[runtime].compile`` in a generation. A training recipe takes its inputs from the
dataset's columns (``wanflow.steps.train_animate``); what it cannot honour is refused here. The videos themselves
(frame counts, sizes, a binary mask) are checked when the files are opened
(``wanflow.steps.animate_checks``).
"""

from __future__ import annotations

from wanflow.families.animate import (
    DEFAULTS,
    MODES,
    OVERLAPS,
    PIPELINE,
    REPLACEMENT_INPUTS,
)
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
    if recipe.train is not None:
        _check_training(recipe, problems)
        _check_sampler(recipe, problems)
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


#: [inputs] of a generation and the dataset column that gives each to a training sample.
TRAIN_COLUMNS = {"reference_image": "input_image", "pose_video": "animate_pose_video",
                 "face_video": "animate_face_video", "background_video": "animate_inpaint_video",
                 "mask": "animate_mask_video"}
#: Linear layers of the DiT's Animate parts (a LoRA target matching one is refused): DiffSynth's
#: LoRA on ``dit`` leaves its ``animate_adapter`` alone (full fine-tuning trains those parts), and
#: a LoRA's face tokens are computed once per sample.
ADAPTER_LINEARS = ("face_encoder.out_proj", *(f"face_adapter.fuser_blocks.{i}.{name}" for i in range(8)
                                              for name in ("linear1_kv", "linear1_q", "linear2")))


def _check_training(recipe: Recipe, problems: Problems) -> None:
    """What Animate's training (``wanflow.steps.train_animate``) cannot honour: [inputs] (each
    sample takes its own columns), LoRAs on the Animate parts."""
    for name, column in TRAIN_COLUMNS.items():
        value = getattr(recipe.inputs, name)
        if value is not None:
            problems.add(("inputs", name), value, f"is not read by training: each sample takes its own from the "
                         f"dataset's {column} column; move it into the dataset, or remove it")
    inputs = recipe.inputs
    if inputs.animate_mode != "animation":
        problems.add(("inputs", "animate_mode"), inputs.animate_mode, "is not read by training: each sample's "
                     "mode is its row's (a row with animate_inpaint_video and animate_mask_video trains "
                     "replacement, a row without them animation); remove it")
    if inputs.overlap_frames != DEFAULTS["inputs.overlap_frames"]:
        problems.add(("inputs", "overlap_frames"), inputs.overlap_frames, "is not read by training: a sample is "
                     "one clip, with no clip before it; remove it")
    if inputs.relighting_lora is not None:
        problems.add(("inputs", "relighting_lora"), inputs.relighting_lora, "is not read by training: it trains "
                     "the DiT without the relighting LoRA in both modes, as DiffSynth does; remove it")
    t = recipe.train
    bad = [target for target in t.lora_targets
           if any(m == target or m.endswith("." + target) for m in ADAPTER_LINEARS)]
    if t.method == "lora" and bad:
        problems.add(("train", "lora_targets"), list(t.lora_targets), f"{', '.join(bad)} match layers of the "
                     "DiT's Animate parts (face encoder, face blocks), which training keeps frozen as DiffSynth "
                     "does; target the blocks' layers (q, k, v, o, ffn.0, ffn.2)")


_WHAT = {"background_video": "the driving video with its person removed",
         "mask": "a black-and-white video, white on the person to replace"}


def _check_sampler(recipe: Recipe, problems: Problems) -> None:
    s = recipe.sampler
    if s.cache.method != "none":
        problems.add(("sampler", "cache", "method"), s.cache.method, "the Animate clip loop takes no step "
                     'cache yet; use "none"')
    if s.sliding_window_size is not None:
        problems.add(("sampler", "sliding_window_size"), s.sliding_window_size, "Animate runs long videos as "
                     "clips (the reference, pose and face are aligned with each clip's first frame); remove it")
