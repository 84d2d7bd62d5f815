"""LongCat-Video (meituan-longcat/LongCat-Video) as a family: its own DiT, text-to-video and video
continuation, sampled as its authors sample it or as DiffSynth-Studio does.

The DiT is the release's ``dit/`` folder (sharded ``diffusion_pytorch_model-0000N-of-0000M
.safetensors`` behind their index, and ``config.json``); the release's
``scheduler/scheduler_config.json`` gives the flow shift of the authors' σ list, so it travels
with the DiT's files (and its digest is in the denoise step's key). The text encoder and VAE are
umT5-XXL and the Wan2.1 VAE, read from Wan-AI/Wan2.1-T2V-14B's files as DiffSynth does: the
release's own ``text_encoder/`` and ``vae/`` hold the same weights in transformers' and
diffusers' layouts (docs/longcat.md).

Three ways to sample, chosen by ``[sampler].solver`` (docs/longcat.md):

- ``"longcat"`` (the default, the authors' ``generate_vc``): Euler over ``linspace(1, 0.001, N)``
  shifted by the release's scheduler shift, with the ``enhance_hf`` tail when continuing frames,
  and CFG-Zero* at 4;
- ``"longcat-distill"`` (the authors' distilled run): 16 steps picked from their 50-step grid,
  without guidance, with the release's ``lora/cfg_step_lora.safetensors`` as a ``[[lora]]``;
- ``"euler"`` with shift 1 and plain CFG 2 (DiffSynth-Studio's example;
  ``recipes/longcat-video-diffsynth.toml``).

Image-to-video: ``[inputs].image`` is held as the clip's first frame (one latent frame), as the
authors' ``generate_i2v`` holds it.

Video continuation: ``[inputs].longcat_video`` (DiffSynth's name for it) is the video to continue;
its last ``[inputs].longcat_cond_frames`` frames (the authors' 13; DiffSynth's example 17) are
VAE-encoded and held as the first latent frames, clean, at t = 0, attending only to themselves.
"""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.families.vap import NEGATIVE
from wanflow.families.wan import families as wan_families

NAME = "longcat-video"
REPO = "meituan-longcat/LongCat-Video"
#: The solver name of the authors' sampler (σ list; enhance_hf tail for continuations); CFG-Zero* is the recipe's.
SOLVER = "longcat"
#: The authors' distilled sampler: 16 of their 50 timesteps, for the release's cfg_step LoRA.
DISTILLED_SOLVER = "longcat-distill"
#: The solvers whose grid is the authors' and takes its shift from the release's scheduler config.
AUTHORS_SOLVERS = (SOLVER, DISTILLED_SOLVER)
#: The LoRA the distilled sampler's schedule was distilled with, in the release.
DISTILLED_LORA = "lora/cfg_step_lora.safetensors"
#: The LoRA the authors' 720p refinement runs with, in the release (a ``[[lora]]`` with target "refine").
REFINE_LORA = "lora/refinement_lora.safetensors"
#: The stage of ``[inputs].longcat_refine``, a LoRA target of its own.
REFINE_STAGE = "refine"
#: The authors' 720p sizes for refinement, (height, width) by height/width ratio: the refined video
#: takes the one whose ratio is nearest the video's (their ``get_condition_shape(..., "720p", 64)``,
#: ``ASPECT_RATIO_960_F64``); each a multiple of 64 (VAE stride 8 x patch 2 x attention chunk 4).
REFINE_SIZES = {0.22: (448, 2048), 0.29: (512, 1792), 0.36: (576, 1600), 0.45: (640, 1408), 0.55: (704, 1280),
                0.63: (768, 1216), 0.76: (832, 1088), 0.88: (896, 1024), 1.00: (960, 960), 1.14: (1024, 896),
                1.31: (1088, 832), 1.50: (1152, 768), 1.58: (1216, 768), 1.82: (1280, 704), 1.91: (1344, 704),
                2.20: (1408, 640), 2.30: (1472, 640), 2.67: (1536, 576), 2.89: (1664, 576), 3.62: (1856, 512),
                3.75: (1920, 512)}
#: The authors' generation sizes, (height, width) by height/width ratio, for ``resolution`` "480p"
#: (``ASPECT_RATIO_627``) and "720p" (``ASPECT_RATIO_960``): the buckets ``get_condition_shape``
#: picks from at their 16-pixel scale (VAE stride 8 x patch 2, no context parallelism).
SIZE_BUCKETS = {
    "480p": {0.26: (320, 1216), 0.31: (352, 1120), 0.38: (384, 1024), 0.43: (416, 960), 0.52: (448, 864),
             0.58: (480, 832), 0.67: (512, 768), 0.74: (544, 736), 0.86: (576, 672), 0.95: (608, 640),
             1.05: (640, 608), 1.17: (672, 576), 1.29: (704, 544), 1.35: (736, 544), 1.50: (768, 512),
             1.67: (800, 480), 1.73: (832, 480), 2.00: (896, 448), 2.31: (960, 416), 2.58: (992, 384),
             2.75: (1056, 384), 3.09: (1088, 352), 3.70: (1184, 320), 3.80: (1216, 320), 3.90: (1248, 320),
             4.00: (1280, 320)},
    "720p": {0.25: (480, 1920), 0.29: (512, 1792), 0.32: (544, 1696), 0.36: (576, 1600), 0.40: (608, 1504),
             0.49: (672, 1376), 0.54: (704, 1312), 0.59: (736, 1248), 0.69: (800, 1152), 0.74: (832, 1120),
             0.82: (864, 1056), 0.88: (896, 1024), 0.94: (928, 992), 1.00: (960, 960), 1.07: (992, 928),
             1.14: (1024, 896), 1.22: (1056, 864), 1.31: (1088, 832), 1.35: (1120, 832), 1.44: (1152, 800),
             1.70: (1248, 736), 2.00: (1344, 672), 2.05: (1376, 672), 2.47: (1504, 608), 2.53: (1536, 608),
             2.83: (1632, 576), 3.06: (1664, 544), 3.12: (1696, 544), 3.62: (1856, 512), 3.93: (1888, 480),
             4.00: (1920, 480)},
}
#: What a refined size must be a multiple of: the VAE's stride x the patch x the attention chunk.
REFINE_MULTIPLE = 64
#: The pipeline that runs this family's steps (the Wan pipeline with LongCat's denoise step).
PIPELINE = "longcat"
#: Where the umT5 encoder, its tokenizer and the Wan2.1 VAE come from (DiffSynth's example too).
ENCODERS = "wan2.1-t2v-14b"
#: The released DiT's files, and the scheduler config whose shift the authors' σ list uses.
DIT_FILES = ("dit/diffusion_pytorch_model*.safetensors", "dit/diffusion_pytorch_model.safetensors.index.json",
             "dit/config.json", "scheduler/scheduler_config.json")
#: Where the release's scheduler config sits among the DiT component's files.
SCHEDULER_CONFIG = "scheduler_config.json"
#: The authors' conditioning frames of a continuation (``num_cond_frames``, 13 -> 4 latent frames).
COND_FRAMES = 13
#: DiffSynth's LoRA targets for LongCat's DiT (its own module names; examples/.../lora/LongCat-Video.sh).
LORA_TARGETS = ("adaLN_modulation.1", "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
                "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")
#: The authors' defaults (``run_demo_video_continuation.py``): 93 frames (the 13 conditioning ones
#: included) at 15 fps, 480p, 50 steps, CFG-Zero* at 4, the English Wan negative prompt.
DEFAULTS = {"video.width": 832, "video.height": 480, "video.frames": 93, "video.fps": 15,
            "sampler.solver": SOLVER, "sampler.steps": 50, "sampler.cfg": 4.0, "sampler.cfg_zero_star": True,
            "prompt.negative": NEGATIVE, "inputs.longcat_cond_frames": COND_FRAMES,
            "train.lora_targets": LORA_TARGETS}
#: The distilled run's own defaults (``run_demo_video_continuation.py``: 16 steps, guidance 1).
SOLVER_DEFAULTS = {DISTILLED_SOLVER: {"sampler.steps": 16, "sampler.cfg": 1.0, "sampler.cfg_zero_star": False}}


def family() -> FamilySpec:
    """longcat-video with its authors' defaults."""
    base = next(f for f in wan_families() if f.name == ENCODERS)
    dit = ComponentSpec("dit", f"modelscope:{REPO}", DIT_FILES, "longcat-video")
    components = {"dit": dit, **{name: spec for name, spec in base.components.items() if name != "dit"}}
    return FamilySpec(
        NAME, f"LongCat-Video 13.6B: text-to-video, image-to-video ([inputs].image) and video continuation "
        f"from [inputs].longcat_video ({REPO}); "
        f'[sampler].solver = "{SOLVER}" as its authors sample it ("{DISTILLED_SOLVER}": their 16-step distilled run), '
        'or "euler" as DiffSynth does; [inputs].longcat_refine: the authors\' 720p refinement',
        components, DEFAULTS, frozenset({"longcat_video", "image"}), sizes=((832, 480), (480, 832)),
        solvers=(*AUTHORS_SOLVERS, "euler"), solver_defaults=SOLVER_DEFAULTS, pipeline=PIPELINE,
        conditioners=(conditioner("longcat-frames"),), lora_stages=(REFINE_STAGE,))


def refine_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the refined video: the authors' 720p size nearest the aspect of a
    ``width`` x ``height`` video (``REFINE_SIZES``)."""
    ratio = height / width
    h, w = REFINE_SIZES[min(REFINE_SIZES, key=lambda r: abs(r - ratio))]
    return w, h


def bucket_size(width: int, height: int, resolution: str) -> tuple[int, int]:
    """(width, height) of the clip made from an input of ``width`` x ``height`` at ``resolution``
    ("480p" or "720p"): the authors' bucket whose height/width ratio is nearest the input's, the
    first of two as near (``SIZE_BUCKETS``; their ``get_condition_shape``)."""
    buckets = SIZE_BUCKETS[resolution]
    h, w = buckets[min(buckets, key=lambda r: abs(r - height / width))]
    return w, h
