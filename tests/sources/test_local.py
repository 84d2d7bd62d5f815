"""Local folders in the ModelScope layout, local files and builtin folders; partial files are refused."""

from __future__ import annotations

import json

import pytest

from tests.sources import layout
from wanflow.errors import ModelLoadError
from wanflow.families.wan import families
from wanflow.sources import file_problem, models_status, resolve_component
from wanflow.sources import spec

FAMILIES = {f.name: f for f in families()}


def _resolve(family: str, component: str, folder, **kw):
    spec_ = FAMILIES[family].components[component]
    return resolve_component(spec_, (str(folder), ()), name=component, **kw)


def _names(resolved):
    return [p.relative_to(resolved.root).as_posix() for p in resolved.files]


def test_sharded_repository_layout_resolves_every_component_in_order(tmp_path):
    repo = layout.t2v_14b(tmp_path / "Wan2.1-T2V-14B")
    dit = _resolve("wan2.1-t2v-14b", "dit", repo)
    assert _names(dit) == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                           "diffusion_pytorch_model-00002-of-00002.safetensors",
                           "diffusion_pytorch_model.safetensors.index.json", "config.json"]
    assert (dit.source, dit.revision, dit.root) == (str(repo), None, repo)
    assert _names(_resolve("wan2.1-t2v-14b", "tokenizer", repo)) == [f"google/umt5-xxl/{n}" for n in layout.TOKENIZER]
    assert _names(_resolve("wan2.1-t2v-14b", "vae", repo)) == ["Wan2.1_VAE.pth"]
    assert _names(_resolve("wan2.1-t2v-14b", "text_encoder", repo)) == ["models_t5_umt5-xxl-enc-bf16.pth"]


def test_two_expert_layout_keeps_each_expert_in_its_folder(tmp_path):
    repo = layout.a14b(tmp_path / "A14B")
    high = _names(_resolve("wan2.2-t2v-a14b", "dit_high_noise", repo))
    low = _names(_resolve("wan2.2-t2v-a14b", "dit_low_noise", repo))
    assert len(high) == len(low) == 4
    assert all(n.startswith("high_noise_model/") for n in high) and all(n.startswith("low_noise_model/") for n in low)


def test_single_file_dit_needs_no_index(tmp_path):
    repo = layout.t2v_1_3b(tmp_path / "Wan2.1-T2V-1.3B")
    assert _names(_resolve("wan2.1-t2v-1.3b", "dit", repo)) == ["diffusion_pytorch_model.safetensors", "config.json"]


def test_a_shard_named_in_the_index_but_absent_is_reported(tmp_path):
    repo = layout.t2v_14b(tmp_path / "r", shards=3)
    (repo / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing: diffusion_pytorch_model-00002-of-00003.safetensors"):
        _resolve("wan2.1-t2v-14b", "dit", repo)


def test_a_shard_set_missing_its_last_file_is_reported_without_an_index(tmp_path):
    repo = layout.t2v_14b(tmp_path / "r", shards=3)
    (repo / "diffusion_pytorch_model.safetensors.index.json").unlink()
    (repo / "diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing: diffusion_pytorch_model-00003-of-00003"):
        _resolve("wan2.1-t2v-14b", "dit", repo)


@pytest.mark.parametrize("name, cut, why", [
    ("diffusion_pytorch_model-00001-of-00002.safetensors", -10, "its header says"),
    ("diffusion_pytorch_model-00002-of-00002.safetensors", 0, "is empty"),
    ("Wan2.1_VAE.pth", -30, "zip checkpoint cut before its end"),
    ("google/umt5-xxl/tokenizer.json", 1, "JSON file cut before its end"),
])
def test_partial_files_are_never_used(tmp_path, name, cut, why):
    repo = layout.t2v_14b(tmp_path / "r")
    data = (repo / name).read_bytes()
    (repo / name).write_bytes(data[:cut])
    assert why in file_problem(repo / name)
    component = {"Wan2.1_VAE.pth": "vae", "google/umt5-xxl/tokenizer.json": "tokenizer"}.get(name, "dit")
    with pytest.raises(ModelLoadError, match=f"{name} .*{why}"):
        _resolve("wan2.1-t2v-14b", component, repo)


def test_shards_smaller_than_the_index_total_are_reported(tmp_path):
    repo = layout.t2v_14b(tmp_path / "r")
    index = repo / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["metadata"]["total_size"] = 10**9
    index.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="lists shards of 1000000000 bytes"):
        _resolve("wan2.1-t2v-14b", "dit", repo)


def test_a_pattern_matching_nothing_lists_what_the_folder_holds(tmp_path):
    repo = layout.t2v_14b(tmp_path / "r")
    (repo / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(ModelLoadError) as err:
        _resolve("wan2.1-t2v-14b", "vae", repo)
    msg = str(err.value)
    assert "missing: Wan2.1_VAE.pth" in msg and "README.md" in msg and "models_t5_umt5-xxl-enc-bf16.pth" in msg


def test_a_local_file_is_the_component(tmp_path):
    repo = layout.t2v_14b(tmp_path / "r")
    vae = FAMILIES["wan2.1-t2v-14b"].components["vae"]
    got = resolve_component(vae, ("r/Wan2.1_VAE.pth", ()), base_dir=tmp_path)
    assert (got.files, got.root) == ((repo / "Wan2.1_VAE.pth",), repo)
    with pytest.raises(ModelLoadError, match="no such file or folder.*modelscope:Wan-AI/Nope"):
        resolve_component(vae, ("Wan-AI/Nope", ()), base_dir=tmp_path)


def test_naming_one_shard_of_a_set_reports_the_rest(tmp_path):
    layout.t2v_14b(tmp_path / "r")
    dit = FAMILIES["wan2.1-t2v-14b"].components["dit"]
    with pytest.raises(ModelLoadError, match="missing: diffusion_pytorch_model-00002-of-00002"):
        resolve_component(dit, ("r/diffusion_pytorch_model-00001-of-00002.safetensors", ()), base_dir=tmp_path)


def test_builtin_folder_resolves_and_a_missing_one_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(spec, "ASSETS", tmp_path / "assets")
    from wanflow.families.tiny import family
    dit = family().components["dit"]
    with pytest.raises(ModelLoadError, match="shipped with wanflow are missing"):
        resolve_component(dit, name="dit")
    layout.write_shards(tmp_path / "assets" / "wanflow-tiny" / "dit", 1)
    got = resolve_component(dit)
    assert [p.name for p in got.files] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (got.source, got.revision) == ("builtin:wanflow-tiny", None)


def test_models_status_reports_each_component(tmp_path):
    fam = FAMILIES["wan2.1-t2v-14b"]
    before = models_status(fam, models_root=tmp_path)
    assert [s.present for s in before] == [False] * 4 and before[3].missing == ("Wan2.1_VAE.pth",)
    layout.t2v_14b(tmp_path / "Wan-AI" / "Wan2.1-T2V-14B")
    (tmp_path / "Wan-AI" / "Wan2.1-T2V-14B" / "Wan2.1_VAE.pth").unlink()
    after = {s.component: s for s in models_status(fam, models_root=tmp_path)}
    assert {k: s.present for k, s in after.items()} == {"dit": True, "text_encoder": True, "tokenizer": True, "vae": False}
    assert after["dit"].where == tmp_path / "Wan-AI" / "Wan2.1-T2V-14B"
