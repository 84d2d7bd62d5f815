"""Checks of a ``[train]`` table that need only the recipe and its family (no files, no packages).

What needs the dataset, the DiT's weights or an installed engine is checked by the pipeline
(``wanflow.steps.train_checks``), also before any model loads. Every problem names the key,
the value and the fix, and all of them are reported together with the rest of the recipe's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from wanflow.families.krea import CAUSAL_SOLVER
from wanflow.families.spec import FamilySpec
from wanflow.recipe.problems import Problems, did_you_mean
from wanflow.recipe.schema import Recipe, Train

#: ``[train]`` settings that name files or folders, resolved against the recipe's folder.
TRAIN_PATHS = ("dataset", "base_path", "lora_init", "preset_lora")
#: Those that may (dataset) or must (base_path) name a folder.
TRAIN_FOLDERS = ("dataset", "base_path")
#: Float settings that must be finite (TOML allows inf and nan; the range checks let inf through).
_FINITE = ("learning_rate", "weight_decay", "max_grad_norm", "lora_alpha", "shift", "preset_lora_scale")


def check_train(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Every recipe-only problem of ``[train]``; problems are collected, nothing raised."""
    t = recipe.train
    if not t.dataset.strip():
        _add(problems, "dataset", t.dataset, "is empty; name the metadata file (.csv, .json or .jsonl) or a "
             "folder of media with .txt captions")
    _check_conditioning(recipe, family, problems)
    _check_sizes(t, family, problems)
    _check_components(t, family, problems, recipe.models)
    _check_method(recipe, problems)
    _check_schedule(t, problems)
    _check_validation(t, problems)
    _check_runtime(t, problems)
    if recipe.memory.policy in ("stream", "disk"):
        _check_streaming(recipe, family, problems)
    for name in _FINITE:
        if not math.isfinite(getattr(t, name)) and not problems.is_bad(("train", name)):
            _add(problems, name, getattr(t, name), "must be a finite number")


#: DiT architectures (prefixes of the family's name for its DiT) whose frozen blocks do not stream
#: while training yet (LongCat-Video's, Animate's and S2V's stream as a Wan DiT's, their side
#: modules resident).
UNSTREAMED_ARCHITECTURES = ("video-as-prompt",)


def _check_streaming(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """``[memory].policy`` "stream" or "disk" in a training recipe: the frozen base of a LoRA over a
    Wan DiT or a streamed variant streams its blocks (``wanflow.memory.train_placement``); everything
    else is refused, naming why and the fix. ``auto`` streams only where it can, so it is never refused here."""
    t, policy = recipe.train, recipe.memory.policy
    dits = [c.architecture for c in family.components.values() if c.kind == "dit"]
    why = []
    if t.method == "full":
        why.append("full fine-tuning trains every weight of the DiT, which stays resident (its weights, their "
                   'gradients and moments change every step); train a LoRA (method = "lora") to stream its frozen '
                   'base, or use policy "auto" or "none"')
    if not t.gradient_checkpointing:
        why.append("streaming frozen blocks while training needs [train].gradient_checkpointing = true (without "
                   "it autograd keeps every block's weights on the device until backward); set it to true")
    if t.distribution != "none":
        why.append(f'[train].distribution = "{t.distribution}" starts from every process\'s whole model (DDP '
                   "syncs it, FSDP and DeepSpeed shard it) and a streamed block holds placeholders; train in one "
                   'process (distribution = "none"), or use policy "auto" or "none"')
    if recipe.runtime.compile != "none":
        why.append(f'[runtime].compile = "{recipe.runtime.compile}" with the frozen base\'s blocks streamed while '
                   'training is not built yet; set compile = "none", or policy "none"')
    parts = [c for c in t.components if c in family.trainable_parts]
    if parts:
        why.append(f"{parts[0]} trains alone beside the frozen DiT, which then stays resident; use policy \"auto\" "
                   'or "none"')
    if any(a.startswith(UNSTREAMED_ARCHITECTURES) for a in dits):
        why.append(f"{family.name}'s DiT ({dits[0]}) does not stream its blocks while training yet (a LoRA over a "
                   'Wan, LongCat-Video, Animate or S2V DiT does); use policy "auto" or "none"')
    if t.preset_lora:
        why.append("[train].preset_lora is merged into the base's weights where each lives: a streamed block "
                   "waits in host memory (where the merge rounds otherwise than on the device) or is read "
                   'unmerged from the checkpoint (disk); use policy "auto" or "none" (the base stays resident)')
    for text in why:
        problems.add(("memory", "policy"), policy, text)


#: Conditioner kinds the training stage builds from dataset columns: the base encodes (text, the
#: I2V/FLF2V channels, CLIP tokens, TI2V's clean first frame) and, for the derivative families,
#: every kind through its inference step (``wanflow.steps.train_conditioning``; speech-to-video's
#: one clip per sample through ``wanflow.steps.train_s2v``). A kind not
#: listed here has no dataset column yet, and its family is refused.
TRAINABLE_CONDITIONING = frozenset({
    "clip-tokens", "image-channels", "first-frame-latent", "source-latent", "start-latent",
    "control-latents", "reference-latent", "vace-context", "camera-plucker", "motion-bucket",
    "animate-reference", "animate-pose", "animate-face", "animate-background", "animate-mask",
    "vap-video", "vap-prompt", "vap-negative-prompt", "s2v-audio", "s2v-reference", "s2v-pose", "s2v-motion",
    "longcat-frames"})
#: The base encodes' kinds, with their default options; anything else conditions through the
#: family's declared conditioners, whose validation videos are not built.
BASE_CONDITIONING = frozenset({"clip-tokens", "image-channels", "first-frame-latent", "source-latent"})
#: DiT architectures whose own sampler is not the flow-matching one the training objective
#: assumes: Krea Realtime is a block-causal few-step generator its authors distilled with
#: Self-Forcing (DMD), which the training stage does not do. DiffSynth fine-tunes its weights as a
#: plain Wan T2V DiT (full-sequence, bidirectional flow matching) and samples them that way; a
#: recipe that samples it that way too (``[sampler].solver = "euler"``) trains as DiffSynth does.
CAUSAL_ARCHITECTURES = ("krea",)


def conditioned_per_sample(family: FamilySpec) -> bool:
    """Whether the family's DiT reads conditioning of its own kinds (a derivative family): each
    training sample brings it from its dataset columns, and validation videos, sampled from a
    prompt alone, are refused for it."""
    return any(c.kind not in BASE_CONDITIONING or c.options for c in family.conditioners)


def _check_conditioning(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """A family whose DiT reads conditioning the training stage cannot build from dataset columns,
    or whose sampler is a causal distilled one, is refused: its samples would reach the DiT
    without those inputs, or train another model than the one it is. Validation videos of a
    derivative family are refused too: they would be sampled without its conditioning."""
    if problems.is_bad(("model",)):
        return  # the family is refused already (one that the training stage cannot train at all)
    causal = [c.architecture for c in family.components.values()
              if c.kind == "dit" and c.architecture.startswith(CAUSAL_ARCHITECTURES)]
    if causal and recipe.sampler.solver == CAUSAL_SOLVER:
        problems.add(("sampler", "solver"), recipe.sampler.solver, f"{family.name} cannot be trained for its "
                     f"block-causal sampler: its DiT ({causal[0]}) was distilled with Self-Forcing (DMD), which "
                     "the training stage does not do; its flow-matching objective trains the full-sequence "
                     'bidirectional model DiffSynth fine-tunes and samples: set solver = "euler" to train it '
                     "that way")
        return
    other = sorted({c.kind for c in family.conditioners if c.kind not in TRAINABLE_CONDITIONING})
    if other:
        problems.add(("model",), family.name, f"cannot be trained with [train] yet: its DiT reads "
                     f"{', '.join(other)}, which the training stage does not build from dataset columns; train a "
                     "base family (wan2.1-t2v-1.3b, wan2.1-i2v-14b-480p, wan2.2-ti2v-5b, …) instead")
        return
    if recipe.train.method == "lora" and any(c.kind == "vap-video" for c in family.conditioners):
        _check_vap_lora_targets(recipe.train, problems)
    declared = conditioned_per_sample(family)
    if declared:
        _check_sample_inputs(recipe, family, problems)
    if declared and recipe.train.validation_prompts:
        _add(problems, "validation_prompts", recipe.train.validation_prompts, f"{family.name} is conditioned "
             "by per-sample inputs (its dataset columns), and validation videos are sampled from a prompt "
             "alone; use validation_samples for a held-out loss, and a generation recipe with the exported "
             "weights and the inputs to see videos")


#: ``[inputs]`` keys of a generation and the dataset column that gives each to a training sample.
SAMPLE_COLUMNS = {"image": "input_image", "end_image": "end_image", "control_video": "control_video",
                  "reference_image": "reference_image", "camera": "camera_control_direction (or camera_pose_file)",
                  "motion_bucket": "motion_bucket_id", "vap_video": "vap_video", "vap_prompt": "vap_prompt",
                  "audio": "input_audio", "s2v_pose_video": "s2v_pose_video", "longcat_video": "longcat_video"}
VACE_COLUMNS = {"video": "vace_video", "mask": "vace_video_mask", "reference": "vace_reference_image"}


def _check_sample_inputs(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """``[inputs]`` a derivative family's training would not read: each sample takes its own
    columns (``[inputs.vace]``'s scale, binarize_mask and reference_resize apply to every sample)."""
    inputs = recipe.inputs
    given = [(("inputs", name), getattr(inputs, name), column) for name, column in SAMPLE_COLUMNS.items()
             if getattr(inputs, name) is not None]
    if inputs.vace is not None:
        given += [(("inputs", "vace", name), getattr(inputs.vace, name), column) for name, column in VACE_COLUMNS.items()
                  if getattr(inputs.vace, name) is not None]
    for path, value, column in given:
        shown = value if isinstance(value, (str, int, float)) else "(a table)"
        problems.add(path, shown, f"is not read by training: each sample takes its own from the dataset's "
                     f"{column} column; move it into the dataset, or remove it")
    negative = inputs.negative_vap_prompt  # the family's default caption is no one's setting
    if negative is not None and negative != family.defaults.get("inputs.negative_vap_prompt"):
        problems.add(("inputs", "negative_vap_prompt"), inputs.negative_vap_prompt, "is not read by training: "
                     "only guidance's unconditional pass reads the negative reference caption, and the training "
                     "objective runs none; remove it")


def dit_roles(family: FamilySpec) -> tuple[str, ...]:
    """The family's DiTs: its two experts on A14B, else ``dit``."""
    return tuple(family.experts) or tuple(c for c in ("dit",) if c in family.components)


def _add(problems: Problems, key: str, value: object, message: str) -> None:
    problems.add(("train", key), list(value) if isinstance(value, tuple) else value, message)


def _check_sizes(t: Train, family: FamilySpec, problems: Problems) -> None:
    """Clip sizes: what ``wanflow.train.Sizing`` would refuse, named by their ``[train]`` keys."""
    f = family.spatial_factor
    if bool(t.width) != bool(t.height):
        key, value = ("width", t.width) if not t.width else ("height", t.height)
        _add(problems, key, value, "set both width and height for a fixed size, or neither (0) for dynamic "
             "resolution under max_pixels")
    for key in ("width", "height"):
        v = getattr(t, key)
        if v % f and not problems.is_bad(("train", key)):
            lo = max(f, v - v % f)
            _add(problems, key, v, f"must be a multiple of {f} for {family.name} (VAE stride × patch size): "
                 f"use {lo} or {lo + f}")
    if t.width and t.aspect_ratios:
        _add(problems, "aspect_ratios", t.aspect_ratios, "only applies to dynamic resolution; with a fixed "
             "width and height every clip is cropped to that size: remove one of them")
    if t.max_pixels < f * f and not problems.is_bad(("train", "max_pixels")):
        _add(problems, "max_pixels", t.max_pixels, f"is smaller than one {f}×{f} tile; use at least {f * f}")
    bad = [a for a in t.aspect_ratios if not (a > 0 and math.isfinite(a))]
    if bad:
        _add(problems, "aspect_ratios", t.aspect_ratios, "each must be a positive width/height ratio, "
             "e.g. 1.777 for 16:9")
    if (t.frames - 1) % 4 and not problems.is_bad(("train", "frames")):
        lo = t.frames - (t.frames - 1) % 4
        _add(problems, "frames", t.frames, f"must be 4n+1 ({lo} or {lo + 4}): the causal VAE encodes the "
             "first frame alone and then groups of 4")
    wrong = [n for n in t.frame_buckets if n < 1 or (n - 1) % 4 or n > t.frames]
    if wrong:
        _add(problems, "frame_buckets", t.frame_buckets, f"{', '.join(map(str, wrong))}: each bucket must be "
             f"4n+1 and at most [train].frames ({t.frames})")


def _check_vap_lora_targets(t: Train, problems: Problems) -> None:
    """A LoRA of Video-As-Prompt trains the main stream; targets on the reference stream are refused."""
    # wanflow names the stream's modules mot.*, the release its layers *_mot_ref
    bad = [target for target in t.lora_targets if target.split(".")[0] == "mot" or "_mot_ref" in target]
    if bad:
        _add(problems, "lora_targets", list(t.lora_targets), f"{', '.join(bad)} name the Video-As-Prompt "
             "reference stream, which a LoRA does not train: neither the authors (their MoT training trains "
             "the reference stream whole) nor DiffSynth's Video-As-Prompt scripts (a LoRA on dit) train a "
             "LoRA there, so no tool reads one back. Train the reference stream with method = \"full\", or "
             "target the main stream's layers (q, k, v, o, ffn.0, ffn.2)")


def _check_components(t: Train, family: FamilySpec, problems: Problems,
                      models: Mapping[str, Any] | None = None) -> None:
    """What is trained: components the family has, each once, and DiTs (on A14B both experts, or
    one alone, on its side of the boundary, as DiffSynth and diffusion-pipe train one expert per
    run), or one of the family's ``trainable_parts`` alone under full fine-tuning (the DiT frozen)."""
    dits = dit_roles(family)
    seen: set[str] = set()
    for name in t.components:
        if name in seen:
            _add(problems, "components", t.components, f"names {name!r} twice; list each component once")
        seen.add(name)
        if name in family.trainable_parts:
            _check_part(t, name, problems, (models or {}).get(name))
        elif name not in family.components:
            hint = (f"; its DiTs are {' and '.join(dits)}" if name == "dit" and family.experts
                    else did_you_mean(name, family.components))
            _add(problems, "components", t.components, f"{family.name} has no component {name!r} (its "
                 f"components: {', '.join(sorted(family.components))}){hint}")
        elif name not in dits:
            what = "a LoRA is trained on a DiT" if t.method == "lora" else "full fine-tuning trains DiTs"
            _add(problems, "components", t.components, f"{name!r} cannot be trained: {what}, and the encoders "
                 f"run once per sample as cached steps; use {' and/or '.join(map(repr, dits))}")
    chosen = [name for name in t.components if name in dits]
    if family.experts and len(set(chosen)) == 1 and t.validation_prompts:
        # one expert alone trains on its side of the boundary: a video needs both experts' steps
        _add(problems, "validation_prompts", t.validation_prompts, f"a video of {family.name} is denoised by "
             f"both experts, and this run trains {chosen[0]!r} alone; use validation_samples for a held-out "
             "loss on its side of the boundary, and a generation recipe with both experts' files to see videos "
             f"(or train both experts: components = {list(dits)})")


def _check_part(t: Train, name: str, problems: Problems, override: Any = None) -> None:
    """A part trained alone (speed control's motion controller): by full fine-tuning, in a run of
    its own, as its authors train it (DiffSynth's ``--trainable_models motion_controller``); it
    trains in fp32 on the run's device, so a ``[models.<part>]`` dtype or device saying otherwise
    would be ignored: refused."""
    if override is not None and override.dtype not in ("auto", "fp32"):
        problems.add(("models", name, "dtype"), override.dtype, f"{name!r} trains in fp32 (full fine-tuning's "
                     "master weights; the export takes its base file's dtype); remove it, or set \"fp32\"")
    if override is not None and override.device != "auto":
        problems.add(("models", name, "device"), override.device, f"{name!r} trains on the run's device, beside "
                     "the DiT it drives; remove it")
    if t.method == "lora":
        _add(problems, "components", t.components, f"{name!r} is trained whole, not by a LoRA (a LoRA adapts a "
             f"DiT's layers, and {name!r} is a small network of its own, which DiffSynth trains fully); "
             'use method = "full"')
    elif len(t.components) > 1:
        _add(problems, "components", t.components, f"{name!r} trains alone, every other component frozen (as "
             f'DiffSynth trains it); use components = ["{name}"], and train a DiT in a run of its own')


def _check_method(recipe: Recipe, problems: Problems) -> None:
    """LoRA settings that LoRA training needs, and ones that would be ignored."""
    t = recipe.train
    if t.caption_dropout > 0 and t.task == "direct_distill" and not problems.is_bad(("train", "caption_dropout")):
        _add(problems, "caption_dropout", t.caption_dropout, "direct_distill trains on the teacher's videos of "
             "their own prompts and never reads the empty prompt; remove it, or use task = \"sft\"")
    if t.preset_lora_scale != 1.0 and not t.preset_lora:
        _add(problems, "preset_lora_scale", t.preset_lora_scale, "has no preset LoRA to scale; set "
             "preset_lora, or remove preset_lora_scale")
    if t.lora_init and t.lora_init == t.preset_lora:
        _add(problems, "preset_lora", t.preset_lora, "is also lora_init: the base would already hold the "
             "LoRA being continued; keep one of them")
    if t.method == "lora":
        if not t.lora_targets:
            _add(problems, "lora_targets", t.lora_targets, "is empty, so the LoRA would change nothing; name "
                 'the modules, e.g. ["q", "k", "v", "o", "ffn.0", "ffn.2"] (DiffSynth\'s)')
        elif any(not name.strip() for name in t.lora_targets):
            _add(problems, "lora_targets", t.lora_targets, "holds an empty name; remove it")
        return
    if t.lora_init:
        _add(problems, "lora_init", t.lora_init, 'continues a LoRA, but method = "full" trains the weights '
             'themselves; use method = "lora", or remove lora_init')
    if t.export_dialect != "diffsynth":
        _add(problems, "export_dialect", t.export_dialect, 'names a LoRA dialect, but method = "full" writes '
             "DiT weights with the official key names; remove it")
    if recipe.memory.fp8:
        problems.add(("memory", "fp8"), True, 'stores frozen weights in fp8, but [train].method = "full" '
                     'trains the DiT itself; set fp8 = false, or train a LoRA (method = "lora")')


def _check_schedule(t: Train, problems: Problems) -> None:
    """The timestep range and the learning-rate warm-up."""
    low, high = t.timestep_range
    if low >= high and not problems.is_bad(("train", "timestep_range")):
        _add(problems, "timestep_range", t.timestep_range, "must be [min, max] with min < max, as fractions "
             "of the schedule in [0, 1] (e.g. [0, 0.417] for T2V-A14B's high-noise expert)")
    if t.warmup_steps >= t.steps:
        _add(problems, "warmup_steps", t.warmup_steps, f"is not below [train].steps ({t.steps}), so the "
             f"learning rate would never finish warming up; use fewer than {t.steps}")


def _check_validation(t: Train, problems: Problems) -> None:
    """Validation cadence and prompts."""
    if t.validate_every > t.steps:
        _add(problems, "validate_every", t.validate_every, f"is more than [train].steps ({t.steps}), so "
             f"it would never validate during training; use at most {t.steps}, or 0 (once, at the end)")
    elif t.validate_every and not (t.validation_prompts or t.validation_samples):
        _add(problems, "validate_every", t.validate_every, "has nothing to validate; add validation_prompts "
             "(sample videos) or validation_samples (a held-out loss), or remove it")
    if any(not p.strip() for p in t.validation_prompts):
        _add(problems, "validation_prompts", t.validation_prompts, "holds an empty prompt; write what each "
             "validation video shows, or remove the empty entry")


def _check_runtime(t: Train, problems: Problems) -> None:
    """Processes and activation offloading that only make sense with something else set."""
    if t.processes > 1 and t.distribution == "none":
        _add(problems, "processes", t.processes, 'needs a distribution to share the work; set [train].'
             'distribution = "ddp" (or "fsdp", "deepspeed-zero2", "deepspeed-zero3"), or processes = 1')
    if t.offload_activations and not t.gradient_checkpointing:
        _add(problems, "offload_activations", True, "offloads the activations that gradient checkpointing "
             "keeps, but gradient_checkpointing is false; turn it on, or offload_activations off")
