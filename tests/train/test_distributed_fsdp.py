"""The Wan DiT trained under FSDP: two CPU processes (gloo) against one, and a killed run resumed.

accelerate runs FSDP only on GPUs; the workers start through the shared harness
(``tests/e2e/_sharded.py``), which makes accelerate's CPU state FSDP, so the run takes the
sharded path a GPU run takes: ``accelerate.yaml`` names the Wan DiT's ``Block``, accelerate's
FSDP2 shards each block, the loop trains (blocks checkpointed), the trained tensors are gathered
whole and checkpoints are accelerate's ``save_state`` of every shard. Tolerance and dataset as
the DDP tests' (tests/train/test_distributed.py says why 1e-5): three clips in global batches of
two, so every epoch ends with a batch of one that leaves the second process an empty shard.
Also here: the memory plan of an FSDP run, A14B's two experts refused (FSDP2 prepares one model
per run) while one expert trained alone is sharded, and Wan2.2-S2V's DiT, whose blocks are
``S2VBlock``s.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e import _sharded
from tests.e2e import test_train_s2v as s2v
from tests.e2e._run import run
from tests.e2e._sharded import killed_and_resumed, run_fsdp_on_cpu
from tests.e2e._train import write_metadata, write_train_recipe
from tests.train import test_distributed as ddp
from tests.train.test_distributed import MODEL, TOLERANCE, TRAIN, _env, _losses, _matches

tiny, fsdp_on_cpu = ddp.tiny, _sharded.fsdp_on_cpu  # fixtures: the DDP tests' models and data, the harness
s2v_root, senv, media = s2v.s2v_root, s2v.senv, s2v.media  # Wan2.2-S2V's tiny release and media


def _trained(outcome, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(outcome.archive / "outputs" / name))


@pytest.fixture(scope="module")
def fsdp(tiny, tmp_path_factory):
    """An uninterrupted FSDP LoRA run, 2 processes of batch 1 (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    recipe = write_train_recipe(tmp, MODEL, tiny["metadata"], name="fsdp", distribution="fsdp", processes=2,
                                batch_size=1, **TRAIN)
    with pytest.MonkeyPatch.context() as mp:
        run_fsdp_on_cpu(mp)
        for k, v in _env(tiny["models"], tmp).items():
            mp.setenv(k, v)
        return {"recipe": recipe, "outcome": run(recipe, tmp / "runs")}


def test_fsdp_with_two_processes_of_batch_1_trains_the_lora_one_process_of_batch_2_trains(tiny, fsdp, tmp_path,
                                                                                          monkeypatch):
    for k, v in _env(tiny["models"], tmp_path).items():
        monkeypatch.setenv(k, v)
    single = run(write_train_recipe(tmp_path, MODEL, tiny["metadata"], name="single", batch_size=2, **TRAIN),
                 tmp_path / "runs")
    _matches(fsdp["outcome"], single)


def test_fsdp_fully_fine_tunes_the_dit_as_one_process_does(tiny, tmp_path, monkeypatch, fsdp_on_cpu):
    for k, v in _env(tiny["models"], tmp_path).items():
        monkeypatch.setenv(k, v)
    train = {**TRAIN, "steps": 4, "method": "full"}
    single = run(write_train_recipe(tmp_path, MODEL, tiny["metadata"], name="single", batch_size=2, **train),
                 tmp_path / "runs")
    fsdp = run(write_train_recipe(tmp_path, MODEL, tiny["metadata"], name="fsdp", distribution="fsdp", processes=2,
                                  batch_size=1, **train), tmp_path / "runs")
    got, want = _trained(fsdp, "dit.safetensors"), _trained(single, "dit.safetensors")
    base = {}
    for f in sorted((tiny["models"] / "Wan-AI" / "Wan2.1-T2V-1.3B").glob("diffusion_pytorch_model*.safetensors")):
        base |= load_file(str(f))
    assert set(got) == set(want) == set(base) and "blocks.1.ffn.2.weight" in want
    assert max(float((want[k].float() - base[k].float()).abs().max()) for k in want) > 5e-5  # it trained
    # every weight is trained, so AdamW lifts fp32 rounding to a fraction of a step on the few
    # elements whose gradient is about its eps: measured 2.5e-5 on 2 of 589,248 (and 4 beyond
    # 1e-6), as under DDP, whose weights these equal bit for bit; a wrong shard, split or weighting
    # moves most elements by about lr
    diff = torch.cat([(got[k].float() - want[k].float()).abs().flatten() for k in want])
    assert float(diff.max()) < train["learning_rate"], float(diff.max())
    assert int((diff > TOLERANCE).sum()) <= diff.numel() // 100_000, int((diff > TOLERANCE).sum())
    assert _losses(fsdp) == pytest.approx(_losses(single), rel=1e-5)


def test_a_killed_fsdp_run_resumes_and_ends_with_the_uninterrupted_bits(tiny, fsdp, tmp_path, monkeypatch):
    run_fsdp_on_cpu(monkeypatch)  # the workers' PYTHONPATH; the runs lift the refusal themselves
    env = {**os.environ, **_env(tiny["models"], tmp_path)}  # a cache of its own
    resumed, done, output = killed_and_resumed(fsdp["recipe"], tmp_path / "runs", env, tmp_path, lift=True)
    assert 2 <= done < TRAIN["steps"]  # from a sharded checkpoint
    assert f"trained_steps={TRAIN['steps'] - done}" in output
    want, got = _trained(fsdp["outcome"], "lora.safetensors"), _trained(resumed, "lora.safetensors")
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)


def test_the_memory_plan_sizes_each_fsdp_process_as_a_replica(tiny, tmp_path, monkeypatch):
    # docs/memory.md: a distributed run is planned per process, each as a whole replica (for FSDP's
    # shards an upper bound), and host memory counts every process: on the CPU, DDP's figure
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    for k, v in _env(tiny["models"], tmp_path).items():
        monkeypatch.setenv(k, v)
    recipe = write_train_recipe(tmp_path, MODEL, tiny["metadata"], **TRAIN)

    def host(*sets: str) -> int:
        resolved = load_recipe(recipe, sets=sets)
        peaks = get_registry().pipeline(resolved.model).memory_plan(resolved).peaks
        return next(p for p in peaks if p.step == "train").host_bytes

    for method in ("lora", "full"):
        one = host(f'train.method="{method}"')
        two = {d: host(f'train.method="{method}"', f'train.distribution="{d}"', "train.processes=2")
               for d in ("ddp", "fsdp")}
        assert two["fsdp"] == two["ddp"] == 2 * one
    assert host('train.method="full"') > host()


def test_a14b_s_two_experts_under_fsdp_are_refused_before_any_model_loads(tiny, tmp_path, monkeypatch, fsdp_on_cpu):
    # accelerate's FSDP2 prepares one model per run: launched, both workers failed in prepare
    # ("Only one model is supported when using FSDP2"); the harness lifts only the CUDA refusal
    from tests.e2e._layout import write_models_root
    from wanflow.errors import WanflowError
    from wanflow.steps.train_distributed import TrainingWorkerError

    models = write_models_root(tmp_path / "models", ("wan2.2-t2v-a14b",))
    for k, v in _env(models, tmp_path).items():
        monkeypatch.setenv(k, v)
    recipe = write_train_recipe(tmp_path, "wan2.2-t2v-a14b", tiny["metadata"], name="a14b", distribution="fsdp",
                                processes=2, batch_size=1, steps=1)
    with pytest.raises(WanflowError) as caught:
        run(recipe, tmp_path / "runs")
    assert not isinstance(caught.value, TrainingWorkerError)
    assert ("accelerate's FSDP2 shards one model per run and wan2.2-t2v-a14b trains two experts in one run; "
            'use "ddp"') in str(caught.value)


def test_s2v_trains_its_lora_under_fsdp_as_one_process_does(senv, tmp_path, media, fsdp_on_cpu):
    # Wan2.2-S2V's DiT: FSDP2 shards its S2VBlocks (found by that name), the audio injectors run
    # beside them; two speaking clips, fp32
    rows = [{"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"])},
            {"video": "clips/clip2.mp4", "prompt": "another face", "input_audio": str(media["speech2"])}]
    metadata = write_metadata(tmp_path / "data", rows)
    train = {"steps": 4, "checkpoint_every": 2, "learning_rate": 1e-4}
    single = run(s2v.train_recipe(tmp_path, metadata, name="single", batch_size=2, **train), senv)
    fsdp = run(s2v.train_recipe(tmp_path, metadata, name="fsdp", batch_size=1, distribution="fsdp", processes=2,
                                **train), senv)
    _matches(fsdp, single)


def test_one_a14b_expert_trains_under_fsdp_as_one_process_trains_it(tiny, tmp_path, monkeypatch, fsdp_on_cpu):
    # one expert alone is one model: FSDP2 shards it, and its LoRA is the one-process run's
    from tests.e2e._layout import write_models_root

    models = write_models_root(tmp_path / "models", ("wan2.2-t2v-a14b",))
    for k, v in _env(models, tmp_path).items():
        monkeypatch.setenv(k, v)
    train = {**TRAIN, "steps": 2, "components": ["dit_high_noise"]}
    single = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", tiny["metadata"], name="single", batch_size=2,
                                    **train), tmp_path / "runs")
    fsdp = run(write_train_recipe(tmp_path, "wan2.2-t2v-a14b", tiny["metadata"], name="fsdp", distribution="fsdp",
                                  processes=2, batch_size=1, **train), tmp_path / "runs")
    assert not (fsdp.archive / "outputs" / "lora_low_noise.safetensors").exists()
    got, want = _trained(fsdp, "lora_high_noise.safetensors"), _trained(single, "lora_high_noise.safetensors")
    assert set(got) == set(want) and any(bool(t.abs().sum() > 0) for k, t in want.items() if ".lora_B." in k)
    assert all(float((got[k] - want[k]).abs().max()) < TOLERANCE for k in want)
