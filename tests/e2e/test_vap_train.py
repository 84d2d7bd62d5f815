"""Training Video-As-Prompt from dataset columns (vap_video, vap_prompt), end to end.

On tiny weights in the release's layout, ``wanflow run`` of a ``[train]`` recipe over a one-row
``metadata.csv`` in DiffSynth's columns trains a LoRA on the main stream. Its first loss (the
LoRA starts at zero) equals a DiT call assembled by hand from a *generation's* conditioning
nodes for the same sample: the reference stream reads the reference video's first frames and
its caption, the main stream the clip's first frame, exactly as inference hands them over. The
export holds main-stream modules only and loads back into a generation; a changed reference
video or caption re-runs only that sample's own encode.

``method = "full"`` trains the reference stream alone (the main stream frozen, as the authors'
MoT training and DiffSynth's ``--trainable_models vap`` do): its first loss is the release's
DiT's, and its export is the whole DiT under the release's names (the main stream the base's
bit for bit, the reference stream trained), which a generation loads as ``[models.dit].source``
and which changes its video. A LoRA naming the reference stream is refused at validation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tomlkit
import torch
from safetensors import safe_open

from tests.e2e._layout_vap import write_vap_models_root
from tests.e2e._run import computed, run
from tests.e2e._train import clip, first_loss, stored_tensors, write_metadata
from tests.e2e.conftest import use_models
from tests.e2e.test_train_derivatives import loss_by_hand as derivative_loss_by_hand
from tests.e2e.test_train_derivatives import train_recipe
from wanflow.output import load_video, save_mp4

FAMILY = "video-as-prompt-wan2.1-14b"
CAPTION = "a ball rolls from left to right"


@pytest.fixture(scope="session")
def vap_root(tmp_path_factory):
    return write_vap_models_root(tmp_path_factory.mktemp("vap-train-models"))


@pytest.fixture()
def venv_runs(vap_root, tmp_path, monkeypatch):
    return use_models(vap_root, tmp_path, monkeypatch)


@pytest.fixture()
def media(tmp_path):
    """The clip (9 frames), a 9-frame reference video, its first 5 frames as a video of their own,
    another reference, and the clip's first frame as a PNG (what a generation is given)."""
    from PIL import Image

    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    reference = np.random.default_rng(11).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    other = np.random.default_rng(12).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    out = {}
    for name, frames in (("clip", clip("red", 1)), ("reference", reference), ("head", reference[:5]),
                         ("other", other), ("short", reference[:3])):
        out[name] = folder / "clips" / f"{name}.mp4"
        save_mp4(frames, out[name], 8, {}, quality=0)
    out["first_png"] = folder / "first.png"
    Image.fromarray(load_video(out["clip"], 1, 32, 32)[0]).save(out["first_png"])
    return out



def _latents(outcome) -> torch.Tensor:
    """A generation's denoised latents (its mp4 bytes differ between runs anyway: metadata)."""
    return stored_tensors(outcome, "denoise")["latents"]


def _row(video="clips/reference.mp4", caption=CAPTION, clip_file="clips/clip.mp4") -> dict:
    return {"video": clip_file, "prompt": "a red square moving right", "vap_video": video, "vap_prompt": caption}


def _generation(folder, media, reference: str) -> object:
    doc = {"schema": 1, "name": "gen", "model": FAMILY, "prompt": {"text": "a red square moving right"},
           "video": {"width": 32, "height": 32, "frames": 5}, "runtime": {"dtype": "fp32"},
           "sampler": {"steps": 1, "seed": 0, "cfg": 1.0},
           "inputs": {"image": str(media["first_png"]), "vap_video": str(media[reference]), "vap_prompt": CAPTION}}
    (folder / "gen.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return folder / "gen.toml"


def test_the_first_loss_is_the_dit_call_of_the_inference_conditioning(venv_runs, tmp_path, media):
    # the dataset reads the reference's first 5 frames (DiffSynth's dataset), which the generation
    # is given as a 5-frame video: picked evenly across 5 frames, they are those frames
    assert np.array_equal(load_video(media["reference"], 5, 32, 32), load_video(media["head"], 5, 32, 32))
    train = run(train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", [_row()])), venv_runs)
    assert not {n for n in train.results if "negative" in n}  # no unconditional pass in training
    generation = run(_generation(tmp_path, media, "head"), venv_runs)
    expected = loss_by_hand(train, generation)
    assert first_loss(train) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # frames picked evenly across the 9-frame reference are other frames: another loss
    evenly = run(_generation(tmp_path, media, "reference"), venv_runs)
    assert loss_by_hand(train, evenly) != pytest.approx(expected, rel=1e-4)


def loss_by_hand(train, generation) -> float:
    """The first step's loss as the derivative families' test builds it by hand, with the
    release's DiT (main and reference streams) and the reference stream's inputs handed over."""
    from wanflow.models.vap_loader import load_vap_dit

    def has_reference(extras) -> None:
        assert extras.vap_latents is not None and extras.vap_context is not None and extras.vap_clip is not None

    return derivative_loss_by_hand(train, generation, load=load_vap_dit, check_extras=has_reference)


def test_the_lora_trains_the_main_stream_and_loads_back(venv_runs, tmp_path, media):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", [_row()]), steps=2, learning_rate=0.05)
    outcome = run(recipe, venv_runs)
    lora = outcome.archive / "outputs" / "lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
        ups = [f.get_tensor(k) for k in keys if ".lora_B." in k]
    assert "blocks.0.self_attn.q.lora_A.default.weight" in keys and "blocks.1.ffn.2.lora_B.default.weight" in keys
    assert not [k for k in keys if k.startswith("mot.")]  # the reference stream stays frozen
    assert any(float(u.abs().max()) > 0 for u in ups)
    (tmp_path / "with-lora").mkdir()
    plain = run(_generation(tmp_path, media, "head"), venv_runs)
    path = _generation(tmp_path / "with-lora", media, "head")
    doc = tomlkit.parse(path.read_text())
    doc["lora"] = [{"path": str(lora)}]
    path.write_text(tomlkit.dumps(doc))
    adapted = run(path, venv_runs)
    assert not torch.allclose(_latents(plain), _latents(adapted))  # the LoRA reached the DiT


def test_a_changed_reference_video_or_caption_re_runs_only_its_own_encode(venv_runs, tmp_path, media):
    rows = [_row(), _row(video="clips/other.mp4", caption="a ball bounces")]
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", rows))
    first = run(recipe, venv_runs)
    encodes = {n for n in first.results if n.startswith("train/")}
    assert {"train/vap:0", "train/vap:1", "train/vap_prompt:0", "train/vap_prompt:1"} <= encodes
    media["other"].write_bytes(media["head"].read_bytes())
    second = run(recipe, venv_runs)
    assert {n for n in computed(second) if n.startswith("train/")} == {"train/vap:1"}
    assert "train" in computed(second)
    rows[0]["vap_prompt"] = "a ball rolls from right to left"
    third = run(train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", rows)), venv_runs)
    assert {n for n in computed(third) if n.startswith("train/")} == {"train/vap_prompt:0"}


def _refusal(tmp_path, recipe, capsys) -> str:
    from wanflow.cli import main

    assert main(["run", str(recipe), "--runs", str(tmp_path / "runs")]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("rows", "settings", "says"), [
    ([{"video": "clips/clip.mp4", "prompt": "p", "vap_prompt": CAPTION}], {},
     ["requires the 'vap_video' input; set the vap_video column"]),
    ([{"video": "clips/clip.mp4", "prompt": "p", "vap_video": "clips/reference.mp4"}], {},
     ["requires the 'vap_prompt' input; set the vap_prompt column"]),
    ([_row(video="clips/short.mp4")], {}, ["vap_video = 'clips/short.mp4'", "has 3 frames, fewer than the 5"]),
    ([_row(video="clips/missing.mp4")], {}, ["vap_video = 'clips/missing.mp4'", "does not exist"]),
    ([_row()], {"validation_prompts": ["a red square"]}, ["[train].validation_prompts", "validation_samples"]),
])
def test_bad_input_is_refused_at_validation_naming_the_key_and_column(venv_runs, tmp_path, media, capsys, rows,
                                                                      settings, says):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", rows), **settings)
    err = _refusal(tmp_path, recipe, capsys)
    for part in says:
        assert part in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("key", "value", "says"), [
    ("vap_video", "{reference}", "dataset's vap_video column"),
    ("vap_prompt", CAPTION, "dataset's vap_prompt column"),
    ("negative_vap_prompt", "a still picture", "runs none"),
])
def test_generation_inputs_a_training_would_not_read_are_refused(venv_runs, tmp_path, media, capsys, key, value,
                                                                 says):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", [_row()]))
    doc = tomlkit.parse(recipe.read_text())
    doc["inputs"] = {key: str(media["reference"]) if value.startswith("{") else value}
    recipe.write_text(tomlkit.dumps(doc))
    err = _refusal(tmp_path, recipe, capsys)
    assert f"[inputs].{key}" in err and "not read by training" in err and says in err, err


def test_a_batch_joins_the_samples_reference_streams(venv_runs, tmp_path, media):
    from wanflow.models.vap_extras import VapExtras
    from wanflow.train.batch import stacked_extras

    def one(seed: int, length: int) -> VapExtras:
        g = torch.Generator().manual_seed(seed)
        return VapExtras(vap_latents=torch.randn(1, 36, 2, 4, 4, generator=g),
                         vap_context=torch.randn(1, length, 8, generator=g), vap_clip=torch.randn(1, 3, 5, generator=g))

    a, b = one(0, 3), one(1, 5)
    joined = stacked_extras([a, b], "cpu")
    assert torch.equal(joined.vap_latents, torch.cat([a.vap_latents, b.vap_latents]))
    assert torch.equal(joined.vap_clip[1], b.vap_clip[0])
    assert torch.equal(joined.vap_context[0, :3], a.vap_context[0]) and not joined.vap_context[0, 3:].any()
    assert torch.equal(joined.vap_context[1], b.vap_context[0])


# ----------------------------------------------------------------------------- full fine-tuning


def _release(vap_root) -> dict[str, torch.Tensor]:
    from wanflow.models.checkpoint_files import merged_shards

    folder = vap_root / "ByteDance/Video-As-Prompt-Wan2.1-14B/transformer"
    return {k: v.clone() for k, v in merged_shards(sorted(folder.glob("*.safetensors"))).items()}


def test_full_fine_tuning_trains_the_reference_stream_and_the_export_loads_back(venv_runs, vap_root, tmp_path,
                                                                                media):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", [_row()]), method="full", steps=2,
                          learning_rate=0.01)
    train = run(recipe, venv_runs)
    generation = run(_generation(tmp_path, media, "head"), venv_runs)
    # the weights start as the release's: the first loss is its DiT's on the generation's conditioning
    assert first_loss(train) == pytest.approx(loss_by_hand(train, generation), rel=1e-5, abs=1e-7)

    exported = train.archive / "outputs" / "dit.safetensors"
    base = _release(vap_root)
    with safe_open(str(exported), "pt") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        header = f.metadata()
    assert set(out) == set(base)  # the release's names, every tensor of both streams
    main = [k for k in base if "_mot_ref" not in k]
    reference = [k for k in base if "_mot_ref" in k]
    assert all(torch.equal(out[k], base[k]) for k in main)  # the main stream stays frozen
    assert sum(not torch.equal(out[k], base[k]) for k in reference) > len(reference) // 2
    assert json.loads(header["config"])["attention_head_dim"] == 64 and header["wanflow.method"] == "full"

    (tmp_path / "tuned").mkdir()
    path = _generation(tmp_path / "tuned", media, "head")
    doc = tomlkit.parse(path.read_text())
    doc["models"] = {"dit": {"source": str(exported)}}
    path.write_text(tomlkit.dumps(doc))
    tuned = run(path, venv_runs)
    assert not torch.allclose(_latents(generation), _latents(tuned))  # the trained stream reached the DiT


def test_a_file_of_the_release_s_layout_without_its_config_beside_takes_the_config_in_its_header(vap_root,
                                                                                                  tmp_path):
    from safetensors.torch import save_file

    from wanflow.models.vap_loader import load_vap_dit

    state = _release(vap_root)
    config = json.loads((vap_root / "ByteDance/Video-As-Prompt-Wan2.1-14B/transformer/config.json").read_text())
    save_file(state, str(tmp_path / "with.safetensors"), metadata={"config": json.dumps(config)})
    model = load_vap_dit([tmp_path / "with.safetensors"])
    assert model.cfg.num_heads == 2 and tuple(model.vap_config.mot_layers) == (0, 2)
    save_file(state, str(tmp_path / "without.safetensors"))
    # the shapes alone cannot tell the heads: dim 128 reads as one head of the release's width 128
    assert load_vap_dit([tmp_path / "without.safetensors"]).cfg.num_heads == 1


@pytest.mark.parametrize("targets", [["mot.blocks.0.self_attn.q"], ["q", "attn1_mot_ref.to_q"]])
def test_a_lora_on_the_reference_stream_is_refused_at_validation(venv_runs, tmp_path, media, capsys, targets):
    recipe = train_recipe(tmp_path, FAMILY, write_metadata(tmp_path / "data", [_row()]), lora_targets=targets)
    err = _refusal(tmp_path, recipe, capsys)
    assert "[train].lora_targets" in err and "reference stream" in err and 'method = "full"' in err, err
    assert "Traceback" not in err


def test_full_fine_tuning_unfreezes_the_reference_stream_alone():
    from tests.e2e._layout_vap import tiny_vap_config
    from wanflow.models.vap import VapDiT
    from wanflow.train.adapters import full_state, unfreeze

    model = VapDiT(tiny_vap_config()).requires_grad_(False)
    unfreeze(model)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {n for n, _ in model.named_parameters() if n.startswith("mot.")}
    assert "mot.blocks.2.self_attn.q.weight" in trains and set(full_state(model)) == trains
