"""LongCat-Video's long videos: clips chained by continuation, as the authors' long-video demo makes them.

``[inputs].longcat_segments = N`` adds N segments after the first clip (text-to-video, or a
continuation of ``[inputs].longcat_video``). Segment k continues segment k − 1 as a
continuation continues an input video: the last ``[inputs].longcat_cond_frames`` frames of its
decoded frames (uint8, as the authors pass the frames on between segments) are VAE-encoded and
held clean as the first latent frames of a clip of ``[video].frames`` frames, which the DiT
denoises against them. The video is the first clip, then each segment's frames after its
conditioning frames: ``frames + N · (frames − longcat_cond_frames)`` frames. With
``[inputs].longcat_segment_prompts`` (the authors' interactive video) segment k is guided by the
k-th prompt, encoded in a text step of its own, instead of ``[prompt].text``.

Every segment is steps of its own, keyed by what it reads: the encode by the frames it is given,
the denoise by those latents, the prompts and the sampler, the decode by its latents. A longer
chain reuses the shorter chain's segments from the cache, and a run killed in segment 5 resumes
there. Each segment draws its noise from ``[sampler].seed + k`` (the first clip's from the seed
itself), so segments never repeat one noise; the authors' loop draws every segment from one
generator's stream instead, which a keyed step cannot share.

Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.steps.conditioning import VAE_READS
from wanflow.steps.denoise_longcat import LongCatDenoise
from wanflow.steps.longcat_posterior import encode_latents, posterior_field, stream_field
from wanflow.steps.text import RUNTIME_READS

#: The node that joins the clips into the video the save steps write.
JOIN = "join-segments"
#: The denoise role of a continuation's conditioning latents (the ``longcat-frames`` kind's).
ROLE = "longcat"


def segment_name(stage: str, k: int) -> str:
    """The node of segment k's stage ("encode-conditioning", "denoise", "decode"); k = 0 is the
    first clip's own node ("denoise", "decode")."""
    return stage if k == 0 else f"{stage}:segment-{k}"


@attrs.frozen
class EncodeSegmentFrames:
    """"latents" (1, z, k, h, w): the VAE latents of the last ``longcat_cond_frames`` frames of the
    previous clip's decoded frames (its ``frames``, (T, H, W, 3) uint8)."""

    vae_version: str
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    posterior: str = posterior_field()  # "mean" or "sample" (steps.longcat_posterior)
    stream: str = stream_field()  # the node whose ε a sample draws
    kind: str = "encode-longcat-segment"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("inputs.longcat_cond_frames", *VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.output import to_model_video

        frames = ctx.input("frames")["frames"]  # (T, H, W, 3) uint8
        last = frames[-ctx.params["inputs.longcat_cond_frames"]:].numpy()
        return {"latents": encode_latents(self, ctx, torch.from_numpy(to_model_video(last))).contiguous()}


@attrs.frozen
class LongCatSegmentDenoise(LongCatDenoise):
    """LongCat's denoise step for segment k ≥ 1: its noise drawn from ``[sampler].seed + k``."""

    segment: int = 1
    kind: str = "denoise-longcat-segment"

    def noise(self, p: Mapping[str, Any], cond: Any) -> Any:
        return super().noise({**p, "sampler.seed": p["sampler.seed"] + self.segment}, cond)


@attrs.frozen
class JoinSegments:
    """"frames" (T, H, W, 3) uint8: the first clip's frames, then each segment's after its
    conditioning frames (inputs ``clip.0``, ``clip.1``, … in order)."""

    clips: int  # the first clip and its segments
    kind: str = "join-longcat-segments"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("inputs.longcat_cond_frames",)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        k = ctx.params["inputs.longcat_cond_frames"]
        frames = [ctx.input(f"clip.{i}")["frames"] for i in range(self.clips)]
        return {"frames": torch.cat([frames[0], *(f[k:] for f in frames[1:])]).contiguous()}


def segment_count(values: Mapping[str, Any]) -> int:
    """The segments after the first clip: ``longcat_segments``, or one per segment prompt."""
    return max(values["inputs.longcat_segments"], len(values["inputs.longcat_segment_prompts"]))


def segment_nodes(nodes: list[StepSpec], values: Mapping[str, Any]) -> list[StepSpec]:
    """The plan's nodes with the chained continuations after the first clip (each with its own
    prompt's text step where segment prompts are given), and the save steps reading the joined
    video; unchanged when there are none."""
    segments, prompts = segment_count(values), tuple(values["inputs.longcat_segment_prompts"])
    if segments == 0:
        return nodes
    by_name = {n.name: n for n in nodes}
    denoise, decode, text = by_name["denoise"], by_name["decode"], by_name["encode-text:positive"]
    added = []
    for k in range(1, segments + 1):
        pos = {}
        if prompts:
            encode_text = attrs.evolve(text, name=f"encode-text:segment-{k}", step=attrs.evolve(
                text.step, prompt_key="inputs.longcat_segment_prompts", text=prompts[k - 1]))
            added.append(encode_text)
            pos = {"pos": encode_text.name}
        encode_step = EncodeSegmentFrames(decode.step.vae_version, decode.step.dtype, decode.step.device,
                                          decode.step.residency)
        added.append(StepSpec(segment_name("encode-conditioning", k), encode_step,
                              inputs={"frames": segment_name("decode", k - 1)}, weights=decode.weights))
        fields = {f.name: getattr(denoise.step, f.name) for f in attrs.fields(LongCatDenoise)
                  if f.name not in ("kind", "conditions", "tail")}
        step = LongCatSegmentDenoise(**fields, conditions=(ROLE,), tail=True, segment=k)  # continues a video
        inputs = {role: name for role, name in denoise.inputs.items() if role != ROLE}
        added.append(attrs.evolve(denoise, name=segment_name("denoise", k), step=step,
                                  inputs={**inputs, **pos, ROLE: segment_name("encode-conditioning", k)}))
        added.append(attrs.evolve(decode, name=segment_name("decode", k),
                                  inputs={"latents": segment_name("denoise", k)}))
    join = StepSpec(JOIN, JoinSegments(segments + 1),
                    inputs={f"clip.{k}": segment_name("decode", k) for k in range(segments + 1)})
    out = []
    for n in nodes:
        if "frames" in n.inputs and n.inputs["frames"] == "decode":  # save, save-frames
            n = attrs.evolve(n, inputs={**n.inputs, "frames": JOIN})
        out.append(n)
        if n.name == "decode":
            out += [*added, join]
    return out
