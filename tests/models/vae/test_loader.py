"""Loading official (.pth, safetensors) and diffusers-layout files, and refusing wrong ones."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from wanflow.errors import ModelLoadError
from wanflow.models.vae.keys import apply_stages, official_to_diffusers
from wanflow.models.vae import WAN21, WAN22
from wanflow.models.vae.loader import config_from_state, load_vae

from ._fixtures import TINY, latents, random_vae


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Each tiny version saved as official .pth, official safetensors and diffusers safetensors."""
    root, out = tmp_path_factory.mktemp("vae"), {}
    for version, cfg in TINY.items():
        state = random_vae(cfg, seed=7).state_dict()
        torch.save(state, root / f"{version}.pth")
        safetensors.torch.save_file(state, root / f"{version}.safetensors")
        diffusers = apply_stages(state, official_to_diffusers(cfg))
        safetensors.torch.save_file(diffusers, root / f"{version}-diffusers.safetensors")
        out[version] = (state, root)
    return out


@pytest.mark.parametrize("version", ["wan2.1", "wan2.2"])
@pytest.mark.parametrize("name", ["{v}.pth", "{v}.safetensors", "{v}-diffusers.safetensors"])
def test_every_layout_loads_the_same_weights(files, version, name):
    state, root = files[version]
    vae = load_vae(root / name.format(v=version), version, config=TINY[version])
    loaded = vae.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(p.is_meta or p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize("version", ["wan2.1", "wan2.2"])
@pytest.mark.parametrize("name", ["{v}.pth", "{v}-diffusers.safetensors"])
def test_widths_of_a_smaller_file_are_read_off_its_tensors(files, version, name):
    state, root = files[version]
    vae = load_vae(root / name.format(v=version), version)  # no config: released one, resized
    assert vae.config == TINY[version]
    assert all(torch.equal(vae.state_dict()[k], state[k]) for k in state)


def test_a_released_size_file_gets_the_released_config():
    full = {"encoder.conv1.weight": torch.empty(96, 3, 3, 3, 3), "decoder.head.2.weight": torch.empty(3, 96, 3, 3, 3)}
    assert config_from_state(full, "wan2.1") is WAN21
    assert config_from_state({}, "wan2.2") is WAN22  # nothing to read: strict loading names the gaps


def test_dtype_is_applied(files):
    state, root = files["wan2.1"]
    vae = load_vae(root / "wan2.1.safetensors", dtype=torch.bfloat16, config=TINY["wan2.1"])
    assert vae.dtype == torch.bfloat16
    out = vae.decode(latents(vae, 1, 1, 1))
    assert out.dtype == torch.float32 and out.abs().max() <= 1  # latents/video stay fp32 outside


def test_a_wan21_vae_passed_as_wan22_is_refused(files):
    _, root = files["wan2.1"]
    with pytest.raises(ModelLoadError) as err:
        load_vae(root / "wan2.1.pth", "wan2.2")
    message = str(err.value)
    assert "wan2.1.pth" in message and "Wan2.2 VAE" in message and "Wan2.1 VAE (z_dim 16" in message


def test_a_dit_passed_as_a_vae_is_refused(tmp_path):
    dit = {"patch_embedding.weight": torch.zeros(32, 16, 1, 2, 2), "time_embedding.0.weight": torch.zeros(32, 8),
           "head.head.weight": torch.zeros(64, 32), "blocks.0.ffn.0.weight": torch.zeros(64, 32)}
    path = tmp_path / "dit.safetensors"
    safetensors.torch.save_file(dit, path)
    with pytest.raises(ModelLoadError, match=r"dit\.safetensors.*expected a Wan VAE.*DiT"):
        load_vae(path)


def test_loading_is_strict(files, tmp_path):
    state, _ = files["wan2.1"]
    broken = {k: v for k, v in state.items() if k != "decoder.head.2.weight"}
    path = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(broken, path)
    with pytest.raises(ModelLoadError, match=r"missing \(1\): decoder\.head\.2\.weight"):
        load_vae(path, "wan2.1", config=TINY["wan2.1"])
    with pytest.raises(ModelLoadError, match="mis-shaped"):  # an insisted config is not resized
        load_vae(files["wan2.1"][1] / "wan2.1.pth", "wan2.1", config=WAN21)
