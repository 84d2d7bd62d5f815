"""Small builders for recipe tests: write recipe files, a static family registry."""

from __future__ import annotations

from pathlib import Path

from wanflow.recipe import ComponentSpec, FamilySpec, StaticFamilies

TOY = FamilySpec(
    "toy-t2v", "a toy family for tests",
    {"dit": ComponentSpec("dit", "modelscope:toy/toy", ("dit.safetensors",)),
     "vae": ComponentSpec("vae", "modelscope:toy/toy", ("vae.pth",))},
    {"video.width": 64, "video.height": 48, "video.frames": 9, "sampler.steps": 7, "prompt.negative": "ugly"},
    accepted_inputs=frozenset({"video", "image"}), spatial_factor=16)
TOY_I2V = FamilySpec("toy-i2v", "needs an image", TOY.components, TOY.defaults,
                     accepted_inputs=frozenset({"image"}), required_inputs=frozenset({"image"}))
FAMILIES = StaticFamilies({f.name: f for f in (TOY, TOY_I2V)})


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
