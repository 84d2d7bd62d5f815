"""diffusers reads what wanflow writes and finds the same ΔW (its own loaders as the reference).

- a diffusers-dialect file through ``load_lora_adapter`` (PEFT, alpha from the header's
  ``lora_adapter_metadata``): every LoRA layer's ``get_delta_weight`` equals wanflow's ΔW;
- musubi and comfyui files through ``WanLoraLoaderMixin.lora_state_dict`` (diffusers' converters,
  which fold alpha into the factors): lora_B @ lora_A equals wanflow's ΔW.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.lora import _dialects_fixtures as fx
from tests.models._dit_fixtures import diffusers_model, random_state
from wanflow.lora.delta import LoraFile, LowRank
from wanflow.lora.read import read_lora
from wanflow.lora.write import write_lora

pytest.importorskip("peft")

OFFICIAL_OF = {fx.diffusers_name(m): m for m in fx.modules()}


def lora_with_alphas(modules: list[str], alphas: bool = True) -> LoraFile:
    """Rank 4 everywhere; alpha 8 (scale 2) but 1 (scale 1/4) on the FFN, to exercise patterns."""
    f = fx.factors(seed=3)
    return LoraFile("test", {m + ".weight": LowRank(f.down[m], f.up[m], (1.0 if ".ffn." in m else 8.0) if alphas else None)
                             for m in modules})


def test_diffusers_loads_our_diffusers_file_with_the_same_deltas(tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    lora = lora_with_alphas(fx.modules())
    path = write_lora(lora, tmp_path / "d.safetensors", "diffusers")
    model = diffusers_model(fx.CFG, random_state(fx.CFG))
    # use_safetensors=True, as load_lora_weights passes it: only then is the header's config read
    model.load_lora_adapter(str(path), prefix="transformer", adapter_name="w", use_safetensors=True)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer) and "w" in m.lora_A}
    assert sorted(layers) == sorted(OFFICIAL_OF)
    for name, layer in layers.items():
        theirs = layer.get_delta_weight("w").float()
        torch.testing.assert_close(theirs, lora.deltas[OFFICIAL_OF[name] + ".weight"].tensor(),
                                   rtol=1e-6, atol=1e-8, msg=name)


BLOCKS = [m for m in fx.modules() if m.startswith("blocks.")]


@pytest.mark.parametrize(("dialect", "modules", "alphas"), [
    ("musubi", BLOCKS, True),  # diffusers' musubi converter takes exactly the per-block set
    ("comfyui", BLOCKS, True),  # its comfyui converter reads alpha inside the blocks only
    ("comfyui", fx.modules(), False),
])
def test_diffusers_converters_read_our_files_as_we_do(tmp_path, dialect, modules, alphas):
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    lora = lora_with_alphas(modules, alphas)
    path = write_lora(lora, tmp_path / f"{dialect}.safetensors", dialect)
    converted = WanLoraLoaderMixin.lora_state_dict(str(path))
    downs = {k.removeprefix("transformer.").removesuffix(".lora_A.weight"): v
             for k, v in converted.items() if k.endswith(".lora_A.weight")}
    assert sorted(downs) == sorted(fx.diffusers_name(m) for m in modules)
    for name, down in downs.items():
        up = converted[f"transformer.{name}.lora_B.weight"]
        torch.testing.assert_close(up.float() @ down.float(), lora.deltas[OFFICIAL_OF[name] + ".weight"].tensor(),
                                   rtol=1e-5, atol=1e-7, msg=name)


def test_we_read_diffusers_own_converted_state_dict_as_the_source(tmp_path):
    """The other direction: diffusers' conversion of a musubi file, read by wanflow, gives the same ΔW."""
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    made = fx.musubi(alpha=2.0)
    state = {k: v for k, v in made.state.items() if k.startswith("lora_unet_blocks_")}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    ours = read_lora(path)
    theirs = read_lora(WanLoraLoaderMixin.lora_state_dict(str(path)))
    assert theirs.dialect == "diffusers"
    assert sorted(ours.deltas) == sorted(theirs.deltas)
    for param, delta in ours.deltas.items():
        torch.testing.assert_close(theirs.deltas[param].tensor(), delta.tensor(), rtol=1e-5, atol=1e-7)
