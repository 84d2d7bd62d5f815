"""Every dialect, written by hand, reads into exactly the ΔW its factors and alpha rule give."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.lora import _dialects_fixtures as fx
from wanflow.lora.read import read_lora


def _save(tmp_path, made: fx.HandMade, name: str = "lora.safetensors"):
    path = tmp_path / name
    save_file(made.state, str(path), metadata=made.metadata or None)
    return path


@pytest.mark.parametrize("name", sorted(fx.ALL))
def test_each_dialect_reads_to_the_delta_computed_by_hand(tmp_path, name):
    made = fx.ALL[name]()
    lora = read_lora(_save(tmp_path, made))
    assert lora.dialect == made.dialect
    assert lora.unread == ()
    assert sorted(lora.deltas) == sorted(made.expected)
    for param, expected in made.expected.items():
        torch.testing.assert_close(lora.deltas[param].tensor(), expected, rtol=1e-6, atol=1e-8, msg=param)


def test_the_hand_made_files_cover_every_kind_of_module():
    params = set(fx.lightx2v().expected) | set(fx.diffusers().expected)
    assert {"blocks.0.cross_attn.k_img.weight", "blocks.1.ffn.2.weight", "head.head.weight",
            "time_projection.1.weight", "img_emb.proj.1.weight", "blocks.0.modulation",
            "blocks.0.cross_attn.norm_k_img.weight", "blocks.1.self_attn.q.bias"} <= params
    assert len(fx.modules()) == 2 * 12 + 6


def test_a_state_dict_reads_like_its_file(tmp_path):
    made = fx.musubi(alpha=3.0)
    from_dict = read_lora(made.state)
    from_file = read_lora(_save(tmp_path, made))
    assert from_dict.dialect == from_file.dialect == "musubi"
    for param in made.expected:
        assert torch.equal(from_dict.deltas[param].tensor(), from_file.deltas[param].tensor())


def test_musubi_alpha_scales_by_alpha_over_rank():
    lora = read_lora(fx.musubi(alpha=1.0).state)
    delta = lora.deltas["blocks.0.cross_attn.v_img.weight"]
    assert delta.alpha == 1.0 and delta.scale == 1.0 / fx.RANK


def test_factors_stay_views_of_the_mapped_file(tmp_path):
    """Reading copies no tensor: the factors share the file's one mapped storage."""
    lora = read_lora(_save(tmp_path, fx.diffusion_pipe()))
    storages = {d.down.untyped_storage().data_ptr() for d in lora.deltas.values()}
    assert len(storages) == 1


def test_metadata_comes_from_the_header_and_the_argument(tmp_path):
    made = fx.diffusers(with_metadata=True)
    lora = read_lora(_save(tmp_path, made), metadata={"note": "given"})
    assert lora.metadata["format"] == "pt"
    assert lora.metadata["note"] == "given"
    assert "lora_adapter_metadata" in lora.metadata


def test_rslora_metadata_scales_by_alpha_over_root_rank():
    made = fx.diffusers()
    meta = {"lora_adapter_metadata": '{"transformer.lora_alpha": 8, "transformer.r": 4, "transformer.use_rslora": true}'}
    lora = read_lora(made.state, metadata=meta)
    assert lora.deltas["blocks.0.self_attn.q.weight"].scale == pytest.approx(8 / 2)


def test_the_package_exports_load_on_first_use():
    import subprocess
    import sys

    code = ("import sys, wanflow.lora as L; assert 'torch' not in sys.modules; "
            "assert sorted(L.__all__) == sorted(L._HOMES); [getattr(L, n) for n in L.__all__]")
    subprocess.run([sys.executable, "-c", code], check=True)
