"""Weights still mapped from a checkpoint file move into process memory, values unchanged."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn

from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.loading import build_on_meta, load_state_into
from wanflow.models.residency import _is_file_backed, file_backed_ranges, materialize


def _loaded(tmp_path):
    torch.manual_seed(0)
    state = {"0.weight": torch.randn(64, 256), "0.bias": torch.randn(64), "1.weight": torch.randn(8, 64),
             "1.bias": torch.randn(8)}
    save_file(state, str(tmp_path / "m.safetensors"))
    model = build_on_meta(lambda: nn.Sequential(nn.Linear(256, 64), nn.Linear(64, 8)))
    load_state_into(model, open_state_dict(tmp_path / "m.safetensors"), source="m", expected="toy")
    return model, state


def test_mapped_weights_are_copied_out_with_their_values(tmp_path):
    model, state = _loaded(tmp_path)
    ranges = file_backed_ranges()
    assert all(_is_file_backed(p, ranges) for p in model.parameters())
    x = torch.randn(3, 256)
    before = model(x)
    materialize(model)
    ranges = file_backed_ranges()
    assert not any(_is_file_backed(p, ranges) for p in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert torch.equal(model(x), before)


def test_memory_that_is_not_mapped_is_left_alone():
    model = nn.Linear(4, 4)
    pointers = [p.data_ptr() for p in model.parameters()]
    materialize(model)
    assert [p.data_ptr() for p in model.parameters()] == pointers
