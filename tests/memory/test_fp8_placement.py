"""fp8-stored blocks streamed by the placement hooks equal the resident fp8 model bit for bit.

Host-tier blocks are quantised once at load and kept in host memory as fp8; disk-tier blocks are
read from the file as they are (a scaled-fp8 file) or quantised at each read (a bf16 file) under
the scale the load computed. Either way the same fp8 bytes and scales reach the same kernels as
in the model loaded whole with ``storage="fp8"``, so the outputs are equal, not close.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanflow.memory.streamed import load_placed_dit
from wanflow.models.dit_loader import load_dit
from wanflow.models.fp8 import fp8_layers
from wanflow.models.fp8_convert import convert_to_fp8

from ..models._dit_fixtures import inputs, random_state, tiny_config

CFG = tiny_config("t2v", num_layers=4, text_dim=64)
TIERS = [("host",) * 4, ("disk",) * 4, ("device", "host", "disk", "host"), ("disk", "device", "host", "disk")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same tiny DiT as a bf16 file and as the scaled-fp8 file converted from it."""
    root = tmp_path_factory.mktemp("dit")
    plain = root / "dit.safetensors"
    save_file({k: v.bfloat16() for k, v in random_state(CFG).items()}, str(plain))
    scaled = convert_to_fp8(plain, root / "fp8")
    return {"bf16": plain, "scaled-fp8": scaled[0]}


@pytest.mark.parametrize("kind", ["bf16", "scaled-fp8"])
@pytest.mark.parametrize("tiers", TIERS)
def test_streamed_fp8_blocks_give_the_resident_fp8_output_bit_for_bit(files, kind, tiers):
    inp = inputs(CFG)
    with torch.no_grad():
        want = load_dit(files[kind], CFG, dtype=torch.bfloat16, storage="fp8")(**inp)
        model, handle = load_placed_dit([files[kind]], CFG, tiers, torch.bfloat16, storage="fp8")
        outs = [model(**inp), model(**inp)]  # every offloaded block in and out twice
    assert all(torch.equal(out, want) for out in outs)
    offloaded = [i for i, t in enumerate(tiers) if t != "device"]
    assert all(p.is_meta for i in offloaded for p in model.blocks[i].parameters())  # dropped after use
    layers = fp8_layers(model)
    assert len(layers) == 10 * 4 and all(not layer.scale_weight.is_meta for layer in layers.values())
    host = [b for b in handle.blocks if b.tier == "host"]
    assert all(s.dtype == torch.float8_e4m3fn for b in host for k, s in b.source.items()
               if k.endswith((".q.weight", ".ffn.0.weight")))  # kept in host memory as fp8, not bf16
    handle.remove()  # the weights come back as the resident fp8 model's
    with torch.no_grad():
        assert torch.equal(model(**inp), want)


def test_a_disk_block_of_a_bf16_file_is_quantised_at_each_read_and_a_scaled_file_read_as_is(files):
    _, quantised = load_placed_dit([files["bf16"]], CFG, ("disk",) * 4, torch.bfloat16, storage="fp8")
    _, as_is = load_placed_dit([files["scaled-fp8"]], CFG, ("disk",) * 4, torch.bfloat16, storage="fp8")
    key = "blocks.2.self_attn.q.weight"
    assert key in quantised.convert and quantised.blocks[2].source[key].dtype == torch.bfloat16
    assert key not in as_is.convert and as_is.blocks[2].source[key].dtype == torch.float8_e4m3fn
    assert torch.equal(quantised.convert[key](quantised.blocks[2].source[key]).view(torch.uint8),
                       as_is.blocks[2].source[key].view(torch.uint8))  # the converter's own bytes


def test_a_scaled_fp8_file_streams_dequantised_under_compute_storage(files):
    """Without [memory].fp8 a scaled-fp8 file's blocks are computed in the compute dtype: a
    streamed disk block is dequantised at each read, as the whole load does once."""
    inp = inputs(CFG)
    with torch.no_grad():
        want = load_dit(files["scaled-fp8"], CFG, dtype=torch.bfloat16)(**inp)
        model, _ = load_placed_dit([files["scaled-fp8"]], CFG, ("disk", "host", "disk", "device"), torch.bfloat16)
        assert torch.equal(model(**inp), want)
    assert not fp8_layers(model)
