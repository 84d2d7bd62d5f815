"""Checks that need more than one value, the family, or the file system.

Type, range and unknown-key checks happen while structuring (``structure.py``); what is left
here is what a user would otherwise discover minutes into a run: frame counts, sizes, tiles,
input files, inputs the family does not take, components it does not have.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from wanflow import SCHEMA_VERSION
from wanflow.families.spec import FamilyLookup, FamilySpec
from wanflow.recipe.animate_rules import check_animate
from wanflow.recipe.causal_rules import check_causal
from wanflow.recipe.longcat_rules import check_longcat
from wanflow.recipe.problems import Problems, did_you_mean, refuse_changed
from wanflow.recipe.s2v_rules import check_s2v
from wanflow.recipe.schema import FILE_INPUTS, TEXT_INPUTS, Recipe
from wanflow.recipe.train_rules import TRAIN_FOLDERS, check_train, conditioned_per_sample
from wanflow.recipe.vap_rules import check_vap


def check_identity(recipe: Recipe, families: FamilyLookup, problems: Problems) -> FamilySpec | None:
    """The schema version and the family; returns the family when it is known."""
    if recipe.schema > SCHEMA_VERSION:
        problems.add(("schema",), recipe.schema, f"this recipe needs a newer wanflow (this one reads schema "
                     f"≤ {SCHEMA_VERSION}); upgrade wanflow or lower the schema")
    family = families.family(recipe.model)
    if family is None and not problems.is_bad(("model",)):
        problems.add(("model",), recipe.model, "unknown model family" + did_you_mean(recipe.model, families.family_names())
                     + " (`wanflow models` lists them)")
    return family


def check_recipe(recipe: Recipe, family: FamilySpec, families: FamilyLookup, problems: Problems,
                 paths: dict[tuple, tuple[str, Path]]) -> None:
    """Every cross-field, family and file check; problems are collected, nothing raised."""
    _check_name(recipe.name, problems)
    _check_video(recipe, family, problems)
    _check_sampler(recipe, family, families, problems)
    check_causal(recipe, family, problems)
    check_s2v(recipe, family, problems)
    check_longcat(recipe, family, problems)
    check_animate(recipe, family, problems)
    check_vap(recipe, family, problems)
    _check_vae(recipe, problems)
    _check_fp8_matmul(recipe, problems)
    _check_inputs(recipe, family, problems)
    _check_models(recipe, family, problems)
    _check_loras(recipe, family, problems)
    _check_cache(recipe, family, problems)
    if recipe.train is not None:
        check_train(recipe, family, problems)
    _check_references(recipe, problems)
    _check_files(paths, problems)


#: A run's folder name: no path separators, nothing a file system refuses, no leading dot.
_FOLDER_NAME = re.compile(r'[^/\\<>:"|?*\x00-\x1f]+')


def _check_name(name: str, problems: Problems) -> None:
    """The name becomes ``runs/<name>/``: it must be one plain folder name that stays inside runs/."""
    if _FOLDER_NAME.fullmatch(name) and not name.startswith(".") and name.strip() == name:
        return
    problems.add(("name",), name, "must be a plain folder name (it names the run's folder under runs/): "
                 "no '/', '\\', '..', leading '.', surrounding spaces or any of < > : \" | ? *; "
                 'e.g. name = "' + (re.sub(r'[^A-Za-z0-9_-]+', '-', name).strip('-.') or "my-run") + '"')


def _check_video(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    frames = recipe.video.frames
    if (frames - 1) % 4 and not problems.is_bad(("video", "frames")):
        lo, hi = frames - (frames - 1) % 4, frames - (frames - 1) % 4 + 4
        problems.add(("video", "frames"), frames, f"must be 4n+1 ({lo} or {hi}): the causal VAE encodes "
                     "the first frame alone and then groups of 4")
    f = family.spatial_factor
    for key in ("width", "height"):
        v = getattr(recipe.video, key)
        if v % f and not problems.is_bad(("video", key)):
            lo = max(f, v - v % f)
            problems.add(("video", key), v, f"must be a multiple of {f} for {family.name} "
                         f"(VAE stride × patch size): use {lo} or {lo + f}")


def _check_sampler(recipe: Recipe, family: FamilySpec, families: FamilyLookup, problems: Problems) -> None:
    s = recipe.sampler
    known = families.solver_names()
    if s.solver not in known and not problems.is_bad(("sampler", "solver")):
        problems.add(("sampler", "solver"), s.solver, "unknown solver; use one of " + ", ".join(known)
                     + did_you_mean(s.solver, known))
    elif family.solvers and s.solver not in family.solvers and s.solver in known:
        problems.add(("sampler", "solver"), s.solver, f"{family.name} supports " + ", ".join(family.solvers))
    if not family.experts:
        for key in ("cfg_high_noise", "boundary"):
            if getattr(s, key) is not None and not problems.is_bad(("sampler", key)):
                problems.add(("sampler", key), getattr(s, key), f"only applies to two-expert (A14B) families, "
                             f"not {family.name}; remove it")
    if s.denoising_strength < 1 and recipe.inputs.video is None and recipe.inputs.image is None:
        problems.add(("sampler", "denoising_strength"), s.denoising_strength,
                     "needs a source to keep: set [inputs].video (video-to-video) or [inputs].image, or use 1.0")


def _check_fp8_matmul(recipe: Recipe, problems: Problems) -> None:
    """fp8 matmuls multiply the weights as [memory].fp8 stores them, and have no backward."""
    if not recipe.runtime.fp8_matmul:
        return
    if not recipe.memory.fp8:
        problems.add(("runtime", "fp8_matmul"), True, "multiplies the block weights as [memory].fp8 stores "
                     "them; set [memory].fp8 = true as well, or fp8_matmul = false")
    if recipe.train is not None:
        problems.add(("runtime", "fp8_matmul"), True, "fp8 matmuls have no backward, and training multiplies "
                     "the frozen fp8 base in the compute dtype; set fp8_matmul = false")


def _check_vae(recipe: Recipe, problems: Problems) -> None:
    v = recipe.vae
    for axis, name in enumerate(("height", "width")):
        if v.tile_stride[axis] > v.tile_size[axis]:
            problems.add(("vae", "tile_stride"), list(v.tile_stride), f"the {name} stride "
                         f"{v.tile_stride[axis]} is larger than the tile ({v.tile_size[axis]}), which would "
                         f"leave gaps; use at most {v.tile_size[axis]} (half the tile blends best)")
        if v.tile_size[axis] < 1 or v.tile_stride[axis] < 1:
            problems.add(("vae", "tile_size"), list(v.tile_size), "tile sizes and strides must be ≥ 1")


def _required_input_example(name: str) -> str:
    """How a required input is written: a file path, a table, or motion_bucket's number."""
    if name in FILE_INPUTS:
        return f'{name} = "path"'
    if name == "motion_bucket":
        return "motion_bucket = N (0 slow … 100 fast)"
    if name in TEXT_INPUTS:
        return f'{name} = "a caption of the reference video"'
    return f"an [inputs.{name}] table"


def _check_inputs(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    named = FILE_INPUTS + ("camera", "vace", "motion_bucket", "audio_sample_rate") + TEXT_INPUTS
    given = [name for name in (f.split(".")[0] for f in named) if getattr(recipe.inputs, name) is not None]
    for name in dict.fromkeys(given):
        if name not in family.accepted_inputs:
            takes = ", ".join(sorted(family.accepted_inputs)) or "no conditioning inputs"
            problems.add(("inputs", name), getattr(recipe.inputs, name),
                         f"{family.name} does not take this input (it takes: {takes}); remove it "
                         "or choose a family that does")
    # A training stage's samples bring their own inputs; its validation videos need the recipe's
    # (a derivative family's validation videos are refused by train_rules, naming the key).
    needs_inputs = recipe.train is None or (bool(recipe.train.validation_prompts)
                                            and not conditioned_per_sample(family))
    for name in sorted(family.required_inputs) if needs_inputs else ():
        if getattr(recipe.inputs, name) is None and not problems.is_bad(("inputs", name)):
            problems.add(("inputs", name), None, f"is required by {family.name}; add "
                         f"{_required_input_example(name)} under [inputs]", show_value=False)
    caption = recipe.inputs.vap_prompt
    if caption is not None and not caption.strip() and "vap_prompt" in family.accepted_inputs:
        problems.add(("inputs", "vap_prompt"), caption, "is empty: describe the reference video "
                     "([inputs].vap_video) the way its caption would, e.g. what happens in it")
    if not recipe.prompt.text.strip() and recipe.train is None and not problems.is_bad(("prompt", "text")):
        problems.add(("prompt", "text"), recipe.prompt.text, "is required: say what to generate")


def _check_models(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    for name in recipe.models:
        if name not in family.components:
            problems.add(("models", name), None, f"{family.name} has no component {name!r}; its components are "
                         + ", ".join(sorted(family.components)) + did_you_mean(name, family.components),
                         show_value=False)


def _check_loras(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """Where each LoRA comes from, what it patches, and finite scales."""
    experts = tuple(family.experts)
    targets = ("dit", *experts, *family.lora_stages)
    for i, lora in enumerate(recipe.lora):
        if bool(lora.path) == bool(lora.source):
            problems.add(("lora", i, "path"), lora.path, "give exactly one of `path` (a local file) and "
                         "`source` (modelscope:ORG/REPO) with `file`")
        if lora.source and not lora.source.startswith("modelscope:"):
            problems.add(("lora", i, "source"), lora.source, "must be modelscope:ORG/REPO[@REVISION]; "
                         "for a local file use `path`")
        if lora.source and not lora.file:
            problems.add(("lora", i, "file"), lora.file, "name the LoRA file inside `source`")
        if lora.target not in targets:
            problems.add(("lora", i, "target"), lora.target, f"{family.name} takes LoRAs on "
                         + ", ".join(targets) + did_you_mean(lora.target, targets))
        for field in ("scale", "scale_high_noise", "scale_low_noise"):
            value = getattr(lora, field)
            if value is not None and not math.isfinite(value):
                problems.add(("lora", i, field), value, "must be a finite number (1.0 = as trained)")
        for field in ("scale_high_noise", "scale_low_noise"):
            if getattr(lora, field) is not None and not experts:
                problems.add(("lora", i, field), getattr(lora, field), f"only for the A14B families "
                             f"(two experts); {family.name} has one DiT: use `scale`")


#: [sampler.cache] keys of the other methods that EasyCache does not read, with the fix for each.
_EASYCACHE_UNUSED = {
    "mode": "TeaCache's signal; EasyCache decides from the latent itself: remove it",
    "coefficients": "TeaCache's polynomial; EasyCache needs no coefficients: remove it",
    "calibrated": "TeaCache's polynomial; EasyCache needs no calibration: remove it",
    "calibrated_high_noise": "TeaCache's polynomial; EasyCache needs no calibration: remove it",
    "ratios_cond": "MagCache's calibrated ratios; EasyCache needs no calibration: remove them",
    "ratios_uncond": "MagCache's calibrated ratios; EasyCache needs no calibration: remove them",
    "max_skips": "MagCache's K; EasyCache has no cap on consecutive skips (a lower threshold skips "
                 "less): remove it",
}


def _check_cache(recipe: Recipe, family: FamilySpec, problems: Problems) -> None:
    """A step cache's settings that only make sense together, and models without TeaCache data."""
    c, key = recipe.sampler.cache, ("sampler", "cache")
    if c.method == "none":
        return
    refused = problems.is_bad((*key, "threshold")) or problems.is_bad((*key, "target_speedup"))
    if (c.threshold is None) == (c.target_speedup is None) and not refused:  # a refused value reads as None
        problems.add((*key, "threshold"), c.threshold, "give exactly one of threshold and target_speedup")
    if c.target_speedup is not None and c.method != "teacache":
        problems.add((*key, "target_speedup"), c.target_speedup, "only TeaCache's plan is known before "
                     f"sampling; give {c.method} a threshold")
    if c.method == "magcache" and not (c.ratios_cond and c.ratios_uncond):
        problems.add((*key, "ratios_cond"), list(c.ratios_cond), "MagCache needs the ratios of a calibration "
                     "run on this model (ratios_cond and ratios_uncond)")
    if c.method == "magcache" and recipe.sampler.cfg_merge:
        problems.add(("sampler", "cfg_merge"), True, "runs the conditional and unconditional passes as one, "
                     "but MagCache's ratios are calibrated per pass (ratios_cond, ratios_uncond); set "
                     "cfg_merge = false (same numbers) or use another [sampler.cache].method")
    if c.method != "easycache" and (c.coefficients == "calibrated") != bool(c.calibrated):
        problems.add((*key, "calibrated"), list(c.calibrated), 'give the fitted polynomial exactly when '
                     'coefficients = "calibrated"')
    if c.method == "easycache":  # keys EasyCache does not read would change the key, not the video
        refuse_changed(problems, key, c, type(c)(), _EASYCACHE_UNUSED)
    if c.calibrated_high_noise and (c.coefficients != "calibrated" or len(family.experts) < 2):
        why = ("has one DiT" if len(family.experts) < 2 else 'reads it only with coefficients = "calibrated"')
        problems.add((*key, "calibrated_high_noise"), list(c.calibrated_high_noise),
                     f"is the high-noise expert's polynomial, and {family.name} {why}: remove it"
                     + ("" if len(family.experts) < 2 else ', or set coefficients = "calibrated"'))
    wan22 = any(comp.architecture.startswith("wan2.2") for name, comp in family.components.items()
                if name.startswith("dit"))
    if c.method == "teacache" and wan22 and c.coefficients != "calibrated":
        problems.add((*key, "method"), c.method, f"{family.name} has no published TeaCache coefficients "
                     '(Wan2.1\'s do not fit it); calibrate them (docs/step-cache.md) or use "first-block"')


def _check_references(recipe: Recipe, problems: Problems) -> None:
    """``[inputs.vace].reference`` names at least one image (the schema reads a path or an array)."""
    if recipe.inputs.vace and recipe.inputs.vace.reference == ():
        problems.add(("inputs", "vace", "reference"), [], "names no image; remove the key, or name one: "
                     'reference = "subject.png", or reference = ["subject.png", "style.png"] (in that order)')


def _check_files(paths: dict[tuple, tuple[str, Path]], problems: Problems) -> None:
    """Every named path exists; a file where a file is meant, a folder where a folder is."""
    for key, (written, path) in paths.items():
        folder_ok = key[0] == "models" or (key[0] == "train" and key[-1] in TRAIN_FOLDERS)
        if not path.exists():
            what = "file or folder" if folder_ok else "file"
            problems.add(key, written, f"no such {what} ({path}); fix the path (a relative "
                              "path starts at the folder of the recipe that names it)")
        elif path.is_dir() and not folder_ok:
            problems.add(key, written, "is a folder; name a file")
        elif key == ("train", "base_path") and not path.is_dir():
            problems.add(key, written, "is a file; name the folder that the dataset's media paths are "
                         "relative to (or remove it: they resolve against the metadata file's folder)")
