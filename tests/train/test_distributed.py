"""Distributed training through accelerate: two CPU processes (gloo) against one, configs, resume.

Tolerance: DDP with 2 processes trains the same LoRA as 1 process with the same global batch up
to fp32 rounding (a batch of two runs as two batches of one, and the gradients are averaged by an
all-reduce instead of inside one mean), which AdamW's per-element normalisation lifts for
elements whose gradient is near zero: measured ≤ 1e-6 after 8 steps at lr 1e-4, on factors of
size ~0.1 that each step moves by ~lr. The bound, 1e-5 absolute, is ~10× that and ~10× below
what a wrong split, weighting or data order changes (≥ 1e-4: a step's worth).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.e2e._layout import write_models_root
from tests.e2e._run import run
from tests.e2e._sharded import killed_and_resumed
from tests.e2e._train import write_dataset, write_train_recipe
from wanflow.train.distributed import accelerate_config, deepspeed_config, write_configs

MODEL = "wan2.1-t2v-1.3b"  # the tiny official-layout DiT of the e2e tests
TOLERANCE = 1e-5
TRAIN = {"steps": 8, "checkpoint_every": 2, "learning_rate": 1e-4}


def _env(models: Path, tmp: Path) -> dict[str, str]:
    return {"WANFLOW_MODELS": str(models), "WANFLOW_OFFLINE": "1", "WANFLOW_CACHE": str(tmp / "cache")}


def _lora(outcome) -> dict[str, torch.Tensor]:
    return load_file(str(outcome.archive / "outputs" / "lora.safetensors"))


def _losses(outcome) -> list[float]:
    rows = (outcome.archive / "outputs" / "loss.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny models and a 3-clip dataset."""
    tmp = tmp_path_factory.mktemp("tiny")
    return {"models": write_models_root(tmp / "models", (MODEL,)),
            "metadata": write_dataset(tmp / "data", [("red", 1), ("green", -1), ("blue", 1)])}


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny models, a 3-clip dataset and an uninterrupted DDP run (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("ddp")
    models, metadata = tiny["models"], tiny["metadata"]
    ddp_recipe = write_train_recipe(tmp, MODEL, metadata, name="ddp", distribution="ddp", processes=2,
                                    batch_size=1, **TRAIN)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(models, tmp).items():
            mp.setenv(k, v)
        ddp = run(ddp_recipe, tmp / "runs")
    return {"tmp": tmp, "models": models, "metadata": metadata, "ddp": ddp, "ddp_recipe": ddp_recipe}


def _matches(ddp, single) -> None:
    got, want = _lora(ddp), _lora(single)
    assert set(got) == set(want) and len(want) > 0
    ups = [k for k in want if ".lora_B." in k]
    assert ups and all(float(want[k].abs().max()) > 2e-4 for k in ups)  # it trained: B left zero
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= TOLERANCE, worst
    # the logged loss is the whole batch's mean (averaged over the processes), step by step
    assert _losses(ddp) == pytest.approx(_losses(single), rel=1e-5)


def test_ddp_with_two_processes_of_batch_1_matches_one_process_of_batch_2(setup, tmp_path, monkeypatch):
    # three clips in global batches of two: each epoch ends with a batch of one, which leaves the
    # second process an empty shard (it runs a sample at weight 0)
    for k, v in _env(setup["models"], tmp_path).items():
        monkeypatch.setenv(k, v)
    single = run(write_train_recipe(tmp_path, MODEL, setup["metadata"], name="single", batch_size=2, **TRAIN),
                 tmp_path / "runs")
    _matches(setup["ddp"], single)


def test_ddp_splits_an_odd_batch_unevenly_and_weights_each_share(setup, tmp_path, monkeypatch):
    # global batches of 2 × 2 over three clips are batches of three: shards of two and one sample,
    # whose mean losses count 2/3 and 1/3 (the one-process batch of three: batch_size 3)
    for k, v in _env(setup["models"], tmp_path).items():
        monkeypatch.setenv(k, v)
    single = run(write_train_recipe(tmp_path, MODEL, setup["metadata"], name="single", batch_size=3, **TRAIN),
                 tmp_path / "runs")
    ddp = run(write_train_recipe(tmp_path, MODEL, setup["metadata"], name="odd", distribution="ddp", processes=2,
                                 batch_size=2, **TRAIN), tmp_path / "runs")
    _matches(ddp, single)


def test_a_killed_distributed_run_resumes_and_ends_with_the_uninterrupted_bits(setup, tmp_path):
    # resumed the same way (a new process, the same cache); the workers take only the steps after
    # the checkpoint
    env = {**os.environ, **_env(setup["models"], tmp_path)}
    resumed, done, output = killed_and_resumed(setup["ddp_recipe"], tmp_path / "runs", env, tmp_path)
    assert done >= 2
    assert f"trained_steps={TRAIN['steps'] - done}" in output
    want, got = _lora(setup["ddp"]), _lora(resumed)
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs where CUDA is")
def test_fsdp_on_the_cpu_is_refused_by_rank_not_run_as_ddp(setup, tmp_path, monkeypatch):
    from wanflow.steps import train_checks
    from wanflow.steps.train_distributed import TrainingWorkerError

    for k, v in _env(setup["models"], tmp_path).items():
        monkeypatch.setenv(k, v)
    # validation refuses fsdp without CUDA (tests/steps/test_train_checks.py); past it, the workers
    # still check which engine accelerate really started
    monkeypatch.setattr(train_checks, "_cuda_problems", lambda resolved, where: [])
    recipe = write_train_recipe(tmp_path, MODEL, setup["metadata"], name="fsdp", distribution="fsdp",
                                processes=2, batch_size=1, steps=1)
    with pytest.raises(TrainingWorkerError) as caught:
        run(recipe, tmp_path / "runs")
    message = str(caught.value)
    assert "rank 0: EngineMismatch" in message and "rank 1: EngineMismatch" in message
    assert "runs this process as MULTI_CPU" in message and 'use "ddp"' in message


# ---------------------------------------------------------------------------- configuration


def test_ddp_config_launches_one_process_per_worker_without_mixed_precision():
    config = accelerate_config("ddp", 4, "bfloat16")
    assert config["distributed_type"] == "MULTI_GPU" and config["num_processes"] == 4
    assert config["mixed_precision"] == "no"  # the loop sets every dtype itself
    assert "fsdp_config" not in config and "deepspeed_config" not in config


def test_fsdp_config_shards_by_transformer_block_and_gathers_whole_state_dicts():
    fsdp = accelerate_config("fsdp", 2, "bfloat16", shard_unit="S2VBlock")["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "S2VBlock"  # the trained DiT's block class
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT" and fsdp["fsdp_version"] == 2
    with pytest.raises(AssertionError, match="name their class"):
        accelerate_config("fsdp", 2, "bfloat16")


@pytest.mark.parametrize("distribution, stage", [("deepspeed-zero2", 2), ("deepspeed-zero3", 3)])
def test_deepspeed_json_has_the_stage_offload_precision_and_batch(distribution, stage):
    ds = deepspeed_config(distribution, batch_size=2, gradient_accumulation=4, max_grad_norm=1.0,
                          dtype_name="bfloat16")
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage and zero["offload_optimizer"]["device"] == "cpu"
    assert (zero.get("offload_param", {}).get("device") == "cpu") == (stage == 3)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("distribution", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_written_configs_are_what_accelerate_reads(tmp_path, distribution):
    from accelerate.commands.config.config_args import load_config_from_file

    params = {"train.distribution": distribution, "train.processes": 3, "train.batch_size": 1,
              "train.gradient_accumulation": 2, "train.max_grad_norm": 0.0}
    path = write_configs(tmp_path, params, "bfloat16", shard_unit="Block")
    read = load_config_from_file(str(path))  # accelerate's own reader, as `accelerate launch` uses it
    assert read.num_processes == 3
    if distribution == "fsdp":
        assert read.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"
    assert read.distributed_type.value == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(distribution, "DEEPSPEED")
    written = yaml.safe_load(path.read_text())
    if distribution.startswith("deepspeed"):
        ds = written["deepspeed_config"]
        assert ds["zero3_init_flag"] == (distribution == "deepspeed-zero3")  # parameters built on the CPU
        stage = json.loads(Path(ds["deepspeed_config_file"]).read_text())["zero_optimization"]["stage"]
        assert stage == (3 if distribution == "deepspeed-zero3" else 2)
        assert read.mixed_precision == "bf16"
    else:
        assert not (tmp_path / "deepspeed.json").exists() and read.mixed_precision == "no"
