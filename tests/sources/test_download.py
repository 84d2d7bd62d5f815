"""The ModelScope path with a faked client: only needed files, no repeat downloads, offline, failures,
and the commit each download came from."""

from __future__ import annotations

import json

import pytest

from tests.sources import layout
from wanflow.errors import ModelLoadError
from wanflow.families.wan import families
from wanflow.sources import resolve_component

FAMILY = {f.name: f for f in families()}["wan2.1-t2v-14b"]
REPO = "Wan-AI/Wan2.1-T2V-14B"
HEAD = "0123456789abcdef0123456789abcdef01234567"  # what the fake hub's branches and tags point at


class Commits:
    """A fake ``commit_of``: every branch or tag points at ``head``; records what it was asked."""

    def __init__(self, head: str = HEAD, fail: Exception | None = None):
        self.head, self.fail, self.asked = head, fail, []

    def __call__(self, repo: str, revision: str) -> str:
        self.asked.append((repo, revision))
        if self.fail is not None:
            raise self.fail
        return self.head


@pytest.fixture()
def hub(tmp_path):
    return layout.FakeHub({REPO: layout.t2v_14b(tmp_path / "remote")})


def _resolve(component, tmp_path, hub, commits=None, **kw):
    kw.setdefault("models_root", tmp_path / "models")
    return resolve_component(FAMILY.components[component], download=hub, name=component,
                             offline=kw.pop("offline", False), commit_of=commits or Commits(), **kw)


def test_downloads_only_the_component_files_once(tmp_path, hub):
    got = _resolve("dit", tmp_path, hub)
    assert hub.calls == [{"repo": REPO, "revision": HEAD, "allow": list(FAMILY.components["dit"].files),
                          "ignore": [], "local_dir": str(tmp_path / "models" / "Wan-AI" / "Wan2.1-T2V-14B")}]
    assert [p.name for p in got.files][:2] == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                                               "diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert not (got.root / "Wan2.1_VAE.pth").exists() and not (got.root / "README.md").exists()
    assert (got.source, got.revision) == (f"modelscope:{REPO}@master", HEAD)
    again = _resolve("dit", tmp_path, hub)
    assert len(hub.calls) == 1 and again.files == got.files


def test_the_commit_behind_master_is_recorded_and_read_back_without_a_download(tmp_path, hub):
    commits = Commits()
    got = _resolve("vae", tmp_path, hub, commits)
    assert commits.asked == [(REPO, "master")] and hub.calls[0]["revision"] == HEAD  # downloaded at that commit
    record = json.loads((got.root / ".wanflow-revisions.json").read_text())
    assert record == {"Wan2.1_VAE.pth": {"revision": "master", "commit": HEAD}}
    later = Commits("f" * 40)  # master moved on; the files on disk are still those of HEAD
    again = _resolve("vae", tmp_path, hub, later)
    assert again.revision == HEAD and later.asked == [] and len(hub.calls) == 1


def test_a_commit_is_never_looked_up_and_an_unknown_one_falls_back_to_the_name(tmp_path, hub, capsys):
    pinned = Commits()
    got = resolve_component(FAMILY.components["vae"], (f"modelscope:{REPO}@{'a' * 40}", ()),
                            models_root=tmp_path / "pinned", download=hub, offline=False, commit_of=pinned)
    assert pinned.asked == [] and got.revision == "a" * 40 and hub.calls[-1]["revision"] == "a" * 40
    for bad in (Commits(fail=ConnectionError("no route to host")), Commits(head="<html>busy</html>")):
        root = tmp_path / f"models-{len(hub.calls)}"
        got = _resolve("vae", tmp_path, hub, bad, models_root=root)
        assert got.revision == "master" and hub.calls[-1]["revision"] == "master"
        assert json.loads((got.root / ".wanflow-revisions.json").read_text()) == {
            "Wan2.1_VAE.pth": {"revision": "master"}}
    out = capsys.readouterr().out
    assert out.count("commit unknown; downloading by branch or tag name") == 2 and "no route to host" in out


def test_files_kept_from_an_older_download_keep_their_commit(tmp_path, hub):
    _resolve("dit", tmp_path, hub, Commits("1" * 40))
    shard = tmp_path / "models" / "Wan-AI" / "Wan2.1-T2V-14B" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])  # broken: fetched again, at today's commit
    got = _resolve("dit", tmp_path, hub, Commits("2" * 40))
    record = json.loads((got.root / ".wanflow-revisions.json").read_text())
    assert record[shard.name]["commit"] == "2" * 40
    assert record["config.json"]["commit"] == "1" * 40
    assert got.revision == "master"  # no single commit holds these files


def test_models_root_comes_from_the_environment(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS", str(tmp_path / "env-models"))
    got = _resolve("vae", tmp_path, hub, models_root=None)
    assert got.files == (tmp_path / "env-models" / "Wan-AI" / "Wan2.1-T2V-14B" / "Wan2.1_VAE.pth",)


def test_offline_names_the_missing_files_and_how_to_fetch_them(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        resolve_component(FAMILY.components["tokenizer"], models_root=tmp_path, download=hub, commit_of=Commits())
    msg = str(err.value)
    assert "WANFLOW_OFFLINE" in msg and "google/umt5-xxl/*" in msg
    assert f"modelscope download {REPO} --revision master --local-dir {tmp_path}/Wan-AI/Wan2.1-T2V-14B" in msg
    assert hub.calls == []


def test_a_failed_download_names_repo_revision_and_files(tmp_path):
    hub = layout.FakeHub({}, fail=ConnectionError("connection reset"))
    component = FAMILY.components["vae"]
    with pytest.raises(ModelLoadError, match=rf"\['Wan2.1_VAE.pth'\] from ModelScope repository {REPO} at revision "
                                             rf"v2 \(commit {HEAD}\) .*ConnectionError: connection reset"):
        resolve_component(component, (f"modelscope:{REPO}@v2", ()), models_root=tmp_path, download=hub,
                          offline=False, commit_of=Commits())


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
    tags = {"v1": "1" * 40, "v2": "2" * 40}

    def resolve(rev):
        return resolve_component(component, (f"modelscope:{REPO}@{rev}", ()), models_root=tmp_path,
                                 download=hub, offline=False, commit_of=lambda repo, tag: tags[tag])
    assert resolve("v1").revision == "1" * 40
    assert resolve("v1").source == f"modelscope:{REPO}@v1"
    assert [c["revision"] for c in hub.calls] == ["1" * 40]
    assert resolve("v2").revision == "2" * 40
    assert [c["revision"] for c in hub.calls] == ["1" * 40, "2" * 40]
    assert resolve("2" * 40).revision == "2" * 40 and len(hub.calls) == 2  # the pin's commit is on disk
