"""`wanflow lora inspect` and `wanflow lora convert` through the command line's entry point."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.lora import _dialects_fixtures as fx
from wanflow.cli import main
from wanflow.cli.lora_cmds import FORMATS
from wanflow.lora.dialects import WRITABLE
from wanflow.lora.read import read_lora


def _file(tmp_path, made: fx.HandMade, name: str = "in.safetensors"):
    path = tmp_path / name
    save_file(made.state, str(path), metadata=made.metadata or {"ss_network_dim": "4"})
    return path


def test_the_cli_offers_exactly_the_writable_dialects():
    assert FORMATS == WRITABLE


def test_inspect_says_dialect_kinds_ranks_alphas_model_metadata_and_unread(tmp_path, capsys):
    made = fx.lightx2v()
    state = dict(made.state) | {"diffusion_model.blocks.0.ffn.0.dora_scale": torch.ones(fx.CFG.ffn_dim, 1)}
    path = tmp_path / "l.safetensors"
    save_file(state, str(path), metadata={"ss_network_dim": "4"})
    assert main(["lora", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "dialect: comfyui\n" in out
    assert "made for: a Wan DiT (width 128, image cross-attention); changes blocks 0–1\n" in out
    # 2 blocks × (4 self-attn, 6 cross-attn, 2 FFN) low-rank modules; head.head, head.modulation;
    # norm_k_img and norm3 full deltas; modulation; patch/text/time/img embeddings
    assert "  self-attention: 8\n  cross-attention: 12\n  ffn: 4\n  norms: 2\n  modulation: 2\n  head: 1\n" in out
    assert "  embeddings: 6\n" in out
    assert "deltas: " in out and "30 low-rank" in out and "8 full" in out
    assert "ranks: 4 (30)\n" in out
    assert "alphas: none (scale 1) (30)\n" in out
    assert "  ss_network_dim = 4\n" in out
    assert "unread keys: 1:\n  diffusion_model.blocks.0.ffn.0.dora_scale: DoRA" in out


def test_inspect_names_the_released_model_from_shapes(tmp_path, capsys):
    dim = 1536  # Wan2.1 T2V-1.3B
    state = {"lora_unet_blocks_29_self_attn_q.lora_down.weight": torch.zeros(2, dim),
             "lora_unet_blocks_29_self_attn_q.lora_up.weight": torch.zeros(dim, 2),
             "lora_unet_blocks_29_self_attn_q.alpha": torch.tensor(1.0)}
    path = tmp_path / "small.safetensors"
    save_file(state, str(path))
    assert main(["lora", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "made for: Wan2.1 T2V-1.3B (width 1536); changes blocks 0–29" in out
    assert "dialect: musubi" in out and "alphas: 1 (1)" in out


def test_inspect_refuses_a_pickle_that_runs_code_with_exit_2(tmp_path, capsys):
    path = tmp_path / "lora.pt"
    torch.save({"state_dict": fx.musubi().state, "config": _Opaque()}, path)
    assert main(["lora", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: refused: this file needs to run pickled Python code")
    assert "Traceback" not in err


class _Opaque:
    """An object only a full unpickler (one that runs code) can rebuild."""


@pytest.mark.parametrize("target", FORMATS)
def test_convert_writes_the_same_deltas(tmp_path, capsys, target):
    source = _file(tmp_path, fx.musubi(alpha=3.0))
    out = tmp_path / "out.safetensors"
    argv = ["lora", "convert", str(source), str(out), "--format", target, "--recipe-digest", "d1g"]
    assert main(argv) == 0
    assert f"wrote {out}: {len(fx.modules())} deltas, musubi -> {target}" in capsys.readouterr().out
    before, after = read_lora(source), read_lora(out)
    assert after.dialect == target
    assert after.metadata["wanflow.recipe_digest"] == "d1g"
    assert after.metadata["ss_network_dim"] == "4"
    for param, delta in before.deltas.items():
        assert torch.equal(after.deltas[param].tensor(), delta.tensor())


def test_convert_warns_about_keys_it_could_not_read(tmp_path, capsys):
    state = fx.diffusion_pipe().state | {"diffusion_model.blocks.0.ffn.0.dora_scale": torch.ones(1)}
    source = tmp_path / "in.safetensors"
    save_file(state, str(source))
    assert main(["lora", "convert", str(source), str(tmp_path / "o.safetensors"), "--format", "musubi"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 keys of" in err and "diffusion_model.blocks.0.ffn.0.dora_scale: DoRA" in err


def test_convert_refuses_what_the_target_cannot_hold_with_exit_2(tmp_path, capsys):
    source = _file(tmp_path, fx.lycoris())
    out = tmp_path / "out.safetensors"
    assert main(["lora", "convert", str(source), str(out), "--format", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert "as diffusers: 4 of the LoRA's deltas do not fit that dialect" in err
    assert "use --format comfyui" in err
    assert not out.exists()


def test_convert_will_not_overwrite_without_force(tmp_path, capsys):
    source = _file(tmp_path, fx.musubi())
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    assert main(["lora", "convert", str(source), str(out), "--format", "comfyui"]) == 2
    assert "exists; choose another path or pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main(["lora", "convert", str(source), str(out), "--format", "comfyui", "--force"]) == 0
    assert read_lora(out).dialect == "comfyui"


def test_convert_of_a_missing_file_exits_2(tmp_path, capsys):
    code = main(["lora", "convert", str(tmp_path / "nope.safetensors"), str(tmp_path / "o.safetensors"),
                 "--format", "musubi"])
    assert code == 2
    assert "no such LoRA file" in capsys.readouterr().err


def test_an_unknown_format_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["lora", "convert", "a", "b", "--format", "kohya"])
    assert exit_.value.code == 2
