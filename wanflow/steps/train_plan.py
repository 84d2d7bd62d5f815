"""The nodes of a training stage: per-sample encodes → train → export, loss history, validation.

Planned from the checked dataset (torch-free, before any model loads) and the family's data:
which encodes a sample needs follows from what the family takes (I2V: the y conditioning and,
with an image encoder, CLIP tokens; TI2V: its first frame, taken from x0), never from its name.
A family with derivative conditioners (VACE, Wan-Fun, speed control) gets one node per declared
conditioner and sample instead, planned and computed by the inference conditioners
(``train_conditioning``); Animate gets the I2V encodes of its image and its own pose and face
encodes (``train_animate``).
Identical prompts share one text node, and a prompt encoded for a video is the same node.
"""

from __future__ import annotations

from typing import Any

from wanflow.engine.keys import canonical_json, digest_bytes
from wanflow.engine.step import StepSpec
from wanflow.families.vap import FULL_EXPORT as VAP_FULL_EXPORT
from wanflow.steps.decode import Decode
from wanflow.steps.save import SaveVideo
from wanflow.steps.text import EncodeText
from wanflow.steps.train import (
    EXECUTION_ONLY,
    ExportWeights,
    LossHistory,
    TrainModel,
    ValidationLatents,
)
from wanflow.steps.train_animate import animate_sample_nodes, is_animate
from wanflow.steps.train_checks import trained_dits
from wanflow.steps.train_conditioning import (
    declared_conditioning,
    sample_conditioning_nodes,
    trained_parts,
)
from wanflow.steps.train_data import training_dataset
from wanflow.steps.train_encode import EncodeSample
from wanflow.steps.train_part_export import ExportPart
from wanflow.steps.train_vap_export import ExportVapDiT
from wanflow.train.order import split_validation

EXPERT_FILE_SUFFIX = {"dit": "", "dit_high_noise": "_high_noise", "dit_low_noise": "_low_noise"}


def training_nodes(job: Any, vae_version: str, z_dim: int) -> list[StepSpec]:
    """Every node of the job's training stage (``job`` is the pipeline's resolved job)."""
    t = job.resolved.recipe.train
    dataset = training_dataset(job.resolved)
    family = job.family
    text_weights = _text_weights(job)
    own = {"dtype": job.dtype("text_encoder"), "device": job.device("text_encoder"), "residency": job.residency}
    vae = {"vae": next(iter(job.weights["vae"].values()))}
    vae_own = job.placed("vae")
    animate = is_animate(family)  # its image's y and CLIP are the base encodes' (``train_animate``)
    declared = declared_conditioning(family) and not animate
    takes_image = "image" in family.accepted_inputs and not declared
    y_mode = ("image" in family.required_inputs and not declared) or animate
    clip = y_mode and "image_encoder" in job.weights
    conditions = tuple(c for c, on in (("y", y_mode), ("clip", clip)) if on)
    conditioned: list[tuple[int, tuple[str, ...]]] = []
    _, held = split_validation(len(dataset.samples), t.validation_samples, t.seed)

    nodes: list[StepSpec] = []
    texts: dict[str, str] = {}  # prompt -> its node
    inputs: dict[str, str] = {}
    for s in dataset.samples:
        i = s.index
        if s.prompt not in texts:
            texts[s.prompt] = f"train/text:{i}"
            nodes.append(StepSpec(texts[s.prompt], EncodeText(text=s.prompt, **own), weights=text_weights))
        inputs[f"text.{i}"] = texts[s.prompt]
        size = {"frames": s.target.frames, "height": s.target.height, "width": s.target.width}
        nodes.append(StepSpec(f"train/x0:{i}", EncodeSample("x0", **size, vae_version=vae_version, **vae_own),
                              files={"media": s.media}, weights=vae))
        inputs[f"x0.{i}"] = f"train/x0:{i}"
        if declared or animate:
            found = animate_sample_nodes(job, s, vae_version) if animate else sample_conditioning_nodes(job, s)
            nodes += [spec for _, spec in found]
            inputs |= {f"{role}.{i}": spec.name for role, spec in found}
            conditioned.append((i, tuple(role for role, _ in found)))
        if conditions:
            images, files = _condition_frames(s)
            nodes.append(StepSpec(f"train/y:{i}", EncodeSample("y", **size, images=images, vae_version=vae_version,
                                                               **vae_own), files=files, weights=vae))
            inputs[f"y.{i}"] = f"train/y:{i}"
            if clip:
                encoder = {"image_encoder": next(iter(job.weights["image_encoder"].values()))}
                nodes.append(StepSpec(f"train/clip:{i}", EncodeSample("clip", **size, images=images,
                                                                      **job.placed("image_encoder")),
                                      files=files, weights=encoder))
                inputs[f"clip.{i}"] = f"train/clip:{i}"
    if t.caption_dropout > 0:  # what a dropped caption is replaced with: the empty prompt's encode
        name = texts.get("") or "train/text:empty"
        if "" not in texts:
            texts[""] = name
            nodes.append(StepSpec(name, EncodeText(text="", **own), weights=text_weights))
        inputs["text.empty"] = name
    for k, prompt in enumerate(t.validation_prompts):
        name = texts.get(prompt) or f"train/validation-text:{k}"
        if prompt not in texts:
            texts[prompt] = name
            nodes.append(StepSpec(name, EncodeText(text=prompt, **own), weights=text_weights))
        inputs[f"val.pos.{k}"] = name
    if t.validation_prompts and float(job.values["sampler.cfg"]) != 1.0:
        negative = job.values["prompt.negative"]
        name = texts.get(negative) or "train/validation-text:negative"
        if negative not in texts:
            nodes.append(StepSpec(name, EncodeText("prompt.negative", text=negative, **own), weights=text_weights))
        inputs["val.neg"] = name

    dits = trained_dits(job.resolved)  # A14B: one expert alone, its side of the boundary; or both
    weights = {role: w for d in dits for role, w in job.weights[d].items()}
    init = tuple(name for name in ("lora_init", "preset_lora") if getattr(t, name))
    weights |= {name: job.weights["train_files"][name] for name in init}
    parts = trained_parts(job)  # a component trained alone (speed control's controller), the DiT frozen
    weights |= {f"{part}.0": next(iter(job.weights[part].values())) for part in parts}
    boundary = float(job.values["sampler.boundary"]) * 1000 if family.experts else 0.0
    solver, uses = job.provided("sampler", job.values["sampler.solver"])
    train = TrainModel(
        experts=tuple((d, len(job.weights[d])) for d in dits),
        samples=tuple((s.index, s.bucket, s.index in held) for s in dataset.samples),
        conditions=conditions, first_frame=takes_image and not y_mode, boundary=boundary,
        conditioned=tuple(conditioned), parts=parts,
        validation_prompts=len(t.validation_prompts), z_dim=z_dim,
        latent_stride=family.spatial_factor // 2, init=init, solver=solver,
        execution=tuple((f"train.{k}", getattr(t, k)) for k in EXECUTION_ONLY), peak=job.peak("train"),
        tiers=getattr(job.peak("train"), "tiers", ()))
    nodes.append(StepSpec("train", train, inputs=inputs, weights=weights, uses=uses))
    nodes += _outputs(job, t, () if parts else dits, vae_version, vae, vae_own)
    for part in parts:  # the trained part in the release's layout, in place of a DiT's export
        nodes.append(StepSpec(f"export:{part}", ExportPart(part, _header(job)), inputs={"trained": "train"},
                              weights={part: next(iter(job.weights[part].values()))},
                              archive_as=f"{part}.safetensors"))
    return nodes


def _condition_frames(sample: Any) -> tuple[tuple[tuple[str, int | None], ...], dict[str, Any]]:
    """The first (and last) frame the y/CLIP encodes read: a file of the row, or a frame of the clip."""
    images, files = [], {}
    for column, role in (("input_image", "image"), ("end_image", "end_image")):
        ref = sample.input(column)
        if ref is None:
            continue
        images.append((role, ref.frame))
        files[role] = ref.path
    return tuple(images), files


def _text_weights(job: Any) -> dict[str, Any]:
    te = job.weights["text_encoder"]
    return {"text_encoder": next(iter(te.values())),
            **{f"tokenizer.{i}": w for i, w in enumerate(job.weights["tokenizer"].values())}}


def _outputs(job: Any, t: Any, dits: tuple[str, ...], vae_version: str, vae: Any, vae_own: Any) -> list[StepSpec]:
    header = _header(job)
    nodes = []
    released = t.method == "full" and job.family.full_export == VAP_FULL_EXPORT
    for d in dits:
        stem = "lora" if t.method == "lora" else "dit"
        archive_as = f"{stem}{EXPERT_FILE_SUFFIX.get(d, '_' + d)}.safetensors"
        if released:  # the trained reference stream over the base, in the release's layout
            export = ExportVapDiT(d, len(job.weights[d]), header)
            nodes.append(StepSpec(f"export:{d}", export, inputs={"trained": "train"}, weights=job.weights[d],
                                  archive_as=archive_as))
            continue
        nodes.append(StepSpec(f"export:{d}", ExportWeights(d, t.method, t.export_dialect, header),
                              inputs={"trained": "train"}, archive_as=archive_as))
    nodes += [StepSpec("loss-csv", LossHistory("csv"), inputs={"trained": "train"}, archive_as="loss.csv"),
              StepSpec("loss-png", LossHistory("png"), inputs={"trained": "train"}, archive_as="loss.png")]
    if not t.validation_prompts:
        return nodes
    saver, uses = job.provided("saver", job.values["output.format"])
    points = [s for s in range(1, t.steps + 1) if s == t.steps or (t.validate_every and s % t.validate_every == 0)]
    for at in points:
        for k in range(len(t.validation_prompts)):
            tag = f"{at}:{k}"
            nodes += [
                StepSpec(f"validation-latents:{tag}", ValidationLatents(f"validation/{at}/{k}"),
                         inputs={"trained": "train"}),
                StepSpec(f"validation-decode:{tag}", Decode(vae_version, **vae_own),
                         inputs={"latents": f"validation-latents:{tag}"}, weights=vae),
                StepSpec(f"validation-save:{tag}", SaveVideo(saver), inputs={"frames": f"validation-decode:{tag}"},
                         uses=uses, archive_as=f"validation-step{at:06d}-{k}{saver.suffix}"),
            ]
    return nodes


def _header(job: Any) -> tuple[tuple[str, str], ...]:
    """What the exported file says about itself: the base model and the digest of the settings."""
    values = job.values
    skipped = ("dataset", "base_path", "lora_init", "preset_lora", *EXECUTION_ONLY)
    train = {k: v for k, v in values.items() if k.startswith("train.") and k.removeprefix("train.") not in skipped}
    sources = sorted({w.source for d in trained_dits(job.resolved) for w in job.weights[d].values()})
    return (("wanflow.base_model", f"{job.family.name} ({', '.join(sources)})"),
            ("wanflow.recipe_digest", digest_bytes(canonical_json(train).encode())))
