"""DiTs with derivative parts (Wan-Fun V1.1's reference conv, the camera adapter, VACE's blocks)
streamed in generation, through the real pipeline.

The streamed DiT is built from the config as the resident load reads it, its parts told by the
weights; a run that streams its blocks from host memory and disk denoises to the resident run's
latents, to the bit, under the same step key (placement is in no key).
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_fun import write_fun_models_root
from tests.e2e._layout_vace import write_vace_root
from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_lora_runs import denoised
from wanflow.memory import pool as model_pool

#: family -> the inputs its run takes (media names of the ``media`` fixture).
FAMILIES = {
    "wan2.1-fun-v1.1-1.3b-control": {"control_video": "control", "reference_image": "last"},
    "wan2.1-fun-v1.1-1.3b-control-camera": {"image": "first"},
    "wan2.1-vace-1.3b": {},  # no [inputs.vace]: a grey video, all generated
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    fun = write_fun_models_root(tmp_path_factory.mktemp("fun-models"))
    vace = write_vace_root(tmp_path_factory.mktemp("vace-models"))
    return {"fun": fun, "vace": vace}


@pytest.fixture(scope="module")
def media(tmp_path_factory, images):
    from tests.e2e.test_fun_runs import _write_video

    folder = tmp_path_factory.mktemp("variant-inputs")
    _write_video(folder / "control.mp4", 6, 7)
    return dict(images) | {"control": folder / "control.mp4"}


def _placed() -> list:
    return [e.model for k, e in model_pool._POOL.items() if k[0] == "dit" and hasattr(e.model, "placement")]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_dit_with_derivative_parts_streamed_makes_the_resident_latents(family, roots, media, tmp_path,
                                                                         monkeypatch):
    from wanflow.steps import pipeline

    runs = use_models(roots["vace" if "vace" in family else "fun"], tmp_path, monkeypatch)
    inputs = {k: media[v] for k, v in FAMILIES[family].items()}
    extra = {"camera": {"direction": "LeftUp"}} if "camera" in family else {}
    recipe = write_recipe(tmp_path, family, inputs, video={"width": 16, "height": 16})
    if extra:
        import tomlkit

        doc = tomlkit.parse(recipe.read_text())
        doc["inputs"].update(extra)
        recipe.write_text(tomlkit.dumps(doc))
    model_pool.clear()
    resident = run(recipe, runs)
    model_pool.clear()
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "streamed-cache"))
    blocks = {}

    def tiers(plan, dits):
        count = len(plan.placement(dits[0]).blocks) if plan is not None else 2
        blocks["tiers"] = tuple(("disk", "host")[i % 2] for i in range(count))
        return tuple((d, blocks["tiers"]) for d in dits)

    monkeypatch.setattr(pipeline, "_tiers", tiers)
    try:
        streamed = run(recipe, runs)
        assert [b.tier for b in _placed()[0].placement.blocks] == list(blocks["tiers"])
    finally:
        model_pool.clear()
    assert "denoise" in computed(streamed)
    assert streamed.results["denoise"].key == resident.results["denoise"].key
    assert torch.equal(denoised(streamed), denoised(resident))
