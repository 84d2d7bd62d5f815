"""The tiny family of the quickstart: the same code paths as a real family, weights that ship
with wanflow, seconds on a CPU. It draws noise-like video: it proves the machinery, not the art."""

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
        {"video.width": 64, "video.height": 64, "video.frames": 9, "video.fps": 8, "sampler.solver": "euler",
         "sampler.steps": 8, "sampler.shift": 3.0, "sampler.cfg": 3.0, "prompt.negative": "blurry, static"},
        frozenset({"video"}), spatial_factor=16, conditioners=(conditioner("source-latent"),))
