"""Krea Realtime (krea/krea-realtime-video) as a family: a Wan2.1-T2V-14B DiT distilled into a
block-causal, few-step video model, sampled as its authors sample it.

The weights are one file, ``krea-realtime-video-14b.safetensors``, holding the Wan2.1-T2V-14B keys
behind ``model.``; text encoder, tokenizer and VAE are Wan2.1-T2V-14B's. Nothing causal is in the
weights: it is how the model is run. Two ways, chosen by ``[sampler].solver`` (docs/krea.md):

- ``"krea-causal"`` (the default, the authors' ``release_server.py``): blocks of 3 latent frames,
  each attending to a KV cache of 3 context frames recomputed per block, 5 steps of
  predict-x0-then-re-noise at shift 5, no guidance. Its own denoise step (``denoise_causal``);
- ``"euler"`` with 6 steps, shift 20, cfg 1 (DiffSynth-Studio's example): the ordinary
  bidirectional pipeline over the whole clip (``recipes/krea-realtime-diffsynth.toml``).
"""

from __future__ import annotations

from wanflow.families.spec import ComponentSpec, FamilySpec
from wanflow.families.wan import SOURCE, T2V_SIZES_14B
from wanflow.families.wan import families as wan_families

NAME = "krea-realtime-video"
#: The solver name of the authors' block-causal sampler; a family opts in by listing it in ``solvers``.
CAUSAL_SOLVER = "krea-causal"
#: The pipeline that runs this family's steps (the Wan pipeline, with a block-causal denoise step).
PIPELINE = "krea"
#: Latent frames generated per block (the authors' ``num_frame_per_block``).
FRAMES_PER_BLOCK = 3
#: The authors' server default: 9 blocks of 3 latent frames (27 latent frames = 105 frames).
BLOCKS = 9
SOURCE_REPO = "modelscope:krea/krea-realtime-video"
#: Where the text encoder, tokenizer and VAE come from (DiffSynth's example takes them from here too).
BASE = "wan2.1-t2v-14b"


def frames_of(blocks: int) -> int:
    """Pixel frames of ``blocks`` whole blocks: 4·(latent frames − 1) + 1 (the VAE's 4n+1)."""
    return 4 * (blocks * FRAMES_PER_BLOCK - 1) + 1


def family() -> FamilySpec:
    """krea-realtime-video with its authors' defaults (832×480, 9 blocks, 5 steps, shift 5, no CFG)."""
    base = next(f for f in wan_families() if f.name == BASE)
    components = {
        "dit": ComponentSpec("dit", SOURCE_REPO, ("krea-realtime-video-14b.safetensors",), "krea-realtime-video-14b"),
        **{name: spec for name, spec in base.components.items() if name != "dit"},
    }
    defaults = {"video.width": 832, "video.height": 480, "video.frames": frames_of(BLOCKS), "video.fps": 16,
                "sampler.solver": CAUSAL_SOLVER, "sampler.steps": 5, "sampler.shift": 5.0, "sampler.cfg": 1.0,
                "prompt.negative": ""}
    return FamilySpec(NAME, "Krea Realtime 14B: Wan2.1-T2V-14B distilled to block-causal few-step video "
                      f"(krea/krea-realtime-video); [sampler].solver = \"{CAUSAL_SOLVER}\" as its authors "
                      "sample it, or \"euler\" as DiffSynth does", components, defaults,
                      frozenset({"video"}), sizes=T2V_SIZES_14B,
                      solvers=(CAUSAL_SOLVER, "euler", "unipc", "dpm++"), pipeline=PIPELINE, conditioners=(SOURCE,))
