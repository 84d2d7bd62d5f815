"""The pipeline of Wan2.2-Animate: the Wan pipeline's steps (text encodes, the family's Animate
conditioner nodes, save), with the clip loop in place of denoise and a clip-by-clip decode
(``denoise_animate``).

The clip loop reads the VAE (a clip starts from the previous one's decoded last frames), so the
VAE's file joins the denoise step's weights. Replacement mode applies the family's relighting
LoRA (``relighting_lora.ckpt``) to the DiT, first, at scale 1, unless ``[inputs].relighting_lora
= false``: its file digest and scale are part of the denoise key. The driving videos are checked
against each other before anything is planned (``animate_checks``). The face encode loads the DiT
with the clip loop's storage and block tiers, so it is never loaded whole where the plan streams
its blocks. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.errors import RecipeError
from wanflow.steps.animate_checks import animate_problems
from wanflow.steps.checks import locator
from wanflow.steps.cond_animate import FACE
from wanflow.steps.denoise_animate import AnimateDecode, AnimateDenoise
from wanflow.steps.pipeline import WanPipeline, resolve_weights

#: The LoRA weight role of the relighting LoRA (the family's component of that name).
RELIGHTING = "relighting_lora.0"


def relighting(values: Any) -> bool:
    """Whether the relighting LoRA applies: replacement mode, unless the recipe turns it off."""
    return values["inputs.animate_mode"] == "replacement" and values["inputs.relighting_lora"] is not False


@attrs.frozen
class AnimatePipeline(WanPipeline):
    """``WanPipeline`` with Animate's clip loop and clip-by-clip decode."""

    def check(self, resolved: Any) -> list[str]:
        return [*super().check(resolved), *animate_problems(resolved.values, locator(resolved))]

    def steps(self, resolved: Any) -> list[StepSpec]:
        problems = animate_problems(resolved.values, locator(resolved))
        if problems:
            raise RecipeError(problems)
        nodes = super().steps(resolved)
        if resolved.recipe.train is not None:
            return nodes  # refused at validation (animate_rules)
        denoise = next(n for n in nodes if n.name == "denoise")
        decode = next(n for n in nodes if n.name == "decode")
        loras, weights = denoise.step.loras, {**denoise.weights, "vae": decode.weights["vae"]}
        if relighting(resolved.values):
            loras = ((RELIGHTING, "dit", 1.0), *loras)
            weights[RELIGHTING] = resolve_weights(resolved, self.fetch)["relighting_lora"][RELIGHTING]
        loop = attrs.evolve(denoise, step=AnimateDenoise.replacing(denoise.step, decode.step, loras), weights=weights)
        clips = attrs.evolve(decode, step=AnimateDecode.replacing(decode.step))
        replaced = {"denoise": loop, "decode": clips}
        face = next((n for n in nodes if n.name == FACE), None)
        if face is not None:  # the face encode loads the DiT as the clip loop does: never whole where it streams
            replaced[FACE] = attrs.evolve(face, step=attrs.evolve(face.step, storage=loop.step.storage,
                                                                  tiers=loop.step.tiers))
        return [replaced.get(n.name, n) for n in nodes]
