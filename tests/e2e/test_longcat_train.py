"""Training LongCat-Video through ``[train]``, end to end on tiny weights in the release's layout.

``wanflow run`` of a ``[train]`` recipe over a ``metadata.csv`` in DiffSynth's columns (video,
prompt and, for a continuation sample, longcat_video) trains a LoRA on LongCat's own modules
(DiffSynth's targets) or the whole DiT. The first loss equals LongCat's forward called by hand on
the same sample, noise and timestep: every frame noised (text-to-video), or the continuation's
latents, as a generation encodes them, written clean over the first frames and read as
conditioning frames (t = 0), the output's sign flipped into ε − x0, every frame in the loss (as
DiffSynth's FlowMatchSFTLoss computes it). The exported LoRA and full weights load back into a
``longcat-video`` generation and change its video; a changed longcat_video re-runs only that
sample's encode; bad settings are refused at validation naming the key.
"""

from __future__ import annotations

import numpy as np
import pytest
import tomlkit
import torch
from safetensors import safe_open

from tests.e2e._layout_longcat import REPO
from tests.e2e._run import computed, run
from tests.e2e._train import clip, first_loss, stored_tensors, write_metadata
from tests.e2e.conftest import use_models
from tests.e2e.test_train_derivatives import SEED, train_recipe
from wanflow.output import save_mp4

FAMILY = "longcat-video"
COND = 5  # conditioning frames of the tests' continuations: 2 latent frames
PROMPT = "a red square moving right"


@pytest.fixture()
def venv_runs(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


@pytest.fixture()
def media(tmp_path):
    """A 9-frame clip, two 9-frame videos to continue, at 8 fps."""
    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    out = {}
    for name, frames in (("clip", clip("red", 1)),
                         ("past", np.random.default_rng(11).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)),
                         ("other", np.random.default_rng(12).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8))):
        out[name] = folder / "clips" / f"{name}.mp4"
        save_mp4(frames, out[name], 8, {}, quality=0)
    return out



def _row(past: str | None = None, clip_file: str = "clips/clip.mp4", prompt: str = PROMPT) -> dict:
    row = {"video": clip_file, "prompt": prompt}
    return row if past is None else row | {"longcat_video": past}


def _recipe(tmp_path, rows, frames: int = 5, cond: int | None = None, **train):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", rows), frames=frames, **train)
    doc = tomlkit.parse(recipe.read_text())
    doc["video"]["fps"] = 8
    if cond is not None:
        doc["inputs"] = {"longcat_cond_frames": cond}
    recipe.write_text(tomlkit.dumps(doc))
    return recipe


def _generation(folder, past=None, cond: int = COND, frames: int = 5, **tables) -> object:
    """A generation of the trained sample's size and prompt (a continuation of ``past``)."""
    doc = {"schema": 1, "name": "gen", "model": FAMILY, "prompt": {"text": PROMPT},
           "video": {"width": 32, "height": 32, "frames": frames, "fps": 8}, "runtime": {"dtype": "fp32"},
           "sampler": {"steps": 2, "seed": 0, "cfg": 1.0, "cfg_zero_star": False, "solver": "euler", "shift": 1.0},
           **tables}
    if past is not None:
        doc["inputs"] = {"longcat_video": str(past), "longcat_cond_frames": cond}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gen.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return folder / "gen.toml"


def loss_by_hand(root, train, cond=None, include_cond_frames: bool = True) -> float:
    """The first step's loss: x0 and the text of ``train``, its first draw, the release's DiT
    called by hand, its output negated (x0 − noise -> ε − x0); ``cond`` (1, z, k, h, w) written
    clean over the first frames, read as conditioning frames."""
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.train.objective import (
        TrainingSchedule,
        draw,
        noised,
        velocity_target,
        weighted_mse,
    )

    x0 = stored_tensors(train, "train/x0:0")["x0"]
    context = stored_tensors(train, "train/text:0")["context"]
    dit = load_longcat_dit(root / REPO / "dit", dtype=torch.float32, device="cpu")
    schedule = TrainingSchedule.build(5.0)
    d = draw(schedule, x0, schedule.index_range((0.0, 1.0)), SEED, (0, 0), (0,))
    x = noised(x0, d.noise, d.sigma)
    k = 0 if cond is None else cond.shape[2]
    if k:
        x[:, :, :k] = cond
    with torch.no_grad():
        pred = -dit(x, d.t, context, cond_frames=k).float()
    target = velocity_target(x0, d.noise)
    if not include_cond_frames:
        pred, target = pred[:, :, k:], target[:, :, k:]
    return float(weighted_mse(pred, target, d.weight))


def test_the_first_loss_is_longcat_s_forward_on_the_sample(venv_runs, longcat_root, tmp_path, media):
    train = run(_recipe(tmp_path, [_row()]), venv_runs)
    assert first_loss(train) == pytest.approx(loss_by_hand(longcat_root, train), rel=1e-5, abs=1e-7)


def test_a_continuation_sample_holds_its_frames_clean_at_t_0_and_learns_every_frame(venv_runs, longcat_root,
                                                                                    tmp_path, media):
    train = run(_recipe(tmp_path, [_row("clips/past.mp4")], frames=9, cond=COND), venv_runs)
    assert {"train/longcat:0", "train/x0:0", "train/text:0"} <= set(train.results)
    # the conditioning latents are a generation's: the same encode of the same video
    generation = run(_generation(tmp_path / "gen", media["past"], frames=9), venv_runs)
    cond = stored_tensors(generation, "encode-conditioning:longcat-frames")["latents"]
    assert cond.shape[2] == 2
    assert torch.equal(stored_tensors(train, "train/longcat:0")["latents"], cond)
    expected = loss_by_hand(longcat_root, train, cond)
    assert first_loss(train) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # as DiffSynth's loss, the conditioning frames are in it: leaving them out is another number
    assert loss_by_hand(longcat_root, train, cond, include_cond_frames=False) != pytest.approx(expected, rel=1e-4)


def test_the_lora_trains_diffsynth_s_targets_and_loads_back_into_a_generation(venv_runs, tmp_path, media):
    outcome = run(_recipe(tmp_path, [_row()], steps=2, learning_rate=0.05), venv_runs)
    lora = outcome.archive / "outputs" / "lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = set(f.keys())
        ups = [f.get_tensor(k) for k in keys if ".lora_B." in k]
    modules = {k.split(".lora_")[0] for k in keys}
    targets = ("adaLN_modulation.1", "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
               "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")
    assert {f"blocks.{i}.{t}" for i in (0, 1) for t in targets} <= modules
    assert modules - {f"blocks.{i}.{t}" for i in (0, 1) for t in targets} == {"final_layer.adaLN_modulation.1"}
    assert any(float(u.abs().max()) > 0 for u in ups)
    plain = run(_generation(tmp_path / "plain", media["past"], frames=9), venv_runs)
    adapted = run(_generation(tmp_path / "adapted", media["past"], frames=9, lora=[{"path": str(lora)}]), venv_runs)
    assert "denoise" in computed(adapted)
    assert not {n for n in computed(adapted) if n.startswith(("encode-text", "encode-conditioning"))}
    assert not torch.allclose(stored_tensors(adapted, "denoise")["latents"], stored_tensors(plain, "denoise")["latents"])
    at_zero = run(_generation(tmp_path / "zero", media["past"], frames=9, lora=[{"path": str(lora), "scale": 0.0}]),
                  venv_runs)
    assert torch.equal(stored_tensors(at_zero, "denoise")["latents"], stored_tensors(plain, "denoise")["latents"])


def test_full_fine_tuning_exports_a_dit_a_generation_loads(venv_runs, longcat_root, tmp_path, media):
    train = run(_recipe(tmp_path, [_row()], method="full", steps=2, learning_rate=1e-3), venv_runs)
    assert first_loss(train) == pytest.approx(loss_by_hand(longcat_root, train), rel=1e-5, abs=1e-7)
    exported = train.archive / "outputs" / "dit.safetensors"
    with safe_open(str(exported), "pt") as f:
        keys = set(f.keys())
    assert {"x_embedder.proj.weight", "blocks.1.ffn.w2.weight", "final_layer.linear.weight"} <= keys
    plain = run(_generation(tmp_path / "plain"), venv_runs)
    tuned = run(_generation(tmp_path / "tuned", models={"dit": {"source": str(exported)}}), venv_runs)
    assert not torch.allclose(stored_tensors(tuned, "denoise")["latents"], stored_tensors(plain, "denoise")["latents"])


def test_a_changed_longcat_video_re_runs_only_its_sample_s_encode(venv_runs, tmp_path, media):
    rows = [_row("clips/past.mp4"), _row("clips/other.mp4", prompt="a square")]
    recipe = _recipe(tmp_path, rows, frames=9, cond=COND)
    first = run(recipe, venv_runs)
    assert {n for n in first.results if n.startswith("train/")} == {
        "train/text:0", "train/text:1", "train/x0:0", "train/x0:1", "train/longcat:0", "train/longcat:1"}
    media["other"].write_bytes(media["clip"].read_bytes())
    second = run(recipe, venv_runs)
    assert {n for n in computed(second) if n.startswith("train/")} == {"train/longcat:1"}
    assert "train" in computed(second)
    third = run(recipe, venv_runs, "inputs.longcat_cond_frames=1")  # fewer frames: both encodes, no text, no x0
    assert {n for n in computed(third) if n.startswith("train/")} == {"train/longcat:0", "train/longcat:1"}


def _refusal(tmp_path, recipe, capsys) -> str:
    from wanflow.cli import main

    assert main(["run", str(recipe), "--runs", str(tmp_path / "runs")]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("rows", "frames", "settings", "extra", "says"), [
    ([_row()], 5, {"task": "direct_distill"}, {}, ["[train].task", 'use task = "sft"']),
    ([_row()], 5, {"distribution": "fsdp", "processes": 2}, {}, ['[train].distribution = "fsdp"',
                                                                 "run only on CUDA GPUs", 'use "ddp" here']),
    ([_row()], 5, {"distribution": "deepspeed-zero2", "processes": 2},
     {"runtime": {"dtype": "bf16"}, "memory": {"fp8": True}},
     ['[train].distribution = "deepspeed-zero2" with [memory].fp8 = true', "set [memory].fp8 = false"]),
    ([_row()], 5, {}, {"runtime": {"compile": "blocks"}}, ["[runtime].compile", "not built yet"]),
    ([_row()], 5, {"method": "full"}, {"memory": {"policy": "stream"}},
     ['[memory].policy = "stream": full fine-tuning trains every weight']),
    ([_row()], 5, {"validation_prompts": ["a red square"]}, {}, ["[train].validation_prompts", "validation_samples"]),
    ([_row()], 5, {}, {"inputs": {"longcat_video": "data/clips/past.mp4"}},
     ["[inputs].longcat_video", "dataset's longcat_video column"]),
    ([_row()], 5, {}, {"inputs": {"longcat_cond_frames": 6}}, ["[inputs].longcat_cond_frames = 6", "4n+1"]),
    ([_row()], 5, {}, {"inputs": {"longcat_cond_frames": 9}}, ["no row has a longcat_video column",
                                                                "[inputs].longcat_cond_frames = 9 would not be read"]),
    ([_row("clips/past.mp4")], 5, {}, {"inputs": {"longcat_cond_frames": 5}},
     ["row 1: its clip is 5 frames", "5 conditioning frames of its longcat_video", "at least 9 frames"]),
])
def test_bad_settings_are_refused_at_validation_naming_the_key(venv_runs, tmp_path, media, capsys, rows, frames,
                                                              settings, extra, says):
    recipe = _recipe(tmp_path, rows, frames=frames, **settings)
    doc = tomlkit.parse(recipe.read_text())
    for table, values in extra.items():
        doc[table] = values
    recipe.write_text(tomlkit.dumps(doc))
    err = _refusal(tmp_path, recipe, capsys)
    for part in says:
        assert part in err, err
    assert "Traceback" not in err


def test_an_image_sample_holds_the_image_as_its_first_frame(venv_runs, longcat_root, tmp_path, media):
    """A row with an input_image trains image-to-video: the image's latent, as a generation encodes
    it, written clean over the first latent frame and read as one conditioning frame."""
    from PIL import Image

    pixels = np.random.default_rng(13).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "data" / "clips" / "start.png")
    train = run(_recipe(tmp_path, [_row() | {"input_image": "clips/start.png"}], frames=9), venv_runs)
    gen = _generation(tmp_path / "gen", frames=9)
    doc = tomlkit.parse(gen.read_text())
    doc["inputs"] = {"image": str(tmp_path / "data" / "clips" / "start.png")}
    gen.write_text(tomlkit.dumps(doc))
    cond = stored_tensors(run(gen, venv_runs), "encode-conditioning:longcat-image")["latents"]
    assert cond.shape[2] == 1
    assert torch.equal(stored_tensors(train, "train/longcat:0")["latents"], cond)
    assert first_loss(train) == pytest.approx(loss_by_hand(longcat_root, train, cond), rel=1e-5, abs=1e-7)


def test_a_lora_exported_in_longcat_s_format_holds_the_same_deltas(venv_runs, tmp_path, media):
    """export_dialect = "longcat" writes LongCat's own layout (its loader's names, an alpha_scale per
    module) of the very LoRA the DiffSynth export holds; the export step alone re-runs."""
    from wanflow.lora import read_lora

    first = run(_recipe(tmp_path, [_row()], steps=2, learning_rate=0.05), venv_runs)
    longcat = run(_recipe(tmp_path, [_row()], steps=2, learning_rate=0.05, export_dialect="longcat"), venv_runs)
    assert {n for n in computed(longcat) if not n.startswith("save")} == {"export:dit"}
    ours, theirs = (read_lora(o.archive / "outputs" / "lora.safetensors") for o in (first, longcat))
    assert theirs.dialect == "longcat" and sorted(theirs.deltas) == sorted(ours.deltas)
    for name, delta in ours.deltas.items():
        assert torch.equal(theirs.deltas[name].tensor(), delta.tensor()), name
    with safe_open(str(longcat.archive / "outputs" / "lora.safetensors"), "pt") as f:
        assert sum(k.endswith(".alpha_scale") for k in f.keys()) == len(ours.deltas)


def test_a_lora_trains_over_a_frozen_base_stored_in_fp8(venv_runs, longcat_root, tmp_path, media):
    """[memory].fp8 stores the frozen base's block projections in fp8 (as a generation's): the first
    loss moves by fp8's rounding only, and the memory plan sizes the base at its fp8 bytes."""
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    plain = _recipe(tmp_path, [_row()], steps=2, learning_rate=0.05, name="plain")
    fp8 = _recipe(tmp_path, [_row()], steps=2, learning_rate=0.05, name="fp8")
    doc = tomlkit.parse(fp8.read_text())
    doc["memory"] = {"fp8": True}
    fp8.write_text(tomlkit.dumps(doc))
    losses = {name: first_loss(run(recipe, venv_runs)) for name, recipe in (("plain", plain), ("fp8", fp8))}
    assert losses["fp8"] != losses["plain"]
    assert losses["fp8"] == pytest.approx(losses["plain"], rel=0.05)
    peaks = {}
    for name, recipe in (("plain", plain), ("fp8", fp8)):
        resolved = load_recipe(recipe)
        found = get_registry().pipeline(resolved.model).memory_plan(resolved)
        peaks[name] = next(p.host_bytes for p in found.peaks if p.step == "train")
    assert peaks["fp8"] < peaks["plain"]


def test_ddp_with_two_processes_trains_the_lora_one_process_trains(venv_runs, media, tmp_path):
    """[train].distribution = "ddp" over two CPU processes (gloo) with batches of one trains the
    LoRA one process trains with batches of two, to fp32 rounding (tests/train/test_distributed.py
    says why 1e-5), over two text-to-video samples."""
    from safetensors.torch import load_file

    rows = [_row(), _row(clip_file="clips/past.mp4", prompt="noise")]
    train = {"steps": 4, "learning_rate": 1e-4, "checkpoint_every": 2}
    single = run(_recipe(tmp_path, rows, batch_size=2, **train), venv_runs)
    ddp = run(_recipe(tmp_path, rows, name="ddp", batch_size=1, distribution="ddp", processes=2, **train), venv_runs)
    got, want = (load_file(str(o.archive / "outputs" / "lora.safetensors")) for o in (ddp, single))
    assert set(got) == set(want) and want
    assert max(float(v.abs().max()) for k, v in want.items() if "lora_B" in k or "lora_up" in k) > 2e-4  # it trained
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-5
