"""The pipeline of Wan2.2-Animate: the Wan pipeline's text encodes and save, Animate's own input
steps (``cond_animate``), its clip loop in place of denoise and its clip-by-clip decode
(``denoise_animate``).

encode-text → encode the reference image (VAE + CLIP), the pose video (VAE, clip by clip), the
face video (the DiT's face encoders), and in replacement mode prepare the background and mask
videos → the clip loop (it reads the VAE too: a clip starts from the previous one's decoded last
frames) → decode → save. Replacement mode applies the family's relighting LoRA
(``relighting_lora.ckpt``) to the DiT, first, at scale 1, unless ``[inputs].relighting_lora =
false``: its file digest and scale are part of the denoise key. Importing this module does not
import torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.errors import RecipeError
from wanflow.steps.animate_checks import animate_problems
from wanflow.steps.checks import locator
from wanflow.steps.cond_animate import (
    EncodeAnimateFace,
    EncodeAnimatePose,
    EncodeAnimateReference,
    PrepareAnimateBackground,
    PrepareAnimateMask,
)
from wanflow.steps.denoise_animate import AnimateDecode, AnimateDenoise
from wanflow.steps.pipeline import WanPipeline, resolve_weights

#: The LoRA weight role of the relighting LoRA (the family's component of that name).
RELIGHTING = "relighting_lora.0"
REFERENCE, POSE, FACE = ("encode-conditioning:animate-reference", "encode-conditioning:animate-pose",
                         "encode-conditioning:animate-face")
BACKGROUND, MASK = "prepare-conditioning:animate-background", "prepare-conditioning:animate-mask"


def relighting(values: Any) -> bool:
    """Whether the relighting LoRA applies: replacement mode, unless the recipe turns it off."""
    return values["inputs.animate_mode"] == "replacement" and values["inputs.relighting_lora"] is not False


@attrs.frozen
class AnimatePipeline(WanPipeline):
    """``WanPipeline`` with Animate's input steps, clip loop and decode."""

    def check(self, resolved: Any) -> list[str]:
        return [*super().check(resolved), *animate_problems(resolved.values, locator(resolved))]

    def steps(self, resolved: Any) -> list[StepSpec]:
        problems = animate_problems(resolved.values, locator(resolved))
        if problems:
            raise RecipeError(problems)
        nodes = super().steps(resolved)
        if resolved.recipe.train is not None:
            return nodes  # refused at validation (train_rules); kept for the message's sake
        weights = resolve_weights(resolved, self.fetch)
        denoise = next(n for n in nodes if n.name == "denoise")
        decode = next(n for n in nodes if n.name == "decode")
        inputs = _input_nodes(resolved, weights, denoise, decode)
        loras = denoise.step.loras
        loop_weights = {**denoise.weights, "vae": decode.weights["vae"]}
        if relighting(resolved.values):
            loras = ((RELIGHTING, "dit", 1.0), *loras)
            loop_weights[RELIGHTING] = next(iter(weights["relighting_lora"].values()))
        loop = AnimateDenoise.replacing(denoise.step, decode.step, loras)
        roles = {"reference": REFERENCE, "pose": POSE, "face": FACE, "background": BACKGROUND, "mask": MASK}
        denoise = attrs.evolve(denoise, step=loop, weights=loop_weights,
                               inputs={**denoise.inputs, **{r: n for r, n in roles.items() if n in
                                                            {i.name for i in inputs}}})
        decode = attrs.evolve(decode, step=AnimateDecode.replacing(decode.step))
        texts = [n for n in nodes if n.name.startswith("encode-text:")]
        rest = [n for n in nodes if n.name not in {"denoise", "decode"} and n not in texts]
        return [*texts, *inputs, denoise, decode, *rest]


def _placed(resolved: Any, component: str, field: str) -> str:
    override = resolved.recipe.models.get(component)
    return getattr(override, field) if override is not None else "auto"


def _input_nodes(resolved: Any, weights: Any, denoise: StepSpec, decode: StepSpec) -> list[StepSpec]:
    """The reference, pose and face steps, and the background and mask steps in replacement mode."""
    v = resolved.values
    vae, residency = decode.weights, decode.step.residency
    files = {name: v[f"inputs.{name}"] for name in ("reference_image", "pose_video", "face_video",
                                                     "background_video", "mask")}
    placed_vae = {"dtype": decode.step.dtype, "device": decode.step.device, "residency": residency}
    reference = EncodeAnimateReference(decode.step.vae_version, **placed_vae,
                                       clip_dtype=_placed(resolved, "image_encoder", "dtype"),
                                       clip_device=_placed(resolved, "image_encoder", "device"))
    encoder = {"image_encoder": next(iter(weights["image_encoder"].values()))}
    (role, count), = denoise.step.experts
    dit = {r: w for r, w in denoise.weights.items() if r.startswith(f"{role}.")}
    face = EncodeAnimateFace(count, dict(denoise.step.dtypes).get(role, "auto"), denoise.step.storage, residency)
    nodes = [StepSpec(REFERENCE, reference, files={"reference_image": files["reference_image"]},
                      weights={**vae, **encoder}),
             StepSpec(POSE, EncodeAnimatePose(decode.step.vae_version, **placed_vae),
                      files={"pose_video": files["pose_video"]}, weights=vae),
             StepSpec(FACE, face, files={"face_video": files["face_video"]}, weights=dit)]
    if v["inputs.animate_mode"] == "replacement":
        nodes += [StepSpec(BACKGROUND, PrepareAnimateBackground(),
                           files={"background_video": files["background_video"]}),
                  StepSpec(MASK, PrepareAnimateMask(denoise.step.latent_stride), files={"mask": files["mask"]})]
    return nodes
