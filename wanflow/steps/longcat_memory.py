"""The memory plan of a LongCat-Video job, before anything loads.

As a Wan job's (``wanflow.steps.memory_plan``), with LongCat's DiT read as what it is: its config
comes from its own keys (``models.longcat_config.from_shapes``), its weights are sized from its
headers with its own fp32 islands, and its denoise step's activations from
``memory.longcat_estimate`` at the recipe's size and its conditioning frames. Every policy
applies: under ``stream`` and ``disk`` its blocks are placed in tiers by the same hooks as a Wan
DiT's (``memory.streamed.load_placed_longcat``). Blocks stored in fp8 (``[memory].fp8``) stream
as fp8 (``memory.fp8_placed``), sized at their fp8 bytes with the row scales outside the blocks
(they stay on the device); compiled blocks (``[runtime].compile``) stream where torch can
(``pool.compiled_blocks_stream``: 2.5 or later), and are sized whole and moved whole otherwise,
as a Wan DiT's are. The 720p refinement denoises with the same DiT, so its plan is the same. A
plan that cannot fit is refused here with the numbers and the changes that fit, before any
weight is read.

A training job adds its train step (``steps.longcat_train_memory``), as a Wan training job's
plan does: the DiT it trains stays resident whatever the policy, with its trained state and the
activations of the dataset's largest bucket (``memory.longcat_train_estimate``); a train step
that cannot fit is refused the same way, naming the [train] changes that would fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from wanflow.memory.estimates import latent_grid, text_encode_bytes, vae_decode_bytes
from wanflow.memory.longcat_estimate import (
    bsa_bytes,
    cond_latent_frames,
    longcat_forward_bytes,
)
from wanflow.memory.planner import Budgets, MemoryPlan, StepDemand, plan
from wanflow.memory.sizes import ComponentSize, TensorInfo, component_size, read_headers
from wanflow.models import longcat_config
from wanflow.steps.longcat_segments import segment_count
from wanflow.steps.longcat_train_memory import longcat_train_step_peak
from wanflow.steps.memory_plan import (
    ITEMSIZE,
    component_sizes,
    device_budget,
    host_budget,
    text_encoder_fraction,  # the text encoder's share of umT5-XXL, as a Wan job's plan scales it
)

#: The policies a LongCat job can honour, fastest first (the planner's).
POLICIES = ("none", "offload", "stream", "disk")
#: A training job's other steps': the train step's DiT is planned by the train step itself, whose
#: frozen base streams its blocks under ``stream`` and ``disk`` (``train_stream_plan``); the job's
#: other models then move whole as ``auto`` moves them.
TRAIN_POLICIES = ("none", "offload")
#: The Wan2.1 VAE's decoder base width (LongCat reads Wan2.1's VAE).
DECODER_DIM = 96


def longcat_memory_plan(job: Any, device: str, dtype_name: str) -> MemoryPlan:
    """The job's plan (``wanflow.memory.planner.plan`` under ``POLICIES``), or MemoryPlanError."""
    v = job.values
    itemsize = ITEMSIZE.get(dtype_name, 4)
    files = {name: [w.path for w in weights.values()] for name, weights in job.weights.items()
             if name not in ("lora", "train_files")}  # LoRA files patch the DiT; they are not models
    tensors = read_headers(Path(p) for p in files["dit"])
    config = longcat_config.from_shapes({k: t.shape for k, t in tensors.items()}, str(files["dit"][0]))
    dit = dit_size(tensors, itemsize, whole=not may_stream_blocks(v, job.resolved.recipe.train is not None))
    sizes = [dit.as_fp8() if v["memory.fp8"] else dit,
             *component_sizes({n: f for n, f in files.items() if n != "dit"}, itemsize, fp8=False)]
    budgets = Budgets(device_budget(v, device), host_budget(v, device))
    on_host = frozenset(name for name in files if job.device(name) == "cpu") if device != "cpu" else frozenset()
    trains = job.resolved.recipe.train is not None
    policy = "auto" if trains and v["memory.policy"] in ("stream", "disk") else v["memory.policy"]  # the train step's
    found = plan(budgets, policy, sizes, demands(job, config, itemsize), host_compute=on_host,
                 policies=TRAIN_POLICIES if trains else POLICIES,
                 whole_on_device=frozenset({"dit"}))  # its step computes where the run does
    if job.resolved.recipe.train is None:
        return found
    train = longcat_train_step_peak(job, config, tensors, itemsize, device, found.budgets)
    return attrs.evolve(found, peaks=(*found.peaks, train))


def may_stream_blocks(v: Mapping[str, Any], trains: bool) -> bool:
    """Whether the plan may stream the DiT's blocks: not for a train step, which holds the DiT it
    trains whole, nor for compiled blocks under a torch older than 2.5 (``pool.compiled_blocks_stream``:
    a swapped parameter would recompile them). fp8 blocks stream as fp8 (``memory.fp8_placed``)."""
    from wanflow.memory.pool import compiled_blocks_stream

    return not trains and (v["runtime.compile"] == "none" or compiled_blocks_stream())


def dit_size(tensors: Mapping[str, TensorInfo], itemsize: int, *, whole: bool = False) -> ComponentSize:
    """LongCat's DiT at ``itemsize`` with its fp32 islands, per block (``whole``: as one piece,
    never placed apart), and its size with the block projections in fp8 (``as_fp8``:
    ``[memory].fp8``, or a fix the planner offers)."""
    size = component_size("dit", tensors, itemsize, keeps_fp32=longcat_config.keeps_fp32, blocks=True)
    return attrs.evolve(size, block_bytes=(), fp8_block_bytes=()) if whole else size


def demands(job: Any, config: longcat_config.LongCatConfig, itemsize: int) -> list[StepDemand]:
    """The steps that load models, with their activations at the recipe's size: the text encode,
    the denoise (with the continuation's cached conditioning frames) and the decode."""
    v = job.values
    frames, height, width = v["video.frames"], v["video.height"], v["video.width"]
    grid = latent_grid(frames, height, width, "wan2.1")
    continues = job.given("longcat_video") or segment_count(v) > 0  # a long video's segments do
    cond = cond_latent_frames(v["inputs.longcat_cond_frames"]) if continues else 1 if job.given("image") else 0
    merged = 2 if v["sampler.cfg_merge"] and v["sampler.cfg"] != 1.0 else 1  # both guidance passes at once
    latent_tile = tuple(v["vae.tile_size"]) if v["vae.tiled"] else None
    tile = pixels_tile(latent_tile, height, width)
    return [
        StepDemand("encode-text", ("text_encoder",),
                   int(text_encode_bytes(itemsize=itemsize) * text_encoder_fraction(job))),
        StepDemand("denoise", ("dit",), longcat_forward_bytes(config, grid, itemsize, cond, batch=merged)),
        StepDemand("decode", ("vae",), vae_decode_bytes("wan2.1", DECODER_DIM, frames, height, width, itemsize,
                                                        tile=tile)),
        *(refine_demands(v, config, itemsize, latent_tile, refine_cond(job)) if v["inputs.longcat_refine"] else ()),
    ]


def refine_demands(v: Mapping[str, Any], config: longcat_config.LongCatConfig, itemsize: int,
                   tile: tuple[int, int] | None, cond: str) -> list[StepDemand]:
    """The 720p refinement's steps (``steps.longcat_refine``): the encode of the upscaled clip
    (sized as its decode, an upper bound), the denoise of its latents with block-sparse attention
    (one pass a step, its conditioning frames ``cond`` cached; what the attention adds follows
    ``[runtime].sparse_attention``: gathered chunks, or FlexAttention's block mask) and their decode."""
    from wanflow.steps import longcat_refine as refine

    width, height = refine.refined_size(v)
    layout = refine.Layout.of(refine.refined_frames(v), refine.cond_frames(v, cond))
    frames = layout.read  # what the VAE reads and the decode makes
    grid = latent_grid(frames, height, width, "wan2.1")
    vae = vae_decode_bytes("wan2.1", DECODER_DIM, frames, height, width, itemsize,
                           tile=pixels_tile(tile, height, width))
    dit = (longcat_forward_bytes(config, grid, itemsize, layout.cond_latents)
           + bsa_bytes(config, grid, itemsize, refine.sparse_implementation(v)))
    return [StepDemand(refine.ENCODE, ("vae",), vae), StepDemand(refine.DENOISE, ("dit",), dit),
            StepDemand(refine.DECODE, ("vae",), vae)]


def refine_cond(job: Any) -> str:
    """What conditions the largest refined clip: a long video's later windows hold the previous
    window's frames; else the image, or the continued video's frames, or nothing."""
    from wanflow.steps.longcat_refine import clip_cond

    return "segment" if segment_count(job.values) else clip_cond(job.resolved.recipe.inputs)


def pixels_tile(tile: tuple[int, int] | None, height: int, width: int) -> tuple[int, int] | None:
    """A tiled VAE's tile in pixels at a video's size (None: not tiled)."""
    return (min(tile[0] * 8, height), min(tile[1] * 8, width)) if tile else None

