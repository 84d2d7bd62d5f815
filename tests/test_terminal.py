"""What `wanflow run` prints over the real quickstart: a line per step, one clean bar, the path last."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wanflow.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
SMALL = ["--set", "video.frames=5", "--set", "video.width=32", "--set", "video.height=32",
         "--set", "sampler.steps=2"]
NODES = ("encode-text:positive", "encode-text:negative", "denoise", "decode", "save", "save-metadata")  # cfg 2
STEP_LINE = re.compile(r"  (hit|computed)  +(\S+)(?: +(?:\d+\.\d+|\d+ min \d\d) s)?")
ENGINE_EVENTS = ("run.start", "step.start", "step.miss", "step.hit", "step.done", "run.done")


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")

    def call(*flags: str, top: tuple[str, ...] = ()) -> tuple[str, str]:
        argv = [*top, "run", str(QUICKSTART), "--runs-dir", str(tmp_path / "runs"), *SMALL, *flags]
        assert main(argv) == 0
        return capsys.readouterr()

    return call


def temporary_paths(text: str, allowed: Path) -> list[str]:
    """Paths under the system's temporary folder, other than the test's own and the checkout's."""
    tmp = re.escape(tempfile.gettempdir().rstrip("/"))
    return [p for p in re.findall(rf"{tmp}/[^\s'\",\]]+", text) if not p.startswith((str(allowed), str(ROOT)))]


def test_one_line_per_step_then_the_video_path_last(run, tmp_path):
    out, err = run()
    lines = err.splitlines()
    assert [line for line in lines if not STEP_LINE.fullmatch(line)] == []  # nothing but step lines
    assert [STEP_LINE.fullmatch(line).groups() for line in lines] == [("computed", n) for n in NODES]
    assert all(re.search(r"\d s$", line) for line in lines)  # each computed step says how long it took
    *summary, last = out.splitlines()
    video = Path(last)
    assert video.name == "video.mp4" and video.parent.name == "outputs" and video.stat().st_size > 0
    assert summary == [f"{video.parents[1]}  (0 hit, {len(NODES)} computed)"]

    out, err = run()
    assert [STEP_LINE.fullmatch(line).groups() for line in err.splitlines()] == [("hit", n) for n in NODES]
    assert Path(out.splitlines()[-1]).is_file() and f"({len(NODES)} hit, 0 computed)" in out
    assert not temporary_paths(out + err, tmp_path)


def test_quiet_prints_only_the_final_path(run, tmp_path):
    out, err = run("--quiet")
    assert err == ""
    (line,) = out.splitlines()
    assert Path(line).is_file() and line.endswith("outputs/video.mp4")


def test_engine_events_need_verbose_and_no_line_names_a_temporary_file(run, tmp_path):
    _, err = run()
    assert not any(event in err for event in ENGINE_EVENTS)
    _, err = run("--set", "sampler.seed=3", top=("-v",))
    assert all(event in err for event in ENGINE_EVENTS)
    assert sum(bool(STEP_LINE.fullmatch(line)) for line in err.splitlines()) == len(NODES)
    assert not temporary_paths(err, tmp_path)


def test_log_json_keeps_stderr_to_json_lines(run, tmp_path):
    out, err = run(top=("--log-json",))
    records = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    done = [r["node"] for r in records if r["event"] == "step.done"]
    assert done == list(NODES) and {r["event"] for r in records} >= set(ENGINE_EVENTS) - {"step.hit"}
    assert Path(out.splitlines()[-1]).is_file()
    assert not temporary_paths(err, tmp_path)


def test_log_lines_never_tear_the_progress_bar(tmp_path):
    """On a terminal, a line logged while the denoise bar is drawn lands on its own line."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
    env = {**os.environ, "WANFLOW_CACHE": str(tmp_path / "cache"), "WANFLOW_OFFLINE": "1"}
    argv = [sys.executable, "-m", "wanflow", "-v", "run", str(QUICKSTART), "--runs-dir", str(tmp_path / "runs"),
            *SMALL]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    drawn = io.BytesIO()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        drawn.write(chunk)
    out = proc.communicate(timeout=120)[0].decode()
    os.close(controller)
    assert proc.returncode == 0 and Path(out.splitlines()[-1]).is_file()
    text = drawn.getvalue().decode(errors="replace").replace("\r\n", "\n")  # the terminal's own line ends
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # colours
    visible = [segment.split("\r")[-1] for segment in text.split("\n")]  # what each line ends up showing
    bar = re.compile(r"(denoise|decode): +\d+%\|")
    assert bar.search(text), "no progress bar was drawn"
    logged = [line for line in visible if re.search(r"\[(debug|info|warning) *\]", line)]
    assert any("weights_loaded" in line for line in logged)  # logged inside denoise, under its bar
    torn = [line for line in logged if bar.search(line)]
    assert not torn, torn
    steps = [line for line in visible if STEP_LINE.search(line)]
    assert len(steps) == len(NODES) and not [line for line in steps if bar.search(line)]
