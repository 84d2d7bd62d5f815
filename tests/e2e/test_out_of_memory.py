"""Running out of memory mid-run is a planner error with the numbers, not a traceback, and it
loses nothing: the steps before it stay cached and the next run picks up from there."""

from __future__ import annotations

from pathlib import Path

import torch

from wanflow.cli import main
from wanflow.models.dit import WanDiT
from wanflow.memory import pool as model_pool

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"


def test_an_out_of_memory_denoise_is_reported_against_the_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    model_pool.clear()
    real = WanDiT.forward

    def starved(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(WanDiT, "forward", starved)
    assert main(["run", str(QUICKSTART), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "step 'denoise' ran out of host memory (OutOfMemoryError)" in err
    assert "the memory plan predicted a peak of" in err and "Traceback" not in err
    assert not any(runs.rglob("COMPLETE"))  # no archive looks complete
    monkeypatch.setattr(WanDiT, "forward", real)
    assert main(["run", str(QUICKSTART), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "(2 hit, 4 computed)" in out  # the text encodes survived; denoise and after ran
