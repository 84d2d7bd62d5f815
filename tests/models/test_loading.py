"""Checkpoint reading (safetensors, shards, .pth), meta building, strict loading, key tables."""

from __future__ import annotations

import json
import os

import psutil
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wanflow.errors import ModelLoadError
from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.loading import build_on_meta, load_state_into, rename_keys


class Pickled:
    """An arbitrary object: loading it needs pickle to run code."""


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(6, 4, generator=g),
        "b": torch.randn(3, generator=g).to(torch.bfloat16),
        "c.index": torch.arange(5, dtype=torch.int8),
        "d.half": torch.randn(2, 3, generator=g).to(torch.float16),
    }


def tiny_dit() -> nn.Module:
    """A stand-in module with a few official DiT names."""
    m = nn.Module()
    m.patch_embedding = nn.Conv3d(4, 8, (1, 2, 2))
    m.time_embedding = nn.Sequential(nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 8))
    m.head = nn.Module()
    m.head.head = nn.Linear(8, 16)
    return m


def tiny_dit_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in tiny_dit().state_dict().items()}


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


# ----------------------------------------------------------------------------- formats


def test_safetensors_is_read_exactly_as_views_of_one_mapping(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(sample_state(), path)
    got = open_state_dict(path)
    assert_same(got, load_file(path))
    storages = {t.untyped_storage().data_ptr() for t in got.values()}
    assert len(storages) == 1  # every tensor is a view of the one mapped file, none a copy
    assert got["a.weight"].untyped_storage().nbytes() == os.path.getsize(path)


def test_opening_a_large_safetensors_file_reads_nothing(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.zeros(16, 1024, 1024)}, path)  # 64 MiB
    process = psutil.Process()
    before = process.memory_info().rss
    state = open_state_dict(path)
    assert state["w"].shape == (16, 1024, 1024)
    assert process.memory_info().rss - before < 8 * 2**20


def test_pth_is_loaded_with_mmap_and_a_wrapper_key_unwrapped(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"state_dict": sample_state()}, path)
    got = open_state_dict(path)
    assert_same(got, sample_state())
    assert len({t.untyped_storage().data_ptr() for t in got.values()}) == len(got)  # mmap-backed


def test_sharded_set_by_index_or_folder(tmp_path):
    state = sample_state()
    save_file({k: state[k] for k in ("a.weight", "b")}, tmp_path / "m-00001-of-00002.safetensors")
    save_file({k: state[k] for k in ("c.index", "d.half")}, tmp_path / "m-00002-of-00002.safetensors")
    weight_map = {"a.weight": "m-00001-of-00002.safetensors", "b": "m-00001-of-00002.safetensors",
                  "c.index": "m-00002-of-00002.safetensors", "d.half": "m-00002-of-00002.safetensors"}
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same(open_state_dict(index), state)
    assert_same(open_state_dict(tmp_path), state)


def test_shard_index_naming_a_missing_shard(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "m-00001-of-00002.safetensors")
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "m-00001-of-00002.safetensors",
                                                "b": "m-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelLoadError, match=r"m\.safetensors\.index\.json: names 2 shards but 1 are "
                                             r"missing .*m-00002-of-00002\.safetensors"):
        open_state_dict(index)


def test_shard_lacking_a_key_its_index_promises(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "s1.safetensors")
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    with pytest.raises(ModelLoadError, match="shard s1.safetensors lacks 1 keys .*b"):
        open_state_dict(index)


# ----------------------------------------------------------------------------- bad files


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


@pytest.mark.parametrize(
    ("name", "content", "looks"),
    [
        ("notes.safetensors", b"these are my notes about the model\n", "a text file starting 'these are my"),
        ("config.pth", b'{"dim": 1536, "num_layers": 30}', "a JSON file"),
        ("frame.pth", PNG, "a PNG image"),
        ("empty.safetensors", b"", r"an empty file \(0 bytes\)"),
        ("lfs.safetensors", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "a Git LFS pointer"),
    ],
)
def test_not_a_checkpoint_says_what_the_file_is(tmp_path, name, content, looks):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=rf"{name}: not a checkpoint: it is {looks}"):
        open_state_dict(path)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(sample_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors: truncated safetensors file: its tensors need"):
        open_state_dict(path)
    path.write_bytes(data[:40])  # cut inside the header
    with pytest.raises(ModelLoadError, match="truncated safetensors file: its header need"):
        open_state_dict(path)


def test_inconsistent_safetensors_header(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(ModelLoadError, match="bad.safetensors: corrupt safetensors header: 'w' spans 8 bytes"):
        open_state_dict(path)


def test_truncated_pth(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(sample_state(), path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ModelLoadError, match=r"cut\.pth: unreadable PyTorch checkpoint, probably truncated"):
        open_state_dict(path)


def test_pth_needing_pickle_code_is_refused_with_a_conversion_command(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2), "config": Pickled()}, path)
    with pytest.raises(ModelLoadError) as info:
        open_state_dict(path)
    message = str(info.value)
    assert f"{path}: refused" in message and "weights_only=True" in message
    assert 'python -c "import torch, safetensors.torch as st' in message and "model.safetensors" in message


def test_pth_with_non_tensor_entries_is_refused(tmp_path):
    path = tmp_path / "trainer.pth"
    torch.save({"w": torch.zeros(2), "step": 10}, path)
    with pytest.raises(ModelLoadError, match=r"trainer\.pth: not a plain state dict: entries step"):
        open_state_dict(path)


# ----------------------------------------------------------------------------- meta + strict load


def test_build_on_meta_allocates_nothing():
    module = build_on_meta(lambda: nn.Linear(100_000, 100_000))  # 40 GB if it were real
    assert module.weight.is_meta and module.weight.shape == (100_000, 100_000)


def test_load_assigns_the_files_tensors_onto_the_meta_module(tmp_path):
    path = tmp_path / "dit.safetensors"
    save_file(tiny_dit_state(), path)
    state = open_state_dict(path)
    module = build_on_meta(tiny_dit)
    assert all(p.is_meta for p in module.parameters())
    load_state_into(module, state, source=str(path), expected="Wan DiT (tiny)")
    params = dict(module.named_parameters())
    assert len(params) == 8 and not any(p.is_meta for p in params.values())
    mapped = state["patch_embedding.weight"].untyped_storage().data_ptr()
    for name, p in params.items():
        assert torch.equal(p, tiny_dit_state()[name])
        assert p.untyped_storage().data_ptr() == mapped  # still the mapped file: no copy


def test_load_with_dtype_casts_floats_and_keeps_ties():
    module = build_on_meta(lambda: nn.Sequential(nn.Embedding(4, 3), nn.Embedding(4, 3)))
    shared = torch.randn(4, 3)
    load_state_into(module, {"0.weight": shared, "1.weight": shared}, source="x", expected="y",
                    dtype=torch.bfloat16)
    assert module[0].weight.dtype == torch.bfloat16 and torch.equal(module[0].weight, shared.bfloat16())
    assert module[0].weight.data_ptr() == module[1].weight.data_ptr()


def test_vae_passed_to_a_dit_names_file_keys_and_what_it_looks_like():
    vae = {"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3, device="meta"),
           "conv2.weight": torch.zeros(16, 16, 1, 1, 1, device="meta"),
           "decoder.conv1.weight": torch.zeros(384, 16, 3, 3, 3, device="meta")}
    module = build_on_meta(tiny_dit)
    with pytest.raises(ModelLoadError) as info:
        load_state_into(module, vae, source="Wan2.1_VAE.pth", expected="Wan DiT (t2v, dim 8)")
    message = str(info.value)
    assert message.startswith("Wan2.1_VAE.pth: does not fit Wan DiT (t2v, dim 8)")
    assert "missing (8): patch_embedding.weight" in message and "unexpected (3):" in message
    assert "looks like a Wan2.1 VAE (z_dim 16; official key layout), not a Wan DiT" in message


def test_misshaped_keys_are_listed_and_long_lists_capped():
    state = tiny_dit_state()
    state["head.head.weight"] = torch.zeros(32, 8)
    state |= {f"extra.{i}": torch.zeros(1) for i in range(20)}
    with pytest.raises(ModelLoadError) as info:
        load_state_into(build_on_meta(tiny_dit), state, source="f.safetensors", expected="tiny")
    message = str(info.value)
    assert "mis-shaped (1): head.head.weight: file (32, 8) vs model (16, 8)" in message
    assert "unexpected (20):" in message and "... and 12 more" in message and "missing" not in message


# ----------------------------------------------------------------------------- key tables


def test_rename_keys_first_match_wins_and_unmatched_keys_stay():
    state = {"blocks.0.attn1.to_q.weight": 1, "blocks.12.attn1.to_q.bias": 2, "proj_out.weight": 3, "other": 4}
    table = [
        (r"blocks\.(\d+)\.attn1\.to_q\.(weight|bias)", r"blocks.\1.self_attn.q.\2"),
        (r"blocks\.(\d+)\.attn1\.(.*)", r"never.\1"),
        (r"proj_out\.(.*)", r"head.head.\1"),
    ]
    got = rename_keys(state, table)
    assert got == {"blocks.0.self_attn.q.weight": 1, "blocks.12.self_attn.q.bias": 2, "head.head.weight": 3,
                   "other": 4}
    assert "blocks.0.attn1.to_q.weight" in state  # pure: the input is untouched


def test_rename_keys_refuses_two_keys_becoming_one():
    with pytest.raises(ModelLoadError, match="'model.x' and 'x' both become 'x'"):
        rename_keys({"model.x": 1, "x": 2}, [(r"model\.(.*)", r"\1")])


def test_shards_merge_into_one_state_dict_and_a_key_in_two_is_refused(tmp_path):
    from wanflow.models.checkpoint_files import merged_shards

    save_file({"a": torch.ones(2)}, str(tmp_path / "one.safetensors"))
    save_file({"b": torch.zeros(3)}, str(tmp_path / "two.safetensors"))
    save_file({"a": torch.ones(2), "c": torch.ones(1)}, str(tmp_path / "again.safetensors"))
    state = merged_shards([tmp_path / "one.safetensors", tmp_path / "two.safetensors"])
    assert sorted(state) == ["a", "b"] and torch.equal(state["b"], torch.zeros(3))
    with pytest.raises(ModelLoadError, match=r"again.safetensors: repeats keys of an earlier shard \(\['a'\]\)"):
        merged_shards([tmp_path / "one.safetensors", tmp_path / "again.safetensors"])
