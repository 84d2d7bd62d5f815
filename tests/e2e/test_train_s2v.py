"""Training Wan2.2-S2V-14B from dataset columns, end to end on tiny weights in the release's layout.

A one-row dataset in DiffSynth's columns (video, prompt, input_audio, s2v_pose_video; the
reference input_image is the clip's first frame unless a row names one) trains through
``wanflow run``. The first step's loss (the LoRA starts at zero, so the DiT is the base) must
equal DiffSynth's objective assembled by hand from a *generation's* encodes of the same inputs:
the reference's latent in latent frame 0 of the noisy latents, held clean, the DiT given the
frames after it with the first clip's audio buckets and pose latents and no motion tokens, and
the loss on frames 1 onward only. A changed column file re-encodes only that sample's node.
"""

from __future__ import annotations

import numpy as np
import pytest
import tomlkit
import torch

from tests.audio._sound import tone, write_wav
from tests.e2e._layout_s2v import write_s2v_models_root
from tests.e2e._run import computed, run
from tests.e2e._train import first_loss, stored_tensors, write_metadata
from tests.e2e.conftest import use_models
from wanflow.output import save_mp4

FAMILY = "wan2.2-s2v-14b"
RATE, FPS, SEED = 16000, 16, 3
SIZE, FRAMES = 64, 9  # one clip of 9 frames: the reference's latent frame and 2 latent frames after it


@pytest.fixture(scope="module")
def s2v_root(tmp_path_factory):
    return write_s2v_models_root(tmp_path_factory.mktemp("s2v-train-models"))


@pytest.fixture()
def senv(s2v_root, tmp_path, monkeypatch):
    return use_models(s2v_root, tmp_path, monkeypatch)


def _video(path, frames: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8)
    save_mp4(pixels, path, FPS, {}, quality=0)


@pytest.fixture()
def media(tmp_path):
    from PIL import Image

    from wanflow.output import load_video

    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    out = {}
    for name, seed in (("clip", 1), ("clip2", 2), ("pose", 3), ("pose2", 4)):
        out[name] = folder / "clips" / f"{name}.mp4"
        _video(out[name], 2 * FRAMES, seed)  # pose videos cover a generation's two clips
    # 0.3 s: one clip of buckets; 0.75 s: two (a sample trains on the first)
    for name, seconds, seed in (("speech", 0.3, 0), ("speech2", 0.3, 1), ("long", 0.75, 2)):
        noise = np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * 0.05
        out[name] = write_wav(folder / f"{name}.wav", (tone(180 + 40 * seed, seconds, RATE, 0.4) + noise).clip(-1, 1),
                              RATE)
    out["first_png"] = folder / "first.png"
    Image.fromarray(load_video(out["clip"], 1, SIZE, SIZE)[0]).save(out["first_png"])
    out["reference"] = folder / "reference.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(out["reference"])
    return out



def train_recipe(folder, metadata, name: str = "train", inputs: dict | None = None, **train) -> object:
    settings = {"dataset": str(metadata), "width": SIZE, "height": SIZE, "frames": FRAMES, "steps": 1,
                "seed": SEED, "checkpoint_every": 1, "lora_rank": 4, "lora_alpha": 4.0, **train}
    doc = {"schema": 1, "name": name, "model": FAMILY, "runtime": {"dtype": "fp32"}, "sampler": {"steps": 2},
           "train": settings, **({"inputs": inputs} if inputs else {})}
    (folder / f"{name}.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return folder / f"{name}.toml"


def generation_recipe(folder, inputs: dict) -> object:
    doc = {"schema": 1, "name": "gen", "model": FAMILY, "prompt": {"text": "a face speaking"},
           "video": {"width": SIZE, "height": SIZE, "frames": FRAMES}, "runtime": {"dtype": "fp32"},
           "sampler": {"steps": 1, "seed": 0, "solver": "euler"}, "inputs": {k: str(v) for k, v in inputs.items()}}
    (folder / "gen.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return folder / "gen.toml"


def loss_by_hand(root, train, generation, pose: bool, storage: str = "compute") -> float:
    """DiffSynth's FlowMatchSFTLoss for S2V, written out on the generation's encodes, over the DiT
    the generation loader loads with ``storage`` (``"fp8"``: its block projections in fp8)."""
    from tests.e2e._layout_s2v import REPO
    from wanflow.models.s2v import S2VExtras
    from wanflow.models.s2v_loader import load_s2v_dit
    from wanflow.train.objective import (
        TrainingSchedule,
        draw,
        noised,
        velocity_target,
        weighted_mse,
    )

    x0 = stored_tensors(train, "train/x0:0")["x0"]  # the clip's latent (1, 16, 3, 8, 8)
    assert x0.shape[2] == 3
    ref = stored_tensors(generation, "encode-conditioning:s2v-reference")["latent"]
    buckets = stored_tensors(generation, "encode-audio")["buckets"][..., :FRAMES - 1]  # the first clip's
    latents = stored_tensors(generation, "encode-conditioning:s2v-pose")["latents"][:, :, :2] if pose else None
    context = stored_tensors(train, "train/text:0")["context"]
    dit = load_s2v_dit(root / REPO, storage=storage).eval()
    schedule = TrainingSchedule.build(5.0)
    d = draw(schedule, x0, schedule.index_range((0.0, 1.0)), SEED, (0, 0), (0,))
    x = noised(x0, d.noise, d.sigma)
    x[:, :, :1] = ref  # DiffSynth: latents[:, :, 0:1] = first_frame_latents
    with torch.no_grad():
        pred = dit(x[:, :, 1:], d.t, context, extras=S2VExtras(audio=buckets, ref_latent=ref, pose=latents))
    target = velocity_target(x0, d.noise)[:, :, 1:]
    return float(weighted_mse(pred.float(), target, d.weight))


@pytest.mark.parametrize("pose", [False, True])
def test_the_first_loss_is_diffsynth_s_objective_on_the_generation_s_encodes(senv, s2v_root, tmp_path, media, pose):
    """Without a pose video the reference is the clip's first frame (DiffSynth's input_image);
    with one, a reference image of its own and a recording of two clips' length."""
    row = {"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"])}
    inputs = {"image": media["first_png"], "audio": media["speech"]}
    if pose:
        row |= {"s2v_pose_video": "clips/pose.mp4", "input_image": str(media["reference"]),
                "input_audio": str(media["long"])}
        inputs = {"image": media["reference"], "audio": media["long"], "s2v_pose_video": media["pose"]}
    train = run(train_recipe(tmp_path, write_metadata(tmp_path / "data", [row])), senv)
    assert (train.archive / "outputs" / "lora.safetensors").is_file()
    generation = run(generation_recipe(tmp_path, inputs), senv)
    expected = loss_by_hand(s2v_root, train, generation, pose)
    assert first_loss(train) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_full_fine_tuning_trains_and_exports_the_s2v_dit(senv, s2v_root, tmp_path, media):
    from safetensors import safe_open

    row = {"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"])}
    train = run(train_recipe(tmp_path, write_metadata(tmp_path / "data", [row]), method="full"), senv)
    generation = run(generation_recipe(tmp_path, {"image": media["first_png"], "audio": media["speech"]}), senv)
    assert first_loss(train) == pytest.approx(loss_by_hand(s2v_root, train, generation, False), rel=1e-5, abs=1e-7)
    with safe_open(str(train.archive / "outputs" / "dit.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"casual_audio_encoder.weights", "trainable_cond_mask.weight", "blocks.0.self_attn.q.weight"} <= keys


def test_the_lora_loads_back_and_a_changed_column_file_re_encodes_only_its_sample_s_node(senv, tmp_path, media):
    rows = [{"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"]),
             "s2v_pose_video": "clips/pose.mp4"},
            {"video": "clips/clip2.mp4", "prompt": "another face", "input_audio": str(media["speech2"])}]
    recipe = train_recipe(tmp_path, write_metadata(tmp_path / "data", rows), steps=2, learning_rate=0.05)
    first = run(recipe, senv)
    encodes = {n for n in first.results if n.startswith("train/")}
    assert encodes == {"train/text:0", "train/text:1", "train/x0:0", "train/x0:1", "train/s2v_audio:0",
                       "train/s2v_audio:1", "train/s2v_reference:0", "train/s2v_reference:1", "train/s2v_pose:0"}
    media["speech2"].write_bytes(media["long"].read_bytes())  # another recording for sample 1
    second = run(recipe, senv)
    assert {n for n in computed(second) if n.startswith("train/")} == {"train/s2v_audio:1"}
    assert "train" in computed(second)
    media["pose"].write_bytes(media["pose2"].read_bytes())  # another pose video for sample 0
    third = run(recipe, senv)
    assert {n for n in computed(third) if n.startswith("train/")} == {"train/s2v_pose:0"}

    lora = third.archive / "outputs" / "lora.safetensors"
    inputs = {"image": media["first_png"], "audio": media["speech"]}
    plain = run(generation_recipe(tmp_path, inputs), senv)
    doc = tomlkit.parse((tmp_path / "gen.toml").read_text())
    doc["lora"] = [{"path": str(lora)}]
    (tmp_path / "gen.toml").write_text(tomlkit.dumps(doc))
    with_lora = run(tmp_path / "gen.toml", senv)
    a, b = stored_tensors(plain, "denoise")["latents"], stored_tensors(with_lora, "denoise")["latents"]
    assert a.shape == b.shape and (a - b).abs().max() > 1e-4


def test_a_lora_trains_over_the_generation_loader_s_fp8_dit(senv, s2v_root, tmp_path, media):
    """[memory].fp8: the first loss is DiffSynth's objective over the generation loader's fp8 DiT
    (the train step holds that model, bit for bit); the storage is keyed (the encodes are not)."""
    from tests.e2e._layout_s2v import REPO
    from tests.e2e._train_fp8 import assert_close_not_equal, assert_holds_generation_fp8, lora_factors
    from wanflow.models.s2v_loader import load_s2v_shards

    assert_holds_generation_fp8(sorted((s2v_root / REPO).glob("diffusion_pytorch_model*.safetensors")),
                                load_s2v_shards)
    row = {"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"])}
    recipe = train_recipe(tmp_path, write_metadata(tmp_path / "data", [row]), steps=2, learning_rate=0.05)
    plain = run(recipe, senv)
    fp8 = run(recipe, senv, "memory.fp8=true")
    assert "train" in computed(fp8) and not [n for n in computed(fp8) if n.startswith("train/")]
    generation = run(generation_recipe(tmp_path, {"image": media["first_png"], "audio": media["speech"]}), senv)
    expected = loss_by_hand(s2v_root, fp8, generation, False, storage="fp8")
    assert first_loss(fp8) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    assert first_loss(fp8) != pytest.approx(first_loss(plain), rel=1e-6, abs=1e-8)  # the base is fp8
    assert_close_not_equal(lora_factors(plain), lora_factors(fp8))


def test_full_fine_tuning_over_an_fp8_base_stays_refused(senv, tmp_path, media):
    from wanflow.errors import RecipeError
    from wanflow.recipe.resolve import load_recipe

    row = {"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"])}
    recipe = train_recipe(tmp_path, write_metadata(tmp_path / "data", [row]), method="full")
    with pytest.raises(RecipeError, match="stores frozen weights in fp8"):
        load_recipe(recipe, sets=("memory.fp8=true",))


def test_the_memory_plan_sizes_the_train_step_at_the_fp8_bytes(senv, s2v_root, tmp_path, media):
    """The train step's planned peak drops by what the loaded fp8 DiT saves over the compute-dtype one."""
    from tests.e2e._layout_s2v import REPO
    from tests.e2e._train_fp8 import assert_plan_drops_by_the_fp8_saving
    from wanflow.models.s2v_loader import load_s2v_shards

    row = {"video": "clips/clip.mp4", "prompt": "a face speaking", "input_audio": str(media["speech"])}
    assert_plan_drops_by_the_fp8_saving(train_recipe(tmp_path, write_metadata(tmp_path / "data", [row])),
                                        sorted((s2v_root / REPO).glob("diffusion_pytorch_model*.safetensors")),
                                        load_s2v_shards)
