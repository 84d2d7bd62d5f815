"""The tiny family of the quickstart: the same code paths as a real family, weights that ship
with wanflow, seconds on a CPU. It was trained (by wanflow's own training stage, on
``recipes/train-quickstart.toml``) to draw one coloured shape moving over a plain background, and
draws what a prompt in that vocabulary says (docs/quickstart-model.md).

Its defaults are what it was trained for: 17 frames of 64×64 at 16 fps, shift 3, and guidance at
cfg 2 against the empty prompt (its last training runs dropped 10 % of the captions, so it has an
unconditional prediction; guidance is what turns its nearly-square balls into squares, and a
negative prompt in words would be words it never saw)."""

from __future__ import annotations

from wanflow.conditioners import conditioner
from wanflow.families.spec import ComponentSpec, FamilySpec

SOURCE = "builtin:wanflow-tiny"


def family() -> FamilySpec:
    return FamilySpec(
        "wanflow-tiny", "A tiny Wan-architecture T2V model for trying wanflow on a CPU (no download)",
        {"dit": ComponentSpec("dit", SOURCE, ("dit/*",), "wanflow-tiny-dit"),
         "text_encoder": ComponentSpec("text_encoder", SOURCE, ("text_encoder/*",), "umt5-tiny"),
         "tokenizer": ComponentSpec("tokenizer", SOURCE, ("tokenizer/*",), "byt5"),
         "vae": ComponentSpec("vae", SOURCE, ("vae/*",), "wan2.1-vae-tiny")},
        {"video.width": 64, "video.height": 64, "video.frames": 17, "video.fps": 16, "sampler.solver": "euler",
         "sampler.steps": 20, "sampler.shift": 3.0, "sampler.cfg": 2.0, "prompt.negative": ""},
        frozenset({"video"}), spatial_factor=16, conditioners=(conditioner("source-latent"),))
