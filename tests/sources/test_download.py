"""The ModelScope path with a faked client: only needed files, no repeat downloads, offline, failures."""

from __future__ import annotations

import pytest

from tests.sources import layout
from wanflow.errors import ModelLoadError
from wanflow.families.wan import families
from wanflow.sources import resolve_component

FAMILY = {f.name: f for f in families()}["wan2.1-t2v-14b"]
REPO = "Wan-AI/Wan2.1-T2V-14B"


@pytest.fixture()
def hub(tmp_path):
    return layout.FakeHub({REPO: layout.t2v_14b(tmp_path / "remote")})


def _resolve(component, tmp_path, hub, **kw):
    kw.setdefault("models_root", tmp_path / "models")
    return resolve_component(FAMILY.components[component], download=hub, name=component, offline=kw.pop("offline", False), **kw)


def test_downloads_only_the_component_files_once(tmp_path, hub):
    got = _resolve("dit", tmp_path, hub)
    assert hub.calls == [{"repo": REPO, "revision": "master", "allow": list(FAMILY.components["dit"].files),
                          "ignore": [], "local_dir": str(tmp_path / "models" / "Wan-AI" / "Wan2.1-T2V-14B")}]
    assert [p.name for p in got.files][:2] == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                                               "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert not (got.root / "Wan2.1_VAE.pth").exists() and not (got.root / "README.md").exists()
    assert (got.source, got.revision) == (f"modelscope:{REPO}@master", "master")
    again = _resolve("dit", tmp_path, hub)
    assert len(hub.calls) == 1 and again.files == got.files


def test_models_root_comes_from_the_environment(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS", str(tmp_path / "env-models"))
    got = _resolve("vae", tmp_path, hub, models_root=None)
    assert got.files == (tmp_path / "env-models" / "Wan-AI" / "Wan2.1-T2V-14B" / "Wan2.1_VAE.pth",)


def test_offline_names_the_missing_files_and_how_to_fetch_them(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        resolve_component(FAMILY.components["tokenizer"], models_root=tmp_path, download=hub)
    msg = str(err.value)
    assert "WANFLOW_OFFLINE" in msg and "google/umt5-xxl/*" in msg
    assert f"modelscope download {REPO} --revision master --local-dir {tmp_path}/Wan-AI/Wan2.1-T2V-14B" in msg
    assert hub.calls == []


def test_a_failed_download_names_repo_revision_and_files(tmp_path):
    hub = layout.FakeHub({}, fail=ConnectionError("connection reset"))
    component = FAMILY.components["vae"]
    with pytest.raises(ModelLoadError, match=rf"\['Wan2.1_VAE.pth'\] from ModelScope repository {REPO} at revision "
                                             r"v2 .*ConnectionError: connection reset"):
        resolve_component(component, (f"modelscope:{REPO}@v2", ()), models_root=tmp_path, download=hub, offline=False)


def test_a_partial_download_is_reported_then_fetched_again(tmp_path, hub):
    hub.truncate = "diffusion_pytorch_model-00002-of-00002.safetensors"
    with pytest.raises(ModelLoadError, match="(?s)after downloading.*00002-of-00002.safetensors is 40 bytes"):
        _resolve("dit", tmp_path, hub)
    hub.truncate = ""
    got = _resolve("dit", tmp_path, hub)
    assert len(hub.calls) == 2
    assert hub.calls[1]["ignore"] == ["config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
                                      "diffusion_pytorch_model.safetensors.index.json"]
    assert got.files[1].read_bytes() == (tmp_path / "remote" / got.files[1].name).read_bytes()


def test_offline_refuses_a_partial_file_already_on_disk(tmp_path, hub):
    _resolve("dit", tmp_path, hub)
    shard = tmp_path / "models" / "Wan-AI" / "Wan2.1-T2V-14B" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(ModelLoadError, match="00001-of-00002.safetensors \\(is .* bytes but its header says"):
        _resolve("dit", tmp_path, hub, offline=True)


def test_a_pinned_revision_is_recorded_and_a_new_pin_fetches_again(tmp_path, hub):
    component = FAMILY.components["vae"]

    def resolve(rev):
        return resolve_component(component, (f"modelscope:{REPO}@{rev}", ()), models_root=tmp_path,
                                 download=hub, offline=False)
    assert resolve("abc123").revision == "abc123"
    assert resolve("abc123").source == f"modelscope:{REPO}@abc123"
    assert [c["revision"] for c in hub.calls] == ["abc123"]
    resolve("def456")
    assert [c["revision"] for c in hub.calls] == ["abc123", "def456"]
