"""Placing loaded tensors: copied out of the file mapping with their values, the caller's never aliased."""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn

from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.loading import build_on_meta, load_state_into
from wanflow.models.residency import _is_file_backed, file_backed_ranges, place_all

from ._memory_probes import mapped_rss_kib


def _saved(tmp_path):
    torch.manual_seed(0)
    state = {"0.weight": torch.randn(64, 256), "0.bias": torch.randn(64), "1.weight": torch.randn(8, 64),
             "1.bias": torch.randn(8)}
    save_file(state, str(tmp_path / "m.safetensors"))
    return state


def test_mapped_weights_are_copied_out_with_their_values(tmp_path):
    state = _saved(tmp_path)
    mapped = open_state_dict(tmp_path / "m.safetensors")
    ranges = file_backed_ranges()
    assert all(_is_file_backed(t, ranges) for t in mapped.values())
    placed = place_all(mapped, None, "cpu", borrowed=False)
    ranges = file_backed_ranges()
    assert not any(_is_file_backed(t, ranges) for t in placed.values())
    for name, tensor in placed.items():
        assert torch.equal(tensor, state[name]), name


def test_the_files_pages_are_released_once_copied(tmp_path):
    big = {"w": torch.randn(1024, 1024)}  # 4 MiB, 1024 pages
    path = tmp_path / "big.safetensors"
    save_file(big, str(path))
    mapped = open_state_dict(path)
    assert float(mapped["w"].sum()) == float(big["w"].sum())  # every page read in
    assert mapped_rss_kib(path) >= 4000
    place_all(mapped, torch.bfloat16, "cpu", borrowed=False)
    assert mapped_rss_kib(path) <= 8  # at most the header's page and the last partial page


def test_the_callers_tensors_are_copied_and_left_as_they_were():
    own = {"weight": torch.randn(4, 4), "bias": torch.randn(4)}
    before = {k: v.clone() for k, v in own.items()}
    module = build_on_meta(lambda: nn.Linear(4, 4))
    load_state_into(module, own, source="dict", expected="toy", device="cpu", borrowed=True)
    with torch.no_grad():
        module.weight.add_(1.0)
    assert module.weight.data_ptr() != own["weight"].data_ptr()
    assert all(torch.equal(own[k], before[k]) for k in own)


def test_own_memory_that_needs_nothing_is_not_copied():
    own = {"w": torch.randn(4, 4), "i": torch.arange(3)}
    placed = place_all(own, torch.float32, "cpu", borrowed=False)
    assert placed["w"] is own["w"] and placed["i"] is own["i"]


def test_floating_tensors_take_the_keys_dtype_and_others_keep_theirs():
    state = {"a": torch.randn(3), "b": torch.randn(3), "i": torch.arange(3)}
    placed = place_all(state, lambda key: torch.float32 if key == "a" else torch.float16, "cpu",
                       borrowed=True)
    assert [placed[k].dtype for k in "abi"] == [torch.float32, torch.float16, torch.int64]
    assert torch.equal(placed["b"], state["b"].half())
