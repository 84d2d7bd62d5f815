"""The command line: exit codes, messages without tracebacks, show/fmt/validate behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    path.write_text(GOOD + "[memory]\nfp8 = true\n[train]\ndataset = \"data.csv\"\n")
    (tmp_path / "data.csv").write_text("video,prompt\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fp8" not in err  # fp8 storage is honoured (for a LoRA's frozen base too): no problem of its own
    assert "r.toml: [train].dataset: " in err and "data.csv: holds no rows" in err  # checked, not refused
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
    from wanflow.plugins import build_registry

    assert len(capsys.readouterr().out.splitlines()) == len(build_registry(entry_points=False).family_names())
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
        assert main(args) == 0  # planned without the weights
        captured = capsys.readouterr()
        assert "must not download" not in captured.out + captured.err
    main(["explain", str(path)])
    assert "will run: weights not present" in capsys.readouterr().out
    assert "WANFLOW_OFFLINE" not in __import__("os").environ


TINY = 'model = "wanflow-tiny"\n[prompt]\ntext = "a cat"\n'


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder to run in, with its own cache and runs folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WANFLOW_RUNS", raising=False)
    return tmp_path


def test_validate_reports_every_setting_it_cannot_honour_at_once(workdir, capsys):
    (workdir / "data.csv").write_text("video,prompt\n")
    (workdir / "weights").mkdir()
    (workdir / "r.toml").write_text(TINY + '[runtime]\nattention = "flash"\n'
                                    '[models.dit]\nsource = "weights"\n[train]\ndataset = "data.csv"\n'
                                    '[sampler]\nnoise_device = "cuda"\n')
    assert main(["validate", "r.toml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for expected in ("r.toml: [train].dataset: data.csv: holds no rows",
                     'r.toml: [runtime].attention = "flash": no attention backend of that name is installed',
                     'r.toml: [sampler].noise_device = "cuda": this machine has no CUDA device',
                     'r.toml: [models.dit].source = "weights": is a folder without the dit files '
                     "(nothing matches dit/*); it holds nothing (it is empty)"):
        assert expected in err


def test_validate_names_the_plugin_of_a_missing_output_format(workdir, capsys):
    (workdir / "r.toml").write_text(TINY + '[output]\nformat = "gif"\n')
    assert main(["--no-plugins", "validate", "r.toml"]) == 2
    err = capsys.readouterr().err
    assert ('r.toml: [output].format = "gif": no installed plugin saves this format (installed formats: mp4); '
            "the wanflow-gif plugin provides it: pip install wanflow-gif") in err


def test_run_refuses_an_unreadable_source_video_before_any_step(workdir, capsys):
    (workdir / "clip.mp4").write_bytes(bytes(range(200)))
    (workdir / "r.toml").write_text(TINY + '[inputs]\nvideo = "clip.mp4"\n[sampler]\ndenoising_strength = 0.5\n')
    assert main(["run", "r.toml"]) == 2
    captured = capsys.readouterr()
    assert 'r.toml: [inputs].video = "clip.mp4": not a readable video' in captured.err
    assert "Traceback" not in captured.err and "encode-text" not in captured.out + captured.err
    assert not (workdir / "runs").exists()


def test_run_refuses_an_empty_training_dataset_before_any_step(workdir, capsys):
    (workdir / "data.csv").write_text("video,prompt\n")
    (workdir / "r.toml").write_text('model = "wanflow-tiny"\n[train]\ndataset = "data.csv"\n')
    assert main(["run", "r.toml"]) == 2
    assert "r.toml: [train].dataset: data.csv: holds no rows; add a row per clip (video or image, prompt)" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def _archive(folder, recipe_text):
    folder.mkdir(parents=True)
    for name in ("recipe.toml", "resolved.toml"):
        (folder / name).write_text(recipe_text)
    (folder / "lock.toml").write_text("schema = 1\n")
    (folder / "COMPLETE").write_text("x\n")


def test_validate_and_fmt_of_a_folder_leave_run_archives_alone(workdir, capsys):
    messy = "[sampler]\ncfg = 5\n" + 'model = "wanflow-tiny"\n'
    (workdir / "recipes").mkdir()
    (workdir / "recipes" / "r.toml").write_text(TINY)
    _archive(workdir / "runs" / "r" / "20260101T000000Z-abcd1234", messy)  # not even a valid recipe
    (workdir / "runs" / "r" / "sweep-20260101T000000Z.toml").write_text("name = 1\n")
    _archive(workdir / "runs" / "r" / ".incomplete-20260102T000000Z-7", messy)
    _archive(workdir / "recipes" / "from-a-colleague", messy)  # an archive copied beside recipes
    assert main(["validate", "."]) == 0
    assert capsys.readouterr().out.split() == ["ok:", "recipes/r.toml"]
    assert main(["fmt", "."]) == 0
    assert (workdir / "runs" / "r" / "20260101T000000Z-abcd1234" / "recipe.toml").read_text() == messy
    assert (workdir / "recipes" / "from-a-colleague" / "resolved.toml").read_text() == messy
    assert main(["fmt", "runs/r/20260101T000000Z-abcd1234/recipe.toml"]) == 2
    assert "belongs to a run archive" in capsys.readouterr().err
    assert main(["validate", "runs"]) == 2
    assert "is a run archive (or a folder of them)" in capsys.readouterr().err


def test_show_prints_the_sweep_and_the_reason_of_each_default(workdir, capsys):
    (workdir / "r.toml").write_text(TINY + '[sweep]\n"sampler.seed" = [1, 2]\n"sampler.cfg" = [3.0, 4.0]\n')
    assert main(["show", "r.toml"]) == 0
    out = capsys.readouterr().out
    assert 'noise_device = "cpu" # default: CPU noise gives the same video for a seed on every machine' in out
    assert "# boundary unset: A14B only: the σ·1000 fraction where the experts switch" in out
    assert "# seed: set by [sweep] in each job" in out
    assert "cfg = 2.0 # family wanflow-tiny; [sweep] replaces it in every job" in out
    assert out.endswith('[sweep]\n# 4 jobs, one per combination; each sets these keys over the values above\n'
                        '"sampler.seed" = [1, 2]\n"sampler.cfg" = [3.0, 4.0]\n')


def test_a_set_of_a_swept_key_is_refused(workdir, capsys):
    (workdir / "r.toml").write_text(TINY + '[sweep]\n"sampler.seed" = [1, 2]\n')
    assert main(["validate", "r.toml", "--set", "sampler.seed=7"]) == 2
    err = capsys.readouterr().err
    assert '--set sampler.seed=7: [sweep]."sampler.seed" in r.toml also sets this key' in err
    assert "remove one of them" in err and "Traceback" not in err


def test_diff_of_a_component_source_invalidates_every_step_using_its_weights(workdir, capsys):
    import shutil

    shutil.copytree(Path(wanflow.__file__).parent / "assets" / "wanflow-tiny" / "dit", workdir / "dit")
    (workdir / "a.toml").write_text(TINY)
    (workdir / "b.toml").write_text(TINY + '[models.dit]\nsource = "dit"\nfiles = ["*"]\n')
    assert main(["diff", "a.toml", "b.toml"]) == 0
    out = capsys.readouterr().out
    assert "[models.dit].source: (absent) → " in out
    # the same bytes in another folder: no step's numbers change (only the metadata's recipe digest)
    assert "re-runs: denoise" not in out and out.count("re-runs: save, save-metadata") >= 2
    assert "models: {}" not in out and "[models.dit].dtype" not in out  # no override of it is no change
    weights = next((workdir / "dit").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights, same header
    weights.write_bytes(bytes(data))
    assert main(["diff", "a.toml", "b.toml"]) == 0
    out = capsys.readouterr().out
    assert out.count("re-runs: denoise, decode, save, save-metadata") == 2  # source and files


def test_diff_of_the_family_invalidates_every_step_with_weights():
    from wanflow.engine.diff import diff_values
    from wanflow.engine.step import StepSpec, WeightFile

    class Kind:
        kind, version, output = "k", 1, "tensors"

        def __init__(self, reads):
            self.reads = reads

    def spec(name, reads=(), weights=(), inputs=None):
        return StepSpec(name, Kind(reads), inputs=inputs or {},
                        weights={r: WeightFile(f"/w/{r}") for r in weights})

    specs = [spec("encode-text:positive", ("prompt.text",), ("text_encoder", "tokenizer.0")),
             spec("denoise", ("sampler.cfg",), ("dit.0",), {"pos": "encode-text:positive"}),
             spec("decode", ("vae.tiled",), ("vae",), {"latents": "denoise"}),
             spec("save", ("output.format",), (), {"frames": "decode"})]
    a = {"model": "wan2.1-t2v-1.3b", "sampler.cfg": 5.0}
    changes = {c.key: c.invalidates for c in diff_values(a, {**a, "model": "wan2.1-t2v-14b"}, specs)}
    assert changes == {"model": ("encode-text:positive", "denoise", "decode", "save")}
    vae_only = diff_values(a, {**a, "models.vae.source": "/other/vae.pth"}, specs)
    assert [(c.key, c.invalidates) for c in vae_only] == [("models.vae.source", ("decode", "save"))]
    same_text_encoder = [spec("encode-text:positive", ("prompt.text",), ("text_encoder", "tokenizer.0")),
                         *[spec(s.name, s.step.reads, ("other",), s.inputs) for s in specs[1:3]], specs[3]]
    planned_both = diff_values(a, {**a, "model": "wan2.1-t2v-14b"}, specs, specs_a=same_text_encoder)
    assert planned_both[0].invalidates == ("denoise", "decode", "save")  # the text encoder's files are the same


def test_diffs_idea_of_an_unset_override_field_is_the_schemas():
    import attrs

    from wanflow.engine.diff import MODEL_OVERRIDE_DEFAULTS
    from wanflow.recipe.flatten import to_data
    from wanflow.recipe.schema import ModelSource

    defaults = {f.name: to_data(f.default.factory() if isinstance(f.default, attrs.Factory) else f.default)
                for f in attrs.fields(ModelSource) if f.default is not attrs.NOTHING}
    assert defaults == dict(MODEL_OVERRIDE_DEFAULTS)
