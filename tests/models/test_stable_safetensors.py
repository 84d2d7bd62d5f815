"""The same tensors and metadata give the same safetensors bytes in every process."""

from __future__ import annotations

import subprocess
import sys

from safetensors.torch import load

SCRIPT = """
import sys, torch
from wanflow.models.stable_safetensors import save_stable
meta = {f"key{i:02d}": f"value {i} é" for i in range(24)}
sys.stdout.buffer.write(save_stable({"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3)}, metadata=meta))
"""


def _written() -> bytes:
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True).stdout


def test_two_processes_write_identical_bytes_that_read_back_unchanged():
    first, second = _written(), _written()
    assert first == second  # the writer's metadata order alone varies between processes
    tensors = load(first)
    assert tensors["b"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and tensors["a"].tolist() == [1.0] * 3
