"""vap-prompt and vap-negative-prompt: the reference video's captions, each a text encode of its own.

The reference stream cross-attends to its own caption (``[inputs].vap_prompt``); in guidance's
unconditional pass the authors give it the negative reference caption
(``[inputs].negative_vap_prompt``) beside the negative main prompt, with the same reference
video. Each caption is its own ``encode-text`` node keyed by its text alone, so changing one
re-encodes only it (a caption equal to another prompt shares that prompt's cached encode), and
the negative one is not encoded when no guidance pass reads it (every cfg is 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.engine.step import StepSpec
from wanflow.errors import ModelInputError
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.cond_vap import with_vap
from wanflow.steps.denoise import expert_cfgs
from wanflow.steps.text import EncodeText

PROMPT_NODE = "encode-text:vap-prompt"
NEGATIVE_NODE = "encode-text:vap-negative"


def _encode_node(job: Any, name: str, key: str) -> StepSpec:
    """The umT5 encode of the recipe value ``key``, placed as the main prompt's encodes are."""
    weights = {"text_encoder": next(iter(job.weights["text_encoder"].values())),
               **{f"tokenizer.{i}": w for i, w in enumerate(job.weights["tokenizer"].values())}}
    step = EncodeText(key, job.values[key], dtype=job.dtype("text_encoder"), device=job.device("text_encoder"),
                      residency=job.residency, peak=job.peak("encode-text"))
    return StepSpec(name, step, weights=weights)


def _prompt_node(job: Any, declared: Any) -> StepSpec:
    if not job.given("vap_prompt"):
        raise ModelInputError(f"{job.resolved.path}: the family {job.family.name} reads the caption of its "
                              "reference video, and [inputs].vap_prompt is not set; describe the reference "
                              "video there")
    return _encode_node(job, PROMPT_NODE, "inputs.vap_prompt")


def _negative_node(job: Any, declared: Any) -> StepSpec | None:
    if all(c == 1.0 for c in expert_cfgs(job.values, job.dits()).values()):
        return None  # no unconditional pass reads it
    if not job.given("negative_vap_prompt"):
        raise ModelInputError(f"{job.resolved.path}: guidance (cfg ≠ 1) pairs the negative prompt with a "
                              "negative reference caption, and [inputs].negative_vap_prompt is not set; set it "
                              '(an empty caption is written "")')
    return _encode_node(job, NEGATIVE_NODE, "inputs.negative_vap_prompt")


def _prompt_hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return with_vap(call, vap_context=tensor(tensors, "context", "vap_prompt"))  # (1, L, 4096)


def _negative_hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return with_vap(call, vap_negative_context=tensor(tensors, "context", "vap_negative"))


VAP_PROMPT = Implementation(_prompt_node, _prompt_hand_off)
VAP_NEGATIVE_PROMPT = Implementation(_negative_node, _negative_hand_off)
