"""A long LongCat-Video video's 720p refinement, segment by segment, as the authors' long-video demo
refines it (``run_demo_long_video.py``, ``run_demo_interactive_video.py``).

The joined 480p video (``join-segments``) is cut into windows of ``[video].frames`` frames, each
starting ``frames − longcat_cond_frames`` after the last (their ``start_id``): window 0 is refined
as a clip of its own; window k ≥ 1 is refined holding the last ``2 · longcat_cond_frames``
frames of refined window k − 1 as its conditioning frames (their ``cur_condition_video``, the
count their ``cur_num_cond_frames``; the clip's own count when spatial only). Every window is
refined with the empty prompt, as theirs are (``prompt=''``), its noise drawn from
``[sampler].seed + k``. The refined video is window 0, then each later window after its
conditioning frames.

Each window's slice, encodes, denoise and decode are steps of their own, so a longer chain reuses
the refinement of the shorter one's windows. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.steps.longcat_refine import (
    COND_ROLE,
    ROLE,
    DecodeRefined,
    EncodeRefineCond,
    EncodeRefineVideo,
    Layout,
    cond_frames,
    refined_frames,
    vae_fields,
)
from wanflow.steps.longcat_segments import JOIN, segment_count

#: The node of the refinement's text: the empty prompt.
TEXT = "encode-text:refine"
#: The node that joins the refined windows into the video the saves write.
JOIN_REFINED = "join-segments:refine"


def window_name(stage: str, k: int) -> str:
    """The node of window k's stage ("frames", "encode-conditioning", "denoise", "decode")."""
    names = {"frames": "frames:refine", "encode": "encode-conditioning:longcat-refine",
             "cond": "encode-conditioning:longcat-refine-cond", "denoise": "denoise:refine",
             "decode": "decode:refine"}
    return f"{names[stage]}-{k}"


@attrs.frozen
class WindowFrames:
    """"frames": window k of the joined video, ``[video].frames`` frames from
    k · (frames − longcat_cond_frames) (the authors' ``start_id``)."""

    window: int
    kind: str = "longcat-refine-window"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("video.frames", "inputs.longcat_cond_frames")

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        start = self.window * (p["video.frames"] - p["inputs.longcat_cond_frames"])
        return {"frames": ctx.input("frames")["frames"][start:start + p["video.frames"]].contiguous()}


@attrs.frozen
class JoinRefined:
    """"frames": refined window 0, then each later window after its conditioning frames (inputs
    ``clip.0``, ``clip.1``, … in order)."""

    clips: int
    kind: str = "join-longcat-refined"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("inputs.longcat_cond_frames", "inputs.longcat_refine_spatial_only")

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        skip = cond_frames(ctx.params, "segment")
        frames = [ctx.input(f"clip.{i}")["frames"] for i in range(self.clips)]
        return {"frames": torch.cat([frames[0], *(f[skip:] for f in frames[1:])]).contiguous()}


def refine_chain(nodes: list[StepSpec], resolved: Any, template: StepSpec) -> tuple[list[StepSpec], str]:
    """(the refinement's nodes of a long video, the node whose frames the saves write).
    ``template``: the refinement's denoise node (its step, DiT and LoRA weights)."""
    by_name = {n.name: n for n in nodes}
    decode, text = by_name["decode"], by_name["encode-text:positive"]
    vae = vae_fields(decode.step)
    values = resolved.values
    new = refined_frames(values)
    added = [attrs.evolve(text, name=TEXT, step=attrs.evolve(text.step, text=""))]  # the authors' prompt=''
    windows = segment_count(values) + 1
    for k in range(windows):
        cond = "segment" if k else ""
        layout = Layout.of(new, cond_frames(values, cond))
        inputs = {"pos": TEXT, ROLE: window_name("encode", k)}
        added += [StepSpec(window_name("frames", k), WindowFrames(k), inputs={"frames": JOIN}),
                  StepSpec(window_name("encode", k), EncodeRefineVideo(*vae, cond=cond),
                           inputs={"frames": window_name("frames", k)}, weights=decode.weights)]
        if k:
            added.append(StepSpec(window_name("cond", k), EncodeRefineCond(*vae, cond=cond),
                                  inputs={"frames": window_name("decode", k - 1)}, weights=decode.weights))
            inputs[COND_ROLE] = window_name("cond", k)
        step = attrs.evolve(template.step, conditions=(COND_ROLE,) if k else (), segment=k)
        added += [attrs.evolve(template, name=window_name("denoise", k), step=step, inputs=inputs),
                  attrs.evolve(decode, name=window_name("decode", k), inputs={"latents": window_name("denoise", k)},
                               step=DecodeRefined(*vae, keep=new, skip=layout.front))]
    added.append(StepSpec(JOIN_REFINED, JoinRefined(windows),
                          inputs={f"clip.{k}": window_name("decode", k) for k in range(windows)}))
    return added, JOIN_REFINED
