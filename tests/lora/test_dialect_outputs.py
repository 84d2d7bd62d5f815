"""Every dialect end to end: a LoRA written by hand in that dialect's exact keys, read and merged
into a tiny DiT, gives the output of the base model whose weights had ΔW added by hand."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.lora import _dialects_fixtures as hand_made
from tests.models._dit_fixtures import inputs, random_state
from wanflow.lora import merge, read_lora
from wanflow.models.dit import WanDiT

DIALECTS = ("diffsynth", "raw_peft", "diffusion_pipe", "musubi", "videox_fun", "diffusers", "lightx2v",
            "lycoris")


def model_with(state: dict[str, torch.Tensor]) -> WanDiT:
    model = WanDiT(hand_made.CFG)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_file_in_each_dialect_patches_the_model_as_its_delta_added_by_hand(dialect, tmp_path):
    made = getattr(hand_made, dialect)()
    path = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in made.state.items()}, str(path), metadata=made.metadata or None)
    base_state = random_state(hand_made.CFG, seed=3)
    expected_state = dict(base_state)
    for name, delta in made.expected.items():
        expected_state[name] = expected_state[name] + 0.8 * delta.reshape(expected_state[name].shape)
    model = model_with(base_state)
    merge(model, [read_lora(path)], [0.8])
    x = inputs(hand_made.CFG, seed=5)
    with torch.no_grad():
        ours, expected, base = model(**x), model_with(expected_state)(**x), model_with(base_state)(**x)
    scale = expected.abs().max()
    assert (base - expected).abs().max() / scale > 1e-3  # the LoRA matters
    assert (ours - expected).abs().max() / scale < 1e-5
