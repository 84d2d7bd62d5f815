"""The model pool holds what the recipe's memory allows: its policy, within its budget."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from structlog.testing import capture_logs

from tests.e2e._layout import tiny, write_dit, write_shared
from wanflow.memory import pool as model_pool
from wanflow.memory.pool import Residency

FP32 = torch.float32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny DiT, umT5 (+ tokenizer), CLIP and Wan2.1 VAE on disk."""
    root = tmp_path_factory.mktemp("pool")
    write_shared(root / "shared")
    write_dit(root / "dit", tiny.tiny_dit_config("t2v", 16, 16), seed=1, shards=1)
    return root


@pytest.fixture(autouse=True)
def empty_pool():
    model_pool.clear()
    yield
    model_pool.clear()


class Requests:
    """Each tiny model requested through the pool, in fp32 on the CPU."""

    def __init__(self, root):
        self.root = root

    def dit(self, residency):
        folder = self.root / "dit"
        files = [folder / "diffusion_pytorch_model.safetensors", folder / "config.json"]
        return model_pool.dit(files, FP32, "cpu", "sdpa", residency)

    def text(self, residency):
        shared = self.root / "shared"
        return model_pool.text_encoder(shared / "umt5.pth", shared / "tokenizer", FP32, "cpu", residency)

    def clip(self, residency):
        return model_pool.image_encoder(self.root / "shared" / "clip.pth", FP32, "cpu", residency)

    def vae(self, residency):
        return model_pool.vae(self.root / "shared" / "wan2.1.pth", "wan2.1", FP32, "cpu", residency)


class Loads(Requests):
    """Requests that also record, for each DiT and VAE load, the bytes resident when it started."""

    def __init__(self, root, monkeypatch):
        super().__init__(root)
        self.started = []
        self._spy(monkeypatch, "wanflow.models.dit_loader", "load_dit", "dit")
        self._spy(monkeypatch, "wanflow.models.vae.loader", "load_vae", "vae")

    def _spy(self, monkeypatch, module, name, kind):
        real = getattr(importlib.import_module(module), name)

        def recording(*args, **kwargs):
            self.started.append((kind, model_pool.resident_bytes()))
            return real(*args, **kwargs)

        monkeypatch.setattr(f"{module}.{name}", recording)


@pytest.fixture
def loads(files, monkeypatch):
    return Loads(files, monkeypatch)


@pytest.fixture(scope="module")
def sizes(files):
    """Each model's bytes, measured once outside any budget."""
    out, requests = {}, Requests(files)
    for kind in ("dit", "text", "clip", "vae"):
        model_pool.clear()
        out[kind] = model_pool.model_bytes(getattr(requests, kind)(None))
    model_pool.clear()
    assert len(set(out.values())) == 4 and min(out.values()) > 10_000  # distinct, real sizes
    return out


def kinds() -> list[str]:
    return [kind for kind, _ in model_pool.resident()]


def test_none_keeps_two_models_that_fit_and_evicts_the_least_recently_used(loads, sizes):
    budget = sizes["dit"] + sizes["vae"] + sizes["text"] // 2  # any two of them, not all three
    none = Residency("none", budget)
    steps = [(loads.text, ["text_encoder"]), (loads.dit, ["text_encoder", "dit"]),
             (loads.vae, ["dit", "vae"]), (loads.dit, ["vae", "dit"]), (loads.text, ["dit", "text_encoder"])]
    for request, resident in steps:
        request(none)
        assert kinds() == resident
        assert model_pool.resident_bytes() <= budget
    assert loads.started == [("dit", sizes["text"]), ("vae", sizes["dit"])]  # made room before loading


def test_a_budget_for_one_model_holds_one(loads, sizes):
    budget = sizes["vae"] + sizes["text"] // 2  # the VAE, or the text encoder and the DiT
    for policy in ("none", "offload"):
        model_pool.clear()
        for request, kind in ((loads.text, "text_encoder"), (loads.vae, "vae"), (loads.dit, "dit")):
            request(Residency(policy, budget))
            assert kinds() == [kind], policy
            assert model_pool.resident_bytes() <= budget


def test_offload_keeps_one_large_model_even_when_more_would_fit(loads, sizes):
    offload = Residency("offload", 10 * sum(sizes.values()))
    steps = [(loads.text, ["text_encoder"]), (loads.clip, ["image_encoder"]),
             (loads.vae, ["image_encoder", "vae"]), (loads.dit, ["vae", "dit"]),
             (loads.text, ["vae", "text_encoder"])]
    for request, resident in steps:
        request(offload)
        assert kinds() == resident


def test_a_later_job_with_less_memory_shrinks_what_a_hit_leaves(loads, sizes):
    loads.text(Residency("none", 10**12))
    loads.dit(Residency("none", 10**12))
    assert kinds() == ["text_encoder", "dit"]
    loads.dit(Residency("offload", 10**12))
    assert kinds() == ["dit"]


def test_a_hit_is_the_same_object_and_anything_different_loads_anew(loads, files):
    none = Residency("none", 10**12)
    first = loads.vae(none)
    assert loads.vae(none) is first
    half = model_pool.vae(files / "shared" / "wan2.1.pth", "wan2.1", torch.bfloat16, "cpu", none)
    assert half is not first and next(half.parameters()).dtype == torch.bfloat16
    path = files / "shared" / "wan2.1.pth"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the file replaced on disk
    assert loads.vae(none) is not first
    assert [kind for kind, _ in loads.started] == ["vae", "vae", "vae"]


def test_without_a_residency_a_dit_releases_the_encoders_only(loads):
    loads.text(None)
    loads.vae(None)
    loads.clip(None)
    assert kinds() == ["text_encoder", "vae", "image_encoder"]
    loads.dit(None)
    assert kinds() == ["vae", "dit"]


def test_a_model_larger_than_the_budget_stays_alone_and_says_so(loads, sizes):
    budget = sizes["dit"] // 2
    loads.text(Residency("none", budget))
    with capture_logs() as logs:
        loads.dit(Residency("none", budget))
    assert kinds() == ["dit"]
    warned = [e for e in logs if e["event"] == "model_over_budget"]
    assert warned == [{"event": "model_over_budget", "log_level": "warning", "kind": "dit",
                       "resident_bytes": sizes["dit"], "budget_bytes": budget, "policy": "none"}]
