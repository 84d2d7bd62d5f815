"""Training Wan2.2-Animate from DiffSynth's dataset columns, end to end on tiny weights.

A ``wanflow run`` of a tiny ``[train]`` recipe over a one-row metadata.csv (video, prompt,
animate_pose_video, animate_face_video): the first recorded loss (the LoRA starts at zero) equals
a DiT call built by hand as DiffSynth's training forward builds it: x0 the clip's latent, every
frame noised and learnt; the I2V channels and CLIP tokens of the clip's first frame; the pose
video's first F − 4 frames VAE-encoded; the face video's first F − 4 crops through the DiT's face
encoders. The exported LoRA loads back onto the DiT, and a changed pose video re-encodes only
that sample's pose (two samples in one batch). A replacement row (animate_inpaint_video,
animate_mask_video) trains on DiffSynth's AnimateInpaint channels, and a changed mask re-encodes
only its background node. Full fine-tuning trains the Animate parts alone (the face encoders
through the crops) and its whole-DiT export loads back into a generation.
"""

from __future__ import annotations

import numpy as np
import pytest
import tomlkit
import torch
from safetensors import safe_open

from tests.e2e._layout_animate import FACE_SIZE, REPO, write_animate_models_root
from tests.e2e._run import computed, run
from tests.e2e._train import first_loss, stored_tensors, write_metadata
from tests.e2e.conftest import use_models
from wanflow.output import save_mp4

FAMILY = "wan2.2-animate-14b"
SIZE, FRAMES, SEED = 16, 9, 3


def _video(path, frames: int, seed: int, size: int = SIZE) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    save_mp4(pixels, path, 8, {}, quality=0)


@pytest.fixture(scope="module")
def animate_root(tmp_path_factory):
    return write_animate_models_root(tmp_path_factory.mktemp("animate-train-models"))


@pytest.fixture()
def aenv(animate_root, tmp_path, monkeypatch):
    return use_models(animate_root, tmp_path, monkeypatch)


@pytest.fixture()
def data(tmp_path):
    """The clip (9 frames), pose videos of 5 frames (the clip's less 4), a face video of 24 px crops."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, frames, seed, size in (("clip", FRAMES, 1, SIZE), ("pose", FRAMES - 4, 2, SIZE),
                                     ("pose2", FRAMES - 4, 5, SIZE), ("face", FRAMES - 4, 3, 24),
                                     ("clip2", FRAMES, 4, SIZE), ("background", FRAMES - 4, 6, SIZE)):
        _video(folder / f"{name}.mp4", frames, seed, size)
    for name, column in (("mask", 5), ("mask2", 11)):  # white (the person) left of a column, moving right
        mask = np.zeros((FRAMES - 4, SIZE, SIZE, 3), np.uint8)
        for f in range(FRAMES - 4):
            mask[f, :, : column + f] = 255
        save_mp4(mask, folder / f"{name}.mp4", 8, {}, quality=0)
    return folder



ROW = {"video": "clip.mp4", "prompt": "a dancer", "animate_pose_video": "pose.mp4", "animate_face_video": "face.mp4"}


def train_recipe(folder, meta, **train) -> object:
    settings = {"dataset": str(meta), "width": SIZE, "height": SIZE, "frames": FRAMES, "steps": 1, "seed": SEED,
                "checkpoint_every": 1, "lora_rank": 4, "lora_alpha": 4.0, **train}
    doc = {"schema": 1, "name": "train", "model": FAMILY, "runtime": {"dtype": "fp32"}, "train": settings}
    (folder / "train.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return folder / "train.toml"


def _signed(path, frames: int, size: int) -> torch.Tensor:
    """(1, 3, T, S, S) in [-1, 1]: the video's first ``frames`` frames at size × size."""
    from wanflow.output import load_video

    return torch.from_numpy(load_video(path, frames, size, size)).float().permute(3, 0, 1, 2)[None] / 127.5 - 1


def replacement_channels(animate_root, data, mask: str = "mask.mp4") -> torch.Tensor:
    """(1, 20, 2, 2, 2): DiffSynth's AnimateInpaint channels of latent frames 1.. for the background
    and mask videos (their first 5 frames), with the mask thresholded as a replacement generation
    reads it: 1 where the background is kept, 0 on the person (white)."""
    from wanflow.memory import pool as model_pool
    from wanflow.output import load_video

    vae = model_pool.vae(animate_root / REPO / "Wan2.1_VAE.pth", "wan2.1", torch.float32, "cpu")
    with torch.no_grad():
        latent = vae.encode(_signed(data / "background.mp4", FRAMES - 4, SIZE), tile=None)  # (1, 16, 2, 2, 2)
    white = torch.from_numpy(load_video(data / mask, FRAMES - 4, SIZE, SIZE)[..., 0]).float() > 127.5
    keep = torch.nn.functional.interpolate((~white).float()[None], size=(2, 2), mode="nearest")  # (1, 5, 2, 2)
    frames = keep[:, [0, 0, 0, 0, 1, 2, 3, 4]]  # the first pixel frame four times, then 4 per latent frame
    channels = frames.reshape(1, 2, 4, 2, 2).transpose(1, 2)  # (1, 4, 2, 2, 2)
    return torch.cat([channels, latent], dim=1)


def loss_by_hand(animate_root, train, data, replacement: bool = False, storage: str = "compute") -> float:
    """DiffSynth's training forward written out, over the DiT the generation loader loads with
    ``storage`` (``"fp8"``: its main blocks' projections in fp8)."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.animate import AnimateExtras
    from wanflow.models.animate_loader import load_animate_files
    from wanflow.train.objective import (
        TrainingSchedule,
        draw,
        noised,
        velocity_target,
        weighted_mse,
    )

    folder = animate_root / REPO
    dit = load_animate_files(sorted(folder.glob("diffusion_pytorch_model-*.safetensors")), storage=storage).eval()
    vae = model_pool.vae(folder / "Wan2.1_VAE.pth", "wan2.1", torch.float32, "cpu")
    clip_encoder = model_pool.image_encoder(next(folder.glob("models_clip_*.pth")), torch.float32, "cpu")
    video = _signed(data / "clip.mp4", FRAMES, SIZE)
    with torch.no_grad():
        x0 = vae.encode(video, tile=None)  # (1, 16, 3, 2, 2): every frame learnt
        start = torch.cat([video[:, :, :1], torch.zeros(1, 3, FRAMES - 1, SIZE, SIZE)], dim=2)
        mask = torch.zeros(1, 4, 3, 2, 2)
        mask[:, :, 0] = 1  # DiffSynth's I2V mask: the image's frame known
        y = torch.cat([mask, vae.encode(start, tile=None)], dim=1)
        if replacement:  # frame 0: the image alone, its mask ones; frames 1..: the background's
            image = torch.cat([torch.ones(1, 4, 1, 2, 2), vae.encode(video[:, :, :1], tile=None)], dim=1)
            y = torch.cat([image, replacement_channels(animate_root, data)], dim=2)
        clip_fea = clip_encoder.encode(video[:, :, 0])
        pose = vae.encode(_signed(data / "pose.mp4", FRAMES - 4, SIZE), tile=None)  # (1, 16, 2, 2, 2)
        face = _signed(data / "face.mp4", FRAMES - 4, FACE_SIZE)
    assert pose.shape[2] == x0.shape[2] - 1
    context = stored_tensors(train, "train/text:0")["context"]
    schedule = TrainingSchedule.build(5.0)
    d = draw(schedule, x0, schedule.index_range((0.0, 1.0)), SEED, (0, 0), (0,))
    with torch.no_grad():
        pred = dit(noised(x0, d.noise, d.sigma), d.t, context, clip_fea=clip_fea, y=y,
                   extras=AnimateExtras(pose=pose, face=face)).float()
    return float(weighted_mse(pred, velocity_target(x0, d.noise), d.weight))


def test_the_first_loss_is_diffsynth_s_training_forward_and_the_lora_loads_back(aenv, animate_root, data, tmp_path):
    train = run(train_recipe(tmp_path, write_metadata(data, [ROW]), learning_rate=0.05), aenv)
    assert first_loss(train) == pytest.approx(loss_by_hand(animate_root, train, data), rel=1e-5, abs=1e-7)
    pose = stored_tensors(train, "train/pose:0")["latents"]
    assert pose.shape == (1, 16, 2, 2, 2)  # the pose's 5 frames: latent frames 1.. of the clip's 3
    # the exported LoRA loads back: an Animate generation with it gives another video
    lora = train.archive / "outputs" / "lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        assert "blocks.0.self_attn.q.lora_A.default.weight" in list(f.keys())  # DiffSynth's layout
    plain = run(generation_recipe(tmp_path / "plain", data), aenv)
    tuned = run(generation_recipe(tmp_path / "tuned", data, lora), aenv)
    assert not torch.allclose(stored_tensors(plain, "denoise")["latents"], stored_tensors(tuned, "denoise")["latents"])


def test_a_replacement_row_trains_on_its_background_and_mask(aenv, animate_root, data, tmp_path):
    row = {**ROW, "animate_inpaint_video": "background.mp4", "animate_mask_video": "mask1.mp4"}
    (data / "mask1.mp4").write_bytes((data / "mask.mp4").read_bytes())
    recipe = train_recipe(tmp_path, write_metadata(data, [row]))
    train = run(recipe, aenv)
    stored = stored_tensors(train, "train/background:0")["y"]
    assert torch.allclose(stored, replacement_channels(animate_root, data), atol=1e-6)
    assert first_loss(train) == pytest.approx(loss_by_hand(animate_root, train, data, True), rel=1e-5, abs=1e-7)
    (data / "mask1.mp4").write_bytes((data / "mask2.mp4").read_bytes())  # another mask
    again = run(recipe, aenv)
    assert {n for n in computed(again) if n.startswith("train/")} == {"train/background:0"}
    assert stored_tensors(again, "train/background:0")["y"][:, :4].sum() < stored[:, :4].sum()  # more person


def test_full_fine_tuning_trains_the_animate_parts_alone_and_loads_back(aenv, animate_root, data, tmp_path):
    from safetensors.torch import load_file

    from tests.e2e._layout_animate import animate_state, tiny_animate_config

    train = run(train_recipe(tmp_path, write_metadata(data, [ROW]), method="full", learning_rate=0.05), aenv)
    assert first_loss(train) == pytest.approx(loss_by_hand(animate_root, train, data), rel=1e-5, abs=1e-7)
    assert "crops" in stored_tensors(train, "train/face:0")  # the face encoders train: the DiT encodes the crops
    exported = load_file(str(train.archive / "outputs" / "dit.safetensors"))
    base = animate_state(tiny_animate_config(), 40)
    assert set(exported) == set(base)  # the whole DiT under the released names
    parts = ("pose_patch_embedding.", "motion_encoder.", "face_encoder.", "face_adapter.")
    trained = {k for k in base if not torch.equal(exported[k], base[k])}
    assert trained and all(k.startswith(parts) for k in trained), sorted(trained - {k for k in trained
                                                                                    if k.startswith(parts)})[:5]
    for part in parts:  # every Animate part learns, the motion and face encoders through the crops
        assert any(k.startswith(part) for k in trained), part
    folder = tmp_path / "tuned-dit"
    folder.mkdir()
    (folder / "dit.safetensors").write_bytes((train.archive / "outputs" / "dit.safetensors").read_bytes())
    plain = run(generation_recipe(tmp_path / "plain", data), aenv)
    tuned = run(generation_recipe(tmp_path / "tuned", data, dit=folder), aenv)
    assert not torch.allclose(stored_tensors(plain, "denoise")["latents"], stored_tensors(tuned, "denoise")["latents"])


def generation_recipe(folder, data, lora=None, dit=None) -> object:
    folder.mkdir()
    from PIL import Image

    from wanflow.output import load_video

    Image.fromarray(load_video(data / "clip.mp4", 1, SIZE, SIZE)[0]).save(folder / "first.png")
    doc = {"schema": 1, "name": "gen", "model": FAMILY, "prompt": {"text": "a dancer"},
           "video": {"width": SIZE, "height": SIZE, "frames": FRAMES - 4},
           "runtime": {"dtype": "fp32"}, "sampler": {"steps": 2, "seed": 0},
           "inputs": {"reference_image": str(folder / "first.png"), "pose_video": str(data / "pose.mp4"),
                      "face_video": str(data / "face.mp4")}}
    if lora is not None:
        doc["lora"] = [{"path": str(lora)}]
    if dit is not None:
        doc["models"] = {"dit": {"source": str(dit), "files": ["dit.safetensors"]}}
    (folder / "gen.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return folder / "gen.toml"


def test_a_changed_pose_video_re_encodes_only_that_sample_s_pose(aenv, data, tmp_path):
    rows = [ROW, {**ROW, "video": "clip2.mp4", "prompt": "another dancer", "animate_pose_video": "pose1.mp4"}]
    (data / "pose1.mp4").write_bytes((data / "pose.mp4").read_bytes())
    recipe = train_recipe(tmp_path, write_metadata(data, rows), steps=2, batch_size=2)  # both samples in one batch
    first = run(recipe, aenv)
    assert {"train/pose:0", "train/pose:1", "train/face:0", "train/face:1", "train/y:1", "train/clip:1"} <= set(
        first.results)
    (data / "pose1.mp4").write_bytes((data / "pose2.mp4").read_bytes())
    second = run(recipe, aenv)
    assert {n for n in computed(second) if n.startswith("train/")} == {"train/pose:1"}
    assert "train" in computed(second)


def test_a_lora_trains_over_the_generation_loader_s_fp8_dit(aenv, animate_root, data, tmp_path):
    """[memory].fp8: the first loss is DiffSynth's training forward over the generation loader's
    fp8 DiT (the train step holds that model, bit for bit); the storage is keyed, the face tokens
    are not (the encoders outside the blocks are never fp8)."""
    from tests.e2e._train_fp8 import assert_close_not_equal, assert_holds_generation_fp8, lora_factors
    from wanflow.models.animate_loader import load_animate_files

    assert_holds_generation_fp8(sorted((animate_root / REPO).glob("diffusion_pytorch_model*.safetensors")),
                                load_animate_files)
    recipe = train_recipe(tmp_path, write_metadata(data, [ROW]), steps=2, learning_rate=0.05)
    plain = run(recipe, aenv)
    fp8 = run(recipe, aenv, "memory.fp8=true")
    assert "train" in computed(fp8) and not [n for n in computed(fp8) if n.startswith("train/")]
    assert [s.spec.step.storage for s in fp8.plan.steps if s.name == "train/face:0"] == ["fp8"]  # no compute-dtype copy
    expected = loss_by_hand(animate_root, fp8, data, storage="fp8")
    assert first_loss(fp8) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    assert first_loss(fp8) != pytest.approx(first_loss(plain), rel=1e-6, abs=1e-8)  # the base is fp8
    assert_close_not_equal(lora_factors(plain), lora_factors(fp8))


def test_the_memory_plan_sizes_the_train_step_at_the_fp8_bytes(aenv, animate_root, data, tmp_path):
    """The train step's planned peak drops by what the loaded fp8 DiT saves over the compute-dtype one."""
    from tests.e2e._train_fp8 import assert_plan_drops_by_the_fp8_saving
    from wanflow.models.animate_loader import load_animate_files

    assert_plan_drops_by_the_fp8_saving(train_recipe(tmp_path, write_metadata(data, [ROW])),
                                        sorted((animate_root / REPO).glob("diffusion_pytorch_model*.safetensors")),
                                        load_animate_files)
