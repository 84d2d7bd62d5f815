"""The command line: exit codes, messages without tracebacks, show/fmt/validate behaviour."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import wanflow
from wanflow.cli import main

GOOD = 'model = "wan2.1-t2v-1.3b"\n[prompt]\ntext = "a cat"\n[sampler]\nsteps = 4\n'


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"wanflow {wanflow.__version__}"


def test_validate_ok_and_bad(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD + "[video]\nframes = 8\n")
    assert main(["validate", str(good)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "[video].frames = 8: must be 4n+1 (5 or 9)" in err and "Traceback" not in err


def test_validate_reports_what_the_pipeline_cannot_honour_yet(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(GOOD + "[memory]\nfp8 = true\n")
    assert main(["validate", str(path), "--set", "runtime.teacache_threshold=0.2"]) == 2
    err = capsys.readouterr().err
    assert "r.toml: [memory].fp8 = true: fp8 weight storage is not implemented yet; set it to false" in err
    assert "--set: [runtime].teacache_threshold = 0.2: TeaCache is not implemented yet" in err
    assert "Traceback" not in err


def test_show_names_the_origin_of_every_value(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(GOOD)
    assert main(["show", str(path), "--set", "sampler.cfg=7"]) == 0
    out = capsys.readouterr().out
    assert "steps = 4 # recipe" in out
    assert "cfg = 7.0 # --set" in out
    assert "shift = 5.0 # family wan2.1-t2v-1.3b" in out
    assert 'noise_device = "cpu" # default' in out


def test_fmt_rewrites_and_check_fails_until_canonical(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text("[sampler]\ncfg = 5\n\n\n" + 'model = "wan2.1-t2v-1.3b"\n'.join(["", ""]))
    assert main(["fmt", "--check", str(path)]) == 2
    assert "not in canonical form" in capsys.readouterr().err
    assert main(["fmt", str(path)]) == 0
    assert "cfg = 5.0" in path.read_text()
    assert main(["fmt", "--check", str(path)]) == 0


def test_fmt_on_a_syntax_error_keeps_the_file(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text('model = "x\n')
    assert main(["fmt", str(path)]) == 2
    assert "r.toml:1:" in capsys.readouterr().err and path.read_text() == 'model = "x\n'


def test_internal_errors_exit_1_with_a_traceback(tmp_path, capsys, monkeypatch):
    from wanflow.cli import recipe_cmds

    monkeypatch.setattr(recipe_cmds, "load_recipe", lambda *a, **k: 1 / 0)
    path = tmp_path / "r.toml"
    path.write_text(GOOD)
    assert main(["show", str(path)]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_log_json_emits_json_lines(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(GOOD)
    proc = subprocess.run([sys.executable, "-m", "wanflow", "--log-json", "-v", "validate", str(path)],
                          capture_output=True, text=True, check=True)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert events and all("event" in e and "level" in e for e in events)


def test_missing_recipe_is_a_user_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "no such recipe file" in capsys.readouterr().err


def test_models_lists_every_family_and_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS", str(tmp_path))
    repo = tmp_path / "Wan-AI" / "Wan2.1-T2V-1.3B"
    repo.mkdir(parents=True)
    (repo / "Wan2.1_VAE.pth").write_bytes(b"")  # an empty file is never taken as present
    assert main(["models", "--files", "wan2.1-t2v-1.3b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wan2.1-t2v-1.3b") and "to download" in out.splitlines()[0]
    vae_line = next(line for line in out.splitlines() if line.strip().startswith("vae"))
    assert "missing" in vae_line and "Wan2.1_VAE.pth" in vae_line
    assert main(["models"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 9
    assert main(["models", "wan9"]) == 2


def test_explain_and_dry_run_never_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANFLOW_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "r.toml"
    path.write_text(GOOD)
    import wanflow.sources.fetch as fetch

    def no_download(*args, **kwargs):
        pytest.fail("explain, diff and --dry-run must not download")

    real = fetch.resolve_component
    monkeypatch.setattr(fetch, "resolve_component", lambda *a, **k: real(*a, **{**k, "download": no_download}))
    import wanflow.sources

    monkeypatch.setattr(wanflow.sources, "resolve_component", fetch.resolve_component)
    for args in (["explain", str(path)], ["run", str(path), "--dry-run"], ["diff", str(path), str(path)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Wan-AI/Wan2.1-T2V-1.3B" in err and "must not download" not in err
    assert "WANFLOW_OFFLINE" not in __import__("os").environ
