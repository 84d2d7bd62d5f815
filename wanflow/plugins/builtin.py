"""wanflow's own families, samplers, savers and attention backends, registered through the public hooks."""

from __future__ import annotations

import importlib
from typing import Any

from wanflow.families import animate, fun, krea, longcat, s2v, tiny, vace, vap, wan
from wanflow.plugins.hookspecs import AttentionEntry, SamplerEntry, SaverEntry, hookimpl

NAME = "wanflow"


def _lazy(module: str, attr: str) -> Any:
    return lambda: getattr(importlib.import_module(module), attr)


@hookimpl
def wanflow_families() -> list:
    return [*wan.families(), *vace.families(), *fun.families(), krea.family(), *vap.families(), s2v.family(),
            *animate.families(), longcat.family(), tiny.family()]


def _builtin_solver(name: str) -> Any:
    return lambda: importlib.import_module("wanflow.sampling").BUILTIN_SOLVERS[name]


@hookimpl
def wanflow_samplers() -> list[SamplerEntry]:
    return [SamplerEntry("euler", _builtin_solver("euler"), "flow-matching Euler (DiffSynth's)"),
            SamplerEntry("unipc", _builtin_solver("unipc"), "UniPC (Zhao et al. 2023), official"),
            SamplerEntry("dpm++", _builtin_solver("dpm++"), "DPM-Solver++ 2M (Lu et al. 2022)"),
            SamplerEntry("flow", _builtin_solver("flow"),
                         "flow-matching Euler on diffusers' FlowMatchEulerDiscreteScheduler grid: VideoX-Fun's "
                         "\"Flow\", the Wan-Fun authors' default"),
            SamplerEntry(krea.CAUSAL_SOLVER, _lazy("wanflow.sampling.krea", "sample_blocks"),
                         "Krea Realtime's block-causal few-step sampler (its own denoise step; krea-realtime-video only)"),
            SamplerEntry(longcat.SOLVER, _lazy("wanflow.sampling.longcat", "SOLVER"),
                         "LongCat-Video's Euler over its own σ list (and enhance_hf tail, continuing) (longcat-video only)"),
            SamplerEntry(longcat.DISTILLED_SOLVER, _lazy("wanflow.sampling.longcat", "DISTILLED_SOLVER"),
                         "LongCat-Video's distilled Euler: 16 of its 50 timesteps, for its cfg_step LoRA (longcat-video only)")]


@hookimpl
def wanflow_pipelines() -> dict[str, Any]:
    # light: step kinds import torch only when they run
    from wanflow.steps.pipeline import PIPELINES
    from wanflow.steps.pipeline_animate import AnimatePipeline
    from wanflow.steps.pipeline_krea import KreaPipeline
    from wanflow.steps.pipeline_longcat import LongCatPipeline
    from wanflow.steps.pipeline_s2v import S2VPipeline

    return {**PIPELINES, krea.PIPELINE: KreaPipeline(), s2v.PIPELINE: S2VPipeline(),
            animate.PIPELINE: AnimatePipeline(), longcat.PIPELINE: LongCatPipeline()}


@hookimpl
def wanflow_savers() -> list[SaverEntry]:
    return [SaverEntry("mp4", ".mp4", _lazy("wanflow.output.video", "save_mp4"), "H.264 through imageio-ffmpeg")]


def _attention(name: str, description: str, packages: tuple[str, ...] = ()) -> AttentionEntry:
    """A kernel of ``wanflow.models.attention`` (imported, with torch, only when asked)."""
    module = "wanflow.models.attention"
    kernels = {"sdpa": "sdpa", "math": "math_attention", "cudnn": "cudnn_attention",
               "flash3": "flash3_attention", "flash4": "flash4_attention", "sage": "sage_attention"}

    def problems(device: str, dtype: str) -> list[str]:
        return importlib.import_module(module).backend_problems(name, device, dtype)

    return AttentionEntry(name, "1", _lazy(module, kernels[name]), problems, packages, description)


@hookimpl
def wanflow_attention_backends() -> list[AttentionEntry]:
    return [_attention("sdpa", "torch's scaled-dot-product attention, its fastest kernel for the device"),
            _attention("math", "softmax(QK^T/sqrt(D))V in fp32: the slow, readable reference"),
            _attention("cudnn", "torch's SDPA held to the cuDNN kernel (CUDA, bf16/fp16, sm80+)"),
            _attention("flash3", "FlashAttention 3 (Hopper GPUs, bf16/fp16)", ("flash_attn_3", "flashattn-hopper")),
            _attention("flash4", "FlashAttention 4, CuTe DSL (CUDA sm80-sm12x, bf16/fp16), compiled at first use",
                       ("flash-attn-4", "nvidia-cutlass-dsl")),
            _attention("sage", "SageAttention: INT8 QK^T (CUDA, bf16/fp16, sm80+)", ("sageattention",))]
