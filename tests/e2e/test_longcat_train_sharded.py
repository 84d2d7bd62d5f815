"""LongCat-Video trained sharded: two CPU processes (gloo) under FSDP against one process, and resumed.

accelerate runs FSDP only on GPUs; here the workers start through ``tests/e2e/_sharded.py``,
which makes accelerate's CPU state FSDP, so the run takes the whole sharded path a GPU run
takes: the engine step writes ``accelerate.yaml`` with LongCat's block class, ``accelerate
launch`` starts the workers, accelerate's FSDP2 shards each of the DiT's ``Block``s, the loop
trains (conditioning frames, gradient checkpointing of the blocks), the trained
tensors are gathered whole and checkpoints are accelerate's ``save_state`` of every shard.

Tolerance: as DDP's (tests/train/test_distributed.py says why 1e-5): a batch of two runs as two
batches of one and the gradients are reduce-scattered rather than summed in one mean; measured
4.2e-7 (LoRA) and 7.7e-7 (full fine-tuning), the logged losses equal. DeepSpeed ZeRO-2 runs only
with deepspeed installed on two CUDA GPUs (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e import _sharded
from tests.e2e import test_longcat_train as unsharded
from tests.e2e._run import run
from tests.e2e._sharded import killed_and_resumed
from tests.e2e.test_longcat_train import COND, _recipe, _row

media, venv_runs = unsharded.media, unsharded.venv_runs  # its fixtures
fsdp_on_cpu = _sharded.fsdp_on_cpu  # the harness's

TOLERANCE = 1e-5
TRAIN = {"steps": 4, "learning_rate": 1e-4, "checkpoint_every": 2}


#: DeepSpeed's ZeRO runs only on CUDA GPUs (accelerate never starts it for CPU workers).
NEEDS_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or torch.cuda.device_count() < 2,
    reason="DeepSpeed ZeRO needs deepspeed installed and two CUDA GPUs; accelerate does not run it on the CPU")


def _trained(outcome, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(outcome.archive / "outputs" / name))


def _losses(outcome) -> list[float]:
    rows = (outcome.archive / "outputs" / "loss.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


def _base_dit(runs: Path) -> dict[str, torch.Tensor]:
    """The tiny release's DiT weights (what full fine-tuning starts from)."""
    import os

    from tests.e2e._layout_longcat import REPO

    folder = Path(os.environ["WANFLOW_MODELS"]) / REPO / "dit"
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


@pytest.mark.parametrize("distribution", ["fsdp", pytest.param("deepspeed-zero2", marks=NEEDS_DEEPSPEED)])
def test_two_sharded_processes_train_the_lora_one_process_trains(venv_runs, media, tmp_path, request, distribution):
    # batches of one per process against one process's batches of two, the blocks checkpointed
    # (LongCat's own gradient checkpointing, under the engine's hooks); the recipes compute in fp32,
    # which DeepSpeed takes for LongCat
    if distribution == "fsdp":
        request.getfixturevalue("fsdp_on_cpu")
    rows = [_row(), _row(clip_file="clips/past.mp4", prompt="noise")]
    single = run(_recipe(tmp_path, rows, batch_size=2, **TRAIN), venv_runs)
    sharded = run(_recipe(tmp_path, rows, name="sharded", batch_size=1, distribution=distribution, processes=2,
                          gradient_checkpointing=True, **TRAIN), venv_runs)
    got, want = (_trained(o, "lora.safetensors") for o in (sharded, single))
    assert set(got) == set(want) and want
    assert max(float(v.abs().max()) for k, v in want.items() if "lora_B" in k or "lora_up" in k) > 2e-4  # it trained
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= TOLERANCE, worst
    assert _losses(sharded) == pytest.approx(_losses(single), rel=1e-5)


def test_fsdp_fully_fine_tunes_on_continuations_as_one_process_does(venv_runs, media, tmp_path, fsdp_on_cpu):
    # two continuation samples: each clip's first latent frames are its longcat_video's, clean,
    # read as conditioning frames by the sharded blocks
    rows = [_row("clips/past.mp4"), _row("clips/other.mp4", prompt="a square")]
    settings = {"frames": 9, "cond": COND, "method": "full", **TRAIN}
    single = run(_recipe(tmp_path, rows, batch_size=2, **settings), venv_runs)
    fsdp = run(_recipe(tmp_path, rows, name="fsdp", batch_size=1, distribution="fsdp", processes=2, **settings),
               venv_runs)
    got, want = (_trained(o, "dit.safetensors") for o in (fsdp, single))
    assert set(got) == set(want) and {"blocks.1.ffn.w2.weight", "final_layer.linear.weight"} <= set(want)
    base = _base_dit(venv_runs)
    moved = max(float((want[k] - base[k]).abs().max()) for k in want)
    assert moved > 5e-5  # every weight trained: a step moves a weight by ~lr
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= TOLERANCE, worst
    assert _losses(fsdp) == pytest.approx(_losses(single), rel=1e-5)


def test_a_killed_fsdp_run_resumes_and_ends_with_the_uninterrupted_bits(venv_runs, media, tmp_path, fsdp_on_cpu):
    import os

    rows = [_row(), _row(clip_file="clips/past.mp4", prompt="noise")]
    train = {**TRAIN, "steps": 6}  # a checkpoint every 2: the kill lands well before the last
    recipe = _recipe(tmp_path, rows, name="fsdp", batch_size=1, distribution="fsdp", processes=2, **train)
    whole = run(recipe, venv_runs)  # uninterrupted, in its own cache

    env = {**os.environ, "WANFLOW_CACHE": str(tmp_path / "cache-killed")}
    resumed, done, output = killed_and_resumed(recipe, tmp_path / "killed-runs", env, tmp_path, lift=True)
    assert 2 <= done < train["steps"]  # from a sharded checkpoint
    assert f"trained_steps={train['steps'] - done}" in output
    want, got = _trained(whole, "lora.safetensors"), _trained(resumed, "lora.safetensors")
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
