"""Loading casts tensor by tensor: the device never holds the model at the file's precision.

The meta device stands in for a GPU (see `_memory_probes`): what a load copies onto it, and how
much of that is alive at once, is what the load would cost in device memory.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanflow.models.dit import keeps_fp32
from wanflow.models.dit_loader import load_dit
from wanflow.models.image_encoder import ImageEncoder
from wanflow.models.text_encoder import TextEncoder
from wanflow.models.vae.loader import load_vae

from ._checkpoints import clip_official_state, make_tokenizer_dir, umt5_official_state
from ._memory_probes import DeviceLedger, module_bytes
from ._dit_fixtures import random_state, tiny_config
from .vae._fixtures import TINY, random_vae

#: A DiT of many small tensors (text_dim shrunk), so one tensor is a small part of the model.
DIT = tiny_config("t2v", num_layers=6, text_dim=64)


@pytest.fixture(scope="module")
def fp32_dit(tmp_path_factory):
    state = random_state(DIT)
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    save_file(state, str(path))
    return state, path


def _largest(state) -> int:
    return max(t.numel() * t.element_size() for t in state.values())


def test_fp32_dit_reaches_the_device_already_in_bf16(fp32_dit):
    state, path = fp32_dit
    with DeviceLedger() as ledger:
        model = load_dit(path, DIT, dtype=torch.bfloat16, device="meta")
    islands = sum(t.numel() * 4 for k, t in state.items() if keeps_fp32(k))
    assert 0 < islands < module_bytes(model) / 4  # the test needs both kinds of tensors
    assert ledger.arrived[torch.float32] == islands  # only the fp32 islands arrive in fp32
    assert ledger.arrived[torch.bfloat16] == module_bytes(model) - islands
    assert ledger.peak <= module_bytes(model) + _largest(state)


def test_bf16_dit_loaded_as_fp32_widens_on_the_device_one_tensor_at_a_time(tmp_path):
    state = {k: v.bfloat16() for k, v in random_state(DIT).items()}
    save_file(state, str(tmp_path / "dit.safetensors"))
    with DeviceLedger() as ledger:
        model = load_dit(tmp_path / "dit.safetensors", DIT, dtype=torch.float32, device="meta")
    assert set(ledger.arrived) == {torch.bfloat16}  # the smaller copy crosses
    assert module_bytes(model) == 2 * sum(t.numel() * 2 for t in state.values())
    assert ledger.peak <= module_bytes(model) + _largest(state)


def test_vae_and_encoders_reach_the_device_in_their_dtype(tmp_path):
    vae_path, clip_path, umt5_path = (tmp_path / n for n in ("vae.safetensors", "clip.pth", "umt5.pth"))
    save_file(random_vae(TINY["wan2.1"]).state_dict(), str(vae_path))
    torch.save(clip_official_state(), clip_path)
    torch.save(umt5_official_state(), umt5_path)
    tokenizer = make_tokenizer_dir(tmp_path / "tok")
    loads = {
        "vae": lambda: load_vae(vae_path, "wan2.1", torch.bfloat16, "meta", config=TINY["wan2.1"]),
        "clip": lambda: ImageEncoder.from_checkpoint(clip_path, dtype=torch.bfloat16, device="meta").model,
        "umt5": lambda: TextEncoder.from_checkpoint(umt5_path, tokenizer, dtype=torch.bfloat16,
                                                    device="meta").model,
    }
    for name, load in loads.items():
        with DeviceLedger() as ledger:
            model = load()
        assert set(ledger.arrived) == {torch.bfloat16}, name
        assert ledger.peak <= module_bytes(model), name
