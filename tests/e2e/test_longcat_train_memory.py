"""LongCat-Video's train step in its training job's memory plan, end to end on tiny weights in the
release's layout: `wanflow plan` prints the train step, sized by its [train] settings and the
dataset's largest bucket (a continuation's conditioning frames are tokens of its clip); a train
step that cannot fit is refused before any model loads, naming the [train] changes that fit; and
the [memory] budgets and policies the plan honours now run."""

from __future__ import annotations

import numpy as np
import pytest
import tomlkit

from tests.e2e._run import run
from tests.e2e._train import clip, write_metadata
from tests.e2e.conftest import use_models
from tests.e2e.test_longcat_train import _row
from tests.e2e.test_train_derivatives import train_recipe
from wanflow.cli import main
from wanflow.memory.planner import MemoryPlanError
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe

FAMILY = "longcat-video"
#: A small [video] so that the train step, not generation, is what a budget must hold.
SMALL_VIDEO = ("video.frames=1", "video.width=16", "video.height=16")


@pytest.fixture()
def venv_runs(longcat_root, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool

    model_pool.clear()
    return use_models(longcat_root, tmp_path, monkeypatch)


@pytest.fixture()
def media(tmp_path):
    """A 9-frame clip and a 9-frame video to continue, at 8 fps, in the dataset's folder."""
    from wanflow.output import save_mp4

    folder = tmp_path / "data" / "clips"
    folder.mkdir(parents=True)
    past = np.random.default_rng(11).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    for name, frames in (("clip", clip("red", 1)), ("past", past)):
        save_mp4(frames, folder / f"{name}.mp4", 8, {}, quality=0)
    return {name: folder / f"{name}.mp4" for name in ("clip", "past")}


def _recipe(tmp_path, rows, frames: int = 5, memory: dict | None = None, **train):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", rows), frames=frames, **train)
    doc = tomlkit.parse(recipe.read_text())
    doc["video"]["fps"] = 8
    if any("longcat_video" in row for row in rows):
        doc["inputs"] = {"longcat_cond_frames": 5}
    if memory:
        doc["memory"] = memory
    recipe.write_text(tomlkit.dumps(doc))
    return recipe


def _plan(recipe, *sets: str):
    resolved = load_recipe(recipe, sets=sets)
    return get_registry().pipeline(resolved.model).memory_plan(resolved)


def _train_host_bytes(recipe, *sets: str) -> int:
    return next(p for p in _plan(recipe, *sets).peaks if p.step == "train").host_bytes


def test_wanflow_plan_prints_the_train_step_sized_by_its_settings(venv_runs, tmp_path, media, capsys):
    recipe = _recipe(tmp_path, [_row()])
    steps = [p.step for p in _plan(recipe).peaks]
    assert steps[-1] == "train" and steps.count("train") == 1
    base = _train_host_bytes(recipe)
    assert _train_host_bytes(recipe, "train.gradient_checkpointing=false") > base
    assert _train_host_bytes(recipe, "train.method=full") > base
    assert _train_host_bytes(recipe, "train.lora_rank=16") > base
    assert _train_host_bytes(recipe, "train.frames=9") > base  # the largest bucket's tokens
    ddp = ('train.distribution="ddp"', "train.processes=3")  # on the CPU each process holds a replica
    assert _train_host_bytes(recipe, *ddp) == 3 * base
    assert main(["plan", str(recipe)]) == 0
    assert "step train: peak host" in capsys.readouterr().out


def test_a_sharded_run_is_planned_per_process_with_deepspeed_s_host_state(venv_runs, tmp_path, media):
    """FSDP: each process planned as a replica (an upper bound for a shard); DeepSpeed adds the
    optimizer state it keeps on the host for every trained parameter, once (partitioned), and
    ZeRO-3 the parameters it keeps there after each process built the whole model."""
    recipe = _recipe(tmp_path, [_row()])

    def host(distribution: str, rank: int = 4) -> int:
        return _train_host_bytes(recipe, f'train.distribution="{distribution}"', "train.processes=2",
                                 f"train.lora_rank={rank}", f"train.lora_alpha={rank}")

    assert host("fsdp") == host("ddp")
    offloaded = {rank: host("deepspeed-zero2", rank) - host("ddp", rank) for rank in (4, 8)}
    assert offloaded[4] > 0 and offloaded[8] == 2 * offloaded[4]  # per trained (LoRA) parameter
    assert host("deepspeed-zero3") > host("deepspeed-zero2")


def test_a_continuations_conditioning_frames_are_tokens_of_its_clip(venv_runs, tmp_path, media):
    """A 9-frame clip continued from 5 frames is sized as 9 frames, as the training call runs it."""
    recipes = {}
    for name, past, frames in (("continued", str(media["past"]), 9), ("plain", None, 9), ("short", None, 5)):
        (tmp_path / name / "data").mkdir(parents=True)
        recipes[name] = _recipe(tmp_path / name, [_row(past, str(media["clip"]))], frames=frames,
                                gradient_checkpointing=False)
    continued, plain, short = recipes.values()
    assert _train_host_bytes(continued) == _train_host_bytes(plain) > _train_host_bytes(short)


def test_a_train_step_that_cannot_fit_is_refused_with_training_fixes(venv_runs, tmp_path, media, monkeypatch):
    from wanflow.memory import pool as model_pool

    rows = [_row()] * 16  # one micro-batch of 16 clips: the train step outgrows generation's steps
    recipe = _recipe(tmp_path, rows, frames=9, gradient_checkpointing=False, batch_size=len(rows))
    held = _train_host_bytes(recipe, *SMALL_VIDEO)
    checkpointed = _train_host_bytes(recipe, *SMALL_VIDEO, "train.gradient_checkpointing=true")
    budget = (held + checkpointed) / 2 / 2**30

    def never(*_args, **_kwargs):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(model_pool, "_get", never)
    resolved = load_recipe(recipe, sets=(*SMALL_VIDEO, f"memory.limit_gb={budget}"))
    with pytest.raises(MemoryPlanError) as refused:
        get_registry().pipeline(resolved.model).steps(resolved)  # planning: no model has loaded
    text = str(refused.value)
    assert text.startswith(f"{recipe}: [train]: the train step needs ")
    assert "of host memory" in text and "weights of 1 DiT" in text and "largest bucket 32x32x9" in text
    assert refused.value.fixes[0] == "[train].gradient_checkpointing = true"
    assert not any("fp8" in fix for fix in refused.value.fixes)  # the tiny DiT's weights: fp8 alone cannot fit
    assert refused.value.fixes[-1].startswith("a host budget ([memory].host_limit_gb) of ")
    assert main(["plan", str(recipe), *(a for s in (*SMALL_VIDEO, f"memory.limit_gb={budget}")
                                        for a in ("--set", s))]) == 2


def test_a_budget_and_policy_are_honoured_by_a_training_run(venv_runs, tmp_path, media):
    """A training recipe's [memory] budget and policy, refused while the train step was not sized,
    plan the run: the encoders keep to the policy, the train step carries its predicted peak."""
    recipe = _recipe(tmp_path, [_row()], memory={"policy": "offload", "limit_gb": 4.0})
    outcome = run(recipe, venv_runs)
    planned = next(p for p in _plan(recipe).peaks if p.step == "train")
    train = outcome.plan.get("train").spec.step
    assert train.peak == planned and planned.host_bytes <= 4 * 2**30
    assert outcome.plan.get("train/x0:0").spec.step.residency.policy == "offload"
    assert not outcome.results["train"].hit


def test_when_no_single_change_fits_the_refusal_names_what_longcat_can_change(longcat_root):
    """A LoRA's frozen base may be stored in fp8, so the advice names it among the levers."""
    from tests.e2e._layout_longcat import REPO
    from wanflow.memory.planner import Budgets
    from wanflow.memory.sizes import read_headers
    from wanflow.models.longcat_config import from_shapes
    from wanflow.steps.longcat_train_memory import LongCatTrainJob
    from wanflow.steps.memory_plan import sized_train_step

    files = sorted((longcat_root / REPO / "dit").glob("*.safetensors"))
    tensors = read_headers(files)
    config = from_shapes({k: t.shape for k, t in tensors.items()}, "the tiny DiT")
    train = LongCatTrainJob(config=config, tensors=tensors, dit_files={"dit": files}, grid=(3, 4, 4),
                            bucket="32x32x9", itemsize=4, device_run=False, accumulation=1,
                            targets=("attn.qkv", "ffn.w2"), rank=4, method="lora", batch=2, checkpointing=False,
                            offload=False)
    with pytest.raises(MemoryPlanError) as refused:
        sized_train_step("train.toml", train, Budgets(None, 1000))
    text = str(refused.value)
    assert text.startswith("train.toml: [train]: the train step needs ")
    assert "no [train] change alone fits: combine gradient_checkpointing, offload_activations, batch_size 1, " \
           "fp8 storage or LoRA, train on smaller clips" in text
    assert refused.value.fixes[0].startswith("a host budget ([memory].host_limit_gb) of ")
