"""What a speech-to-video recipe (Wan2.2-S2V-14B) must be, checked before any file is read.

The clip loop (docs/s2v.md) reads the steps, shift, solver, seed, noise device, guidance and
CFG-Zero* of ``[sampler]``; a setting it would not read is refused, naming the key, instead of
changing the step's key and not the video. The motion tokens' coarsest patches need the latent
size in multiples of 8 (the video in multiples of 64 pixels); the speech encoder takes 16 kHz
audio only; the video carries the recording as an mp4 audio track. ``start_from_ref`` ends the
release's zero motion context with the reference image, so it is refused beside a motion video,
which replaces that context; it and ``num_clip`` are refused on other families. A ``[train]``
recipe trains one clip per sample from dataset columns (``wanflow.steps.train_s2v``): the
recipe-wide inputs it would not read are refused here. A generation stores the DiT's blocks in fp8
under ``[memory].fp8``, compiles them under ``[runtime].compile`` and streams them under every
memory policy.
The files themselves (audio, pose, motion video) are checked in ``wanflow.steps.s2v_checks``.
"""

from __future__ import annotations

from wanflow.families.s2v import PIPELINE
from wanflow.families.spec import FamilySpec
from wanflow.recipe.problems import Problems, refuse_changed
from wanflow.recipe.schema import Recipe, Sampler

#: The rate wav2vec2 was trained on; its feature extractor refuses any other.
SPEECH_RATE = 16000
#: Video sizes must be multiples of this: the motion tokens' (4, 8, 8) patches on the latent grid.
SIZE_MULTIPLE = 64

#: [sampler] keys the clip loop does not read, with why and the fix.
_UNREAD = {
    "cfg_merge": "the clip loop runs the prompt and negative passes apart (each with its own audio); remove it",
    "slg_blocks": "skip-layer guidance is not built for the S2V DiT's audio-injected stack; remove it",
    "sliding_window_size": "the clip loop already goes clip by clip; set the clip length with [video].frames",
    "sliding_window_stride": "the clip loop already goes clip by clip; set the clip length with [video].frames",
    "strength_schedule": "speech-to-video starts every clip from noise; remove it",
    "cfg_high_noise": "an A14B setting; the S2V model is one DiT: use [sampler].cfg",
}


#: S2V's settings under [inputs] that are not files (files are refused by validate's _check_inputs).
SETTINGS = ("start_from_ref", "num_clip")


def check_s2v(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Refuse what the speech-to-video pipeline cannot honour, and its settings on other families."""
    if family.pipeline != PIPELINE:
        for name in SETTINGS:
            if getattr(recipe.inputs, name) is not None and name not in family.accepted_inputs:
                problems.add(("inputs", name), getattr(recipe.inputs, name), f"{family.name} does not take this "
                             "setting (it is Wan2.2-S2V's); remove it or choose wan2.2-s2v-14b")
        return
    for key in ("width", "height"):
        value = getattr(recipe.video, key)
        if value % SIZE_MULTIPLE and not problems.is_bad(("video", key)):
            lo = max(SIZE_MULTIPLE, value - value % SIZE_MULTIPLE)
            problems.add(("video", key), value, f"must be a multiple of {SIZE_MULTIPLE} for speech-to-video (its "
                         f"motion tokens patch the latent grid by 8): use {lo} or {lo + SIZE_MULTIPLE}")
    rate = recipe.inputs.audio_sample_rate
    if rate is not None and rate != SPEECH_RATE:
        problems.add(("inputs", "audio_sample_rate"), rate, f"the speech encoder (wav2vec2) takes {SPEECH_RATE} Hz "
                     f"audio only, the rate it was trained on; set it to {SPEECH_RATE} (any file is resampled to it)")
    _check_sampler(recipe, problems)
    if recipe.train is not None:
        _check_train(recipe, problems)
    elif recipe.inputs.start_from_ref and recipe.inputs.motion_video is not None:
        problems.add(("inputs", "start_from_ref"), True, "puts the reference image at the end of the 73 zero "
                     "frames before the video, and [inputs].motion_video gives those 73 frames itself; remove "
                     "one (to start from the reference, end the motion video with it instead)")
    if recipe.output.format != "mp4":
        problems.add(("output", "format"), recipe.output.format, "speech-to-video's video carries the recording "
                     "as its audio track, which only the mp4 saver writes; use \"mp4\"")


def _check_train(recipe: Recipe, problems: Problems) -> None:
    """What S2V training does not take: a motion context (DiffSynth trains every sample as a first
    clip, its motion tokens dropped), precomputed speech features (each sample's input_audio is
    encoded), and the direct-distill objective (not built for the S2V DiT's reference frame)."""
    if recipe.inputs.motion_video is not None:
        problems.add(("inputs", "motion_video"), recipe.inputs.motion_video, "is not read by training: every "
                     "sample trains as a first clip, without motion context (as DiffSynth trains S2V); remove it")
    if recipe.inputs.audio_embeds is not None:
        problems.add(("inputs", "audio_embeds"), recipe.inputs.audio_embeds, "is not read by training: each "
                     "sample's speech is encoded from the dataset's input_audio column; remove it")
    for name in SETTINGS:
        if getattr(recipe.inputs, name) not in (None, False):
            problems.add(("inputs", name), getattr(recipe.inputs, name), "is not read by training: every sample "
                         "trains one clip, a first clip without motion context; remove it")
    if recipe.train.task != "sft":
        problems.add(("train", "task"), recipe.train.task, "direct_distill is not built for speech-to-video "
                     '(its DiT reads latent frame 0 as the reference); use task = "sft"')


def _check_sampler(recipe: Recipe, problems: Problems) -> None:
    s, defaults = recipe.sampler, Sampler()
    refuse_changed(problems, ("sampler",), s, defaults, _UNREAD)
    if s.denoising_strength != 1.0 and not problems.is_bad(("sampler", "denoising_strength")):
        problems.add(("sampler", "denoising_strength"), s.denoising_strength, "speech-to-video starts every "
                     "clip from noise (there is no source video to keep); use 1.0")
    if s.cache.method != "none":
        problems.add(("sampler", "cache", "method"), s.cache.method, "a step cache is not calibrated for the S2V "
                     "DiT and its clip loop; use \"none\"")
