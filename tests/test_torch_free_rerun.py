"""A fully cached rerun never imports torch, and its step keys are exactly those of a run that did.

What only torch can say about the machine (is there a GPU, how many CPU threads, what a bf16 CPU
matmul runs in) is remembered in the cache folder, filed under what can change the answer; the
DiT check reads safetensors headers in plain Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomlkit

from wanflow.errors import ModelLoadError
from wanflow.memory.sizes import read_header
from wanflow.steps.files import check_dit

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
TINY = ROOT / "wanflow" / "assets" / "wanflow-tiny"
SMALL = ["--set", "video.frames=1", "--set", "video.width=16", "--set", "video.height=16",
         "--set", "sampler.steps=1"]
VALUES = {"runtime.device": "auto", "runtime.dtype": "auto", "runtime.attention": "sdpa", "runtime.compile": "none",
          "sampler.noise_device": "cpu"}
#: Runs code in a fresh interpreter and reports, last, whether torch got imported.
REPORT = "import json, sys\n{code}\nprint(json.dumps({{'torch': 'torch' in sys.modules, **result}}))\n"


def python(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", REPORT.format(code=code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.splitlines()[-1]), "output": proc.stdout + proc.stderr}


def fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "CUDA_"))}
    return {**env, "WANFLOW_CACHE": str(tmp_path / "cache"), "WANFLOW_OFFLINE": "1", **extra}


def wanflow_run(tmp_path: Path) -> dict:
    argv = ["run", str(QUICKSTART), "--runs-dir", str(tmp_path / "runs"), "--quiet", *SMALL]
    code = f"from wanflow.cli import main\nresult = {{'rc': main({argv!r})}}"
    return python(code, fresh_env(tmp_path))


def test_a_fully_cached_rerun_never_imports_torch_and_keeps_every_key(tmp_path):
    first = wanflow_run(tmp_path)
    assert first["rc"] == 0 and first["torch"]  # the first run computes, so torch is there
    second = wanflow_run(tmp_path)
    assert second["rc"] == 0 and not second["torch"], second["output"]
    archives = sorted((tmp_path / "runs" / "quickstart").iterdir())
    assert len(archives) == 2
    locks = [tomlkit.parse((a / "lock.toml").read_text()).unwrap() for a in archives]
    assert locks[0]["runtime"] == locks[1]["runtime"]
    keys = [{node: step["key"] for node, step in lock["steps"].items()} for lock in locks]
    assert len(keys[0]) == 6 and keys[0] == keys[1]  # every key: probed by torch, then from the memo
    assert [all(step["hit"] for step in lock["steps"].values()) for lock in locks] == [False, True]
    assert archives[0].name.split("-")[-1] == archives[1].name.split("-")[-1]  # the run key


DESCRIBE = f"from wanflow.steps.runtime import describe_runtime\nresult = {{'runtime': describe_runtime({VALUES!r})}}"


def test_the_runtime_probe_is_remembered_per_machine_state(tmp_path):
    probed = python(DESCRIBE, fresh_env(tmp_path))
    assert probed["torch"] and probed["runtime"]["device"] in ("cpu", "cuda")
    remembered = python(DESCRIBE, fresh_env(tmp_path))
    assert not remembered["torch"] and remembered["runtime"] == probed["runtime"]
    assert len(list((tmp_path / "cache" / "runtime").glob("*.json"))) == 1

    one_thread = python(DESCRIBE, fresh_env(tmp_path, OMP_NUM_THREADS="1"))
    assert one_thread["torch"] and one_thread["runtime"]["cpu_threads"] == "1"  # another state: probed
    assert len(list((tmp_path / "cache" / "runtime").glob("*.json"))) == 2


def test_the_memo_answers_until_torch_says_otherwise_then_it_is_rewritten(tmp_path):
    truth = python(DESCRIBE, fresh_env(tmp_path))["runtime"]
    (memo,) = (tmp_path / "cache" / "runtime").glob("*.json")
    memo.write_text(json.dumps({**json.loads(memo.read_text()), "cpu_threads": 97}))
    code = (f"{DESCRIBE}\nbefore = result['runtime']\nimport torch\n"
            f"result = {{'before': before, 'after': describe_runtime({VALUES!r})}}")
    seen = python(code, fresh_env(tmp_path))
    assert seen["before"]["cpu_threads"] == "97"  # without torch, the memo is the answer
    assert seen["after"] == truth and "runtime.memo_stale" in seen["output"]
    assert json.loads(memo.read_text())["cpu_threads"] == int(truth["cpu_threads"])


def test_the_dit_check_reads_headers_without_torch(tmp_path):
    dit, vae = TINY / "dit" / "diffusion_pytorch_model.safetensors", TINY / "vae" / "Wan2.1_VAE.safetensors"
    from safetensors import safe_open

    header = read_header(dit)
    with safe_open(str(dit), "pt") as f:
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == {k: e.shape for k, e in header.items()}
    code = (f"from wanflow.steps.files import check_dit\ncheck_dit([{str(dit)!r}], 'wanflow-tiny-dit', 'dit')\n"
            "result = {}")
    assert not python(code, fresh_env(tmp_path))["torch"]
    with pytest.raises(ModelLoadError, match=r"needs a Wan T2V DiT \(wanflow-tiny-dit\), but the file looks like a Wan2.1 VAE"):
        check_dit([vae], "wanflow-tiny-dit", "dit")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(dit.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="cut.safetensors: not a complete safetensors file"):
        check_dit([cut], "wanflow-tiny-dit", "dit")
