"""Where a misplaced or foreign key belongs: "did you mean" for unknown keys.

Most people arrive from DiffSynth-Studio, whose ``WanVideoPipeline`` takes one flat list of
keyword arguments (``cfg_scale``, ``num_inference_steps``, ``tiled``…). A recipe that uses those
names, at the top level or in any table, is told the wanflow key that means the same thing. A
wanflow key written in the wrong table (``[sampler].width``) is told its table.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from wanflow.recipe.problems import KeyPath, format_key
from wanflow.recipe.reasons import schema_keys

#: DiffSynth-Studio name (WanVideoPipeline.__call__, from_pretrained, save_video, the training
#: script) -> the wanflow key with the same meaning, and a note where units or spelling differ.
DIFFSYNTH_NAMES: dict[str, tuple[str, str]] = {
    "prompt": ("prompt.text", ""),
    "negative_prompt": ("prompt.negative", ""),
    "input_image": ("inputs.image", "a file path"),
    "end_image": ("inputs.end_image", "a file path"),
    "input_video": ("inputs.video", "a file path"),
    "denoising_strength": ("sampler.denoising_strength", ""),
    "input_audio": ("inputs.audio", "a file path"),
    "s2v_pose_video": ("inputs.pose_video", "a file path"),
    "animate_pose_video": ("inputs.pose_video", "a file path"),
    "animate_face_video": ("inputs.face_video", "a file path"),
    "animate_mask_video": ("inputs.mask", "a file path"),
    "animate_inpaint_video": ("inputs.background_video", "a file path"),
    "control_video": ("inputs.control_video", "a file path"),
    "reference_image": ("inputs.reference_image", "a file path"),
    "camera_control_direction": ("inputs.camera.direction", ""),
    "camera_control_speed": ("inputs.camera.speed", ""),
    "vace_video": ("inputs.vace.video", "a file path"),
    "vace_video_mask": ("inputs.vace.mask", "a file path"),
    "vace_reference_image": ("inputs.vace.reference", "a file path"),
    "vace_scale": ("inputs.vace.scale", ""),
    "motion_bucket_id": ("inputs.motion_bucket", ""),
    "seed": ("sampler.seed", ""),
    "rand_device": ("sampler.noise_device", ""),
    "height": ("video.height", ""),
    "width": ("video.width", ""),
    "num_frames": ("video.frames", ""),
    "fps": ("video.fps", ""),
    "cfg_scale": ("sampler.cfg", ""),
    "switch_DiT_boundary": ("sampler.boundary", ""),
    "num_inference_steps": ("sampler.steps", ""),
    "sigma_shift": ("sampler.shift", ""),
    "tiled": ("vae.tiled", ""),
    "tile_size": ("vae.tile_size", "(height, width) in latent units, as DiffSynth's"),
    "tile_stride": ("vae.tile_stride", "(height, width) in latent units, as DiffSynth's"),
    "tea_cache_l1_thresh": ("sampler.cache.threshold", 'with method = "teacache"'),
    "tea_cache_model_id": ("sampler.cache.coefficients", "a published set's name, or \"auto\""),
    "torch_dtype": ("runtime.dtype", '"bf16", "fp16" or "fp32"'),
    "device": ("runtime.device", ""),
    "vram_limit": ("memory.limit_gb", "in GB"),
    "quality": ("output.quality", "the x264 CRF, 0–51, lower is better; not imageio's 0–10"),
    "learning_rate": ("train.learning_rate", ""),
    "lora_rank": ("train.lora_rank", ""),
    "lora_target_modules": ("train.lora_targets", "an array of names"),
    "gradient_accumulation_steps": ("train.gradient_accumulation", ""),
    "dataset_metadata_path": ("train.dataset", ""),
    "save_steps": ("train.checkpoint_every", ""),
    "use_gradient_checkpointing": ("train.gradient_checkpointing", ""),
    "max_timestep_boundary": ("train.timestep_range", "[min, max]"),
    "min_timestep_boundary": ("train.timestep_range", "[min, max]"),
}

def key_label(dotted: str) -> str:
    """``sampler.cfg`` -> ``[sampler].cfg``; a top-level key stays bare."""
    return format_key(tuple(dotted.split(".")))


def unknown_key_hint(path: KeyPath, local: Iterable[str]) -> str:
    """The "did you mean" of an unknown key at ``path`` whose table has the fields ``local``.

    A DiffSynth name first (an exact, known meaning), then a wanflow key of the same name in
    another table, then a close spelling among the table's own fields.
    """
    key = str(path[-1])
    if key in DIFFSYNTH_NAMES:
        target, note = DIFFSYNTH_NAMES[key]
        why = "it belongs in another table" if target.endswith("." + key) else f"DiffSynth's {key}"
        return f"; did you mean {key_label(target)}? ({why}" + (f"; {note})" if note else ")")
    elsewhere = [k for k in schema_keys() if k.rsplit(".", 1)[-1] == key
                 and tuple(k.split(".")) != tuple(map(str, path))]
    if elsewhere:
        elsewhere.sort(key=lambda k: k.startswith("train."))  # generation keys before training ones
        return "; did you mean " + " or ".join(key_label(k) for k in elsewhere[:2]) + "? (it belongs in another table)"
    close = difflib.get_close_matches(key, [str(c) for c in local], n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def dotted_hint(dotted: str, known: Iterable[str]) -> str:
    """The "did you mean" of an unknown dotted key (``[sweep]``): DiffSynth names, then spelling."""
    last = dotted.rsplit(".", 1)[-1]
    if last in DIFFSYNTH_NAMES:
        return f'; did you mean "{DIFFSYNTH_NAMES[last][0]}"? (DiffSynth\'s {last})'
    close = difflib.get_close_matches(dotted, list(known), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""
