"""The pipeline of speech-to-video (Wan2.2-S2V-14B): the Wan pipeline's steps with the clip loop.

Text encoding is the Wan pipeline's; the family's conditioners plan the audio, reference, pose and
motion encodes. The denoise node becomes the clip loop (``denoise_s2v``), which decodes clip by
clip to roll its motion context and so replaces the decode node too: it reads the VAE (its file
joins the node's weights, and its key) and hands the save nodes the joined frames. The save node
muxes the recording in as the video's audio track (``save_audio``). The audio, pose and motion
files are checked before any of this is planned. Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.errors import RecipeError
from wanflow.steps.checks import locator
from wanflow.steps.denoise_s2v import S2VDenoise
from wanflow.steps.pipeline import WanPipeline
from wanflow.steps.s2v_checks import s2v_input_problems
from wanflow.steps.save_audio import with_audio_track

#: Nodes that read the decoded frames; in this pipeline the clip loop hands them over.
FRAME_READERS = ("save", "save-frames")
#: The conditioners' roles as the clip loop reads them.
_ROLES = {"s2v_audio": "audio", "s2v_reference": "reference", "s2v_pose": "pose", "s2v_motion": "motion"}


@attrs.frozen
class S2VPipeline(WanPipeline):
    """``WanPipeline`` with the S2V clip loop in place of denoise and decode, and the audio track."""

    def check(self, resolved: Any) -> list[str]:
        return [*super().check(resolved), *s2v_input_problems(resolved, locator(resolved))]

    def steps(self, resolved: Any) -> list[StepSpec]:
        problems = s2v_input_problems(resolved, locator(resolved))
        if problems:
            raise RecipeError(problems)
        nodes = super().steps(resolved)
        if resolved.recipe.train is not None:
            return nodes  # the training stage's nodes (one clip per sample, ``train_s2v``): no clip loop
        decode = next(n for n in nodes if n.name == "decode")
        out = []
        for node in nodes:
            if node.name == "denoise":
                node = clip_loop_node(node, decode, first_keeps_motion(resolved.values))
            elif node.name in FRAME_READERS:
                node = attrs.evolve(node, inputs={**node.inputs, "frames": "denoise"})
            if node.name != "decode":
                out.append(node)
        return with_audio_track(out, Path(resolved.values["inputs.audio"]))


def first_keeps_motion(values: Any) -> bool:
    """Whether the first clip keeps its motion tokens: it continues a motion video, or the
    reference image ends its context (``start_from_ref``, which the release runs without
    ``drop_first_motion``)."""
    return values["inputs.motion_video"] is not None or values["inputs.start_from_ref"] is True


def clip_loop_node(denoise: StepSpec, decode: StepSpec, motion_given: bool) -> StepSpec:
    """The denoise node with the clip loop: the same inputs and DiT weights, plus ``decode``'s VAE;
    ``motion_given``: the first clip continues its context (it keeps its motion tokens)."""
    step = S2VDenoise.replacing(denoise.step, decode.step, pose="s2v_pose" in denoise.step.conditions,
                                motion_given=motion_given)
    inputs = {_ROLES.get(role, role): node for role, node in denoise.inputs.items()}
    return attrs.evolve(denoise, step=step, inputs=inputs, weights={**denoise.weights, "vae": decode.weights["vae"]})
