"""Every conditioner kind's implementation, by the name ``wanflow.conditioners`` registers it under.

Adding a kind: name it in ``wanflow.conditioners.kinds``, write its step and hand-off in a
``cond_*`` module, list it here, and declare it in a family. Denoise and the pipeline need no
change: they go through ``nodes`` and ``model_call``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from wanflow.conditioners import Conditioner, kind_of_role
from wanflow.steps.cond_animate import (
    ANIMATE_BACKGROUND,
    ANIMATE_FACE,
    ANIMATE_MASK,
    ANIMATE_POSE,
    ANIMATE_REFERENCE,
)
from wanflow.steps.cond_call import Implementation, ModelCall
from wanflow.steps.cond_camera import CAMERA_PLUCKER
from wanflow.steps.cond_clip import CLIP_TOKENS_KIND
from wanflow.steps.cond_control import CONTROL_LATENTS
from wanflow.steps.cond_image import FIRST_FRAME_LATENT, IMAGE_CHANNELS
from wanflow.steps.cond_longcat import LONGCAT_FRAMES
from wanflow.steps.cond_motion import MOTION_BUCKET
from wanflow.steps.cond_reference import REFERENCE_LATENT
from wanflow.steps.cond_s2v import S2V_AUDIO, S2V_MOTION, S2V_POSE, S2V_REFERENCE
from wanflow.steps.cond_source import SOURCE_LATENT
from wanflow.steps.cond_start import START_LATENT
from wanflow.steps.cond_vace import VACE_CONTEXT
from wanflow.steps.cond_vap import VAP_VIDEO
from wanflow.steps.cond_vap_prompt import VAP_NEGATIVE_PROMPT, VAP_PROMPT

IMPLEMENTATIONS: Mapping[str, Implementation] = {
    "clip-tokens": CLIP_TOKENS_KIND,
    "image-channels": IMAGE_CHANNELS,
    "start-latent": START_LATENT,
    "control-latents": CONTROL_LATENTS,
    "first-frame-latent": FIRST_FRAME_LATENT,
    "source-latent": SOURCE_LATENT,
    "reference-latent": REFERENCE_LATENT,
    "camera-plucker": CAMERA_PLUCKER,
    "motion-bucket": MOTION_BUCKET,
    "vace-context": VACE_CONTEXT,
    "vap-video": VAP_VIDEO,
    "vap-prompt": VAP_PROMPT,
    "vap-negative-prompt": VAP_NEGATIVE_PROMPT,
    "s2v-audio": S2V_AUDIO,
    "s2v-reference": S2V_REFERENCE,
    "s2v-pose": S2V_POSE,
    "s2v-motion": S2V_MOTION,
    "longcat-frames": LONGCAT_FRAMES,
    "animate-reference": ANIMATE_REFERENCE,
    "animate-pose": ANIMATE_POSE,
    "animate-face": ANIMATE_FACE,
    "animate-background": ANIMATE_BACKGROUND,
    "animate-mask": ANIMATE_MASK,
}


def nodes(job: Any, declared: Iterable[Conditioner]) -> list[tuple[str, Any]]:
    """(denoise input role, StepSpec) of every declared conditioner this job gives work, in order."""
    out = []
    for conditioner in declared:
        spec = IMPLEMENTATIONS[conditioner.kind].node(job, conditioner)
        if spec is not None:
            out.append((conditioner.role, spec))
    return out


def model_call(roles: Iterable[str], inputs: Mapping[str, Any]) -> ModelCall:
    """The model call of a job: each role's tensors handed over by its kind, in ``roles``' order."""
    call = ModelCall()
    for role in roles:
        call = IMPLEMENTATIONS[kind_of_role(role).name].hand_off(inputs[role], call)
    return call
