"""Wan2.2-Animate end to end on tiny weights in the release's layout.

Both modes give an mp4 of the asked length; one clip's denoise equals one Euler step driven by
hand through the tiny AnimateDiT from the input files (pose latents, face tokens, the first
clip's condition, black crops in the unconditional pass); a long video runs several clips, each
started by the previous clip's decoded last frames; replacement applies the relighting LoRA (its
file is in the denoise key); a new input file re-runs only its own step and what follows.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from tests.e2e._layout_animate import REPO, write_animate_models_root, write_relighting
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe

FAMILY = "wan2.2-animate-14b"
AFTER = {"denoise", "decode", "save", "save-metadata"}
ENCODES = {"encode-text:positive", "encode-conditioning:animate-reference", "encode-conditioning:animate-pose",
           "encode-conditioning:animate-face"}
REPLACING = {"prepare-conditioning:animate-background", "prepare-conditioning:animate-mask"}
SIZE, FRAMES, LONG = 16, 9, 153  # LONG: two clips of 77 with one overlap frame


def write_video(path, frames: int, seed: int, size=(SIZE, SIZE)) -> None:
    from wanflow.output import save_mp4

    pixels = np.random.default_rng(seed).integers(0, 256, (frames, size[1], size[0], 3), dtype=np.uint8)
    save_mp4(pixels, path, 8, {}, quality=0)


def write_mask(path, frames: int, size=(SIZE, SIZE), grey: bool = False) -> None:
    """White on a box moving right (the person), black elsewhere; ``grey``: a soft mask."""
    from wanflow.output import save_mp4

    pixels = np.zeros((frames, size[1], size[0], 3), np.uint8)
    for t in range(frames):
        pixels[t, 4:12, (t % 8):(t % 8) + 6] = 128 if grey else 255
    save_mp4(pixels, path, 8, {}, quality=0)


@pytest.fixture(scope="session")
def animate_root(tmp_path_factory):
    return write_animate_models_root(tmp_path_factory.mktemp("animate-models"))


@pytest.fixture(scope="session")
def media(tmp_path_factory, images):
    return write_media(tmp_path_factory.mktemp("animate-inputs"), images)


def write_media(folder, images) -> dict:
    """The driving videos (pose, face, background, mask) of one clip and of two, beside ``images``."""
    out = dict(images)
    for frames in (FRAMES, LONG):
        for name, seed, size in (("pose", 1, (SIZE, SIZE)), ("pose2", 5, (SIZE, SIZE)), ("face", 2, (24, 24)),
                                 ("face2", 6, (24, 24)), ("background", 3, (SIZE, SIZE))):
            out[f"{name}{frames}"] = folder / f"{name}{frames}.mp4"
            write_video(out[f"{name}{frames}"], frames, seed + frames, size)
        out[f"mask{frames}"] = folder / f"mask{frames}.mp4"
        write_mask(out[f"mask{frames}"], frames)
    return out


@pytest.fixture()
def animate_env(animate_root, tmp_path, monkeypatch):
    return use_models(animate_root, tmp_path, monkeypatch)


def recipe(tmp_path, media, frames=FRAMES, mode="animation", pose="pose", face="face", mask="mask", **tables):
    files = {"reference_image": media["first"], "pose_video": media[f"{pose}{frames}"],
             "face_video": media[f"{face}{frames}"]}
    if mode == "replacement":
        files |= {"background_video": media[f"background{frames}"], "mask": media[f"{mask}{frames}"]}
    inputs = {**files, "animate_mode": mode, **tables.pop("inputs", {})}
    path = write_recipe(tmp_path, FAMILY, video={"width": SIZE, "height": SIZE, "frames": frames}, **tables)
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = {k: v if isinstance(v, (bool, int)) else str(v) for k, v in inputs.items()}
    path.write_text(tomlkit.dumps(doc))
    return path


def test_animation_makes_a_video_of_the_asked_length(animate_env, media, tmp_path):
    path = recipe(tmp_path, media)
    first = run(path, animate_env)
    assert computed(first) == set(first.results) == ENCODES | AFTER
    assert video_shape(first.archive / "outputs" / "video.mp4") == (FRAMES, SIZE, SIZE)
    assert computed(run(path, animate_env)) == set()


def test_replacement_makes_a_video_and_applies_the_relighting_lora(animate_env, animate_root, media, tmp_path):
    path = recipe(tmp_path, media, mode="replacement")
    first = run(path, animate_env)
    assert computed(first) == set(first.results) == ENCODES | REPLACING | AFTER
    assert video_shape(first.archive / "outputs" / "video.mp4") == (FRAMES, SIZE, SIZE)
    # another relighting LoRA file: a new denoise key and video, no encode re-runs
    other = tmp_path / "other-lora"
    other.mkdir()
    write_relighting(other / "relighting_lora.ckpt", seed=99)
    relit = run(path, animate_env, f'models.relighting_lora.source="{other}"')
    assert computed(relit) == AFTER
    assert relit.results["denoise"].key != first.results["denoise"].key
    assert relit.lock["outputs"] != first.lock["outputs"]
    # without the LoRA: another video again, and the LoRA file is no weight of denoise
    plain = run(path, animate_env, "inputs.relighting_lora=false")
    assert computed(plain) == AFTER and plain.lock["outputs"] != first.lock["outputs"]


def _executed(path, last: str = "denoise"):
    """The executor after running the real plan up to ``last`` (its nodes' outputs are loadable)."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.execute import Executor
    from wanflow.engine.runner import plan_job
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    resolved = load_recipe(path)
    with Cache() as cache:
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        dropped = {"decode", "save", "save-metadata"} - ({"decode"} if last == "decode" else set())
        plan = attrs.evolve(plan, steps=tuple(s for s in plan.steps if s.name not in dropped))
        ex = Executor(plan, cache)
        ex.run()
        yield resolved, ex


def _padded(path, frames: int, size: tuple[int, int]) -> torch.Tensor:
    """(1, 3, 77, H, W) in [-1, 1]: the video's frames, then back and forth to 77 (by hand)."""
    from wanflow.output import load_video

    video = load_video(path, frames, *size)
    order = [abs((i + frames - 1) % (2 * frames - 2) - (frames - 1)) for i in range(77)]  # 0 1 … 8 7 … 0 1 …
    return torch.from_numpy(video[order]).float().permute(3, 0, 1, 2)[None] / 127.5 - 1


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_one_clip_equals_a_hand_driven_euler_step(animate_env, animate_root, media, tmp_path, cfg):
    from wanflow.models.animate_loader import load_animate_files

    path = recipe(tmp_path, media, sampler={"solver": "euler", "steps": 1, "shift": 5.0, "cfg": cfg})
    folder = animate_root / REPO
    dit = load_animate_files(sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))).eval()
    for _, ex in _executed(path):
        ours, expected = ex.load("denoise")["latents"], hand_driven_step(dit, animate_root, media, ex, cfg)
        assert ours.shape == expected.shape == (1, 16, 21, 2, 2)
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5), (ours - expected).abs().max()


def hand_driven_step(dit, animate_root, media, ex, cfg: float) -> torch.Tensor:
    """One Euler step of the first clip through ``dit``, from the run's encodes and the input files."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.animate import AnimateExtras, unconditional_face
    from wanflow.sampling import BUILTIN_SOLVERS, initial_noise, make_schedule

    vae = model_pool.vae(animate_root / REPO / "Wan2.1_VAE.pth", "wan2.1", torch.float32, "cpu")
    reference = ex.load("encode-conditioning:animate-reference")
    with torch.no_grad():
        pose = vae.encode(_padded(media[f"pose{FRAMES}"], FRAMES, (SIZE, SIZE)), tile=None)
        crops = _padded(media[f"face{FRAMES}"], FRAMES, (16, 16))  # the tiny motion encoder's size
        known = vae.encode(torch.zeros(1, 3, 77, SIZE, SIZE), tile=None)  # clip 0: nothing known
    y = torch.cat([torch.cat([torch.ones(1, 4, 1, 2, 2), reference["latent"]], dim=1),
                   torch.cat([torch.zeros(1, 4, 20, 2, 2), known], dim=1)], dim=2)
    x = initial_noise((1, 16, 21, 2, 2), 0, noise_device="cpu")
    schedule = make_schedule(BUILTIN_SOLVERS["euler"], 1, 5.0, 1.0)
    t = schedule.timesteps[0].reshape(1)

    def velocity(text: str, face: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return dit(x, t, ex.load(text)["context"], clip_fea=reference["clip"], y=y,
                       extras=AnimateExtras(pose=pose, face=face))

    v = velocity("encode-text:positive", crops)
    if cfg != 1.0:
        uncond = velocity("encode-text:negative", unconditional_face(crops))
        v = uncond + cfg * (v - uncond)
    return x + (schedule.sigma(1) - schedule.sigma(0)) * v


def test_a_long_video_runs_clips_each_started_by_the_last_frames_of_the_one_before(
        animate_env, media, tmp_path, monkeypatch):
    from wanflow.output import to_uint8_frames
    from wanflow.steps.denoise_animate import AnimateDenoise

    seen = []
    original = AnimateDenoise._clip_condition

    def spy(self, ctx, vae, k, previous):
        condition = original(self, ctx, vae, k, previous)
        seen.append((k, None if previous is None else previous.clone(), condition))
        return condition

    monkeypatch.setattr(AnimateDenoise, "_clip_condition", spy)
    path = recipe(tmp_path, media, frames=LONG)
    first = run(path, animate_env)
    assert video_shape(first.archive / "outputs" / "video.mp4") == (LONG, SIZE, SIZE)
    assert [k for k, _, _ in seen] == [0, 1]
    for _, ex in _executed(path, last="decode"):
        latents = ex.load("denoise")["latents"]
        assert latents.shape == (2, 16, 21, 2, 2)
        from wanflow.memory import pool as model_pool

        vae = model_pool.vae(ex.plan.get("denoise").spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        with torch.no_grad():
            decoded = vae.decode(latents[:1, :, 1:], tile=None)  # clip 0's 77 frames
            last = vae.encode(torch.cat([decoded[:, :, -1:], torch.zeros(1, 3, 76, SIZE, SIZE)], dim=2), tile=None)
        _, previous, condition = seen[1]
        assert torch.allclose(previous, decoded, atol=1e-5)
        mask = torch.zeros(1, 4, 20, 2, 2)
        mask[:, :, 0] = 1  # the one known pixel frame, four times over in latent frame 0
        assert torch.equal(condition[:, :4], mask)
        assert torch.allclose(condition[:, 4:], last, atol=1e-5)
        assert torch.equal(seen[0][2][:, :4], torch.zeros(1, 4, 20, 2, 2))  # the first clip knows nothing
        # the video: clip 0's 77 frames, then clip 1's without its first (the overlap frame)
        with torch.no_grad():
            second = vae.decode(latents[1:, :, 1:], tile=None)
        stitched = torch.from_numpy(to_uint8_frames(torch.cat([decoded[0], second[0, :, 1:]], dim=1)))
        assert torch.equal(ex.load("decode")["frames"], stitched)
    # five overlap frames: clips start every 72 frames; the driving videos' clips change, the texts do not
    again = run(path, animate_env, "inputs.overlap_frames=5")
    assert computed(again) == {"encode-conditioning:animate-pose", "encode-conditioning:animate-face", *AFTER}
    assert video_shape(again.archive / "outputs" / "video.mp4") == (LONG, SIZE, SIZE)


@pytest.mark.parametrize(("change", "reruns"), [
    ({"pose": "pose2"}, "encode-conditioning:animate-pose"),
    ({"face": "face2"}, "encode-conditioning:animate-face"),
])
def test_a_new_driving_video_reruns_only_its_encode(animate_env, media, tmp_path, change, reruns):
    first = run(recipe(tmp_path, media), animate_env)
    again = run(recipe(tmp_path, media, **change), animate_env)
    assert computed(again) == {reruns, *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]


def test_a_new_mask_or_background_reruns_only_its_step(animate_env, media, tmp_path):
    path = recipe(tmp_path, media, mode="replacement")
    first = run(path, animate_env)
    other = tmp_path / "mask-other.mp4"
    write_mask(other, FRAMES, size=(SIZE, SIZE))
    pixels = np.zeros((FRAMES, SIZE, SIZE, 3), np.uint8)
    pixels[:, 2:14, 2:8] = 255  # another person's shape
    from wanflow.output import save_mp4

    save_mp4(pixels, other, 8, {}, quality=0)
    again = run(path, animate_env, f'inputs.mask="{other}"')
    assert computed(again) == {"prepare-conditioning:animate-mask", *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]
    background = run(path, animate_env, f'inputs.background_video="{media[f"pose{FRAMES}"]}"')
    assert computed(background) == {"prepare-conditioning:animate-background", *AFTER}


def test_cfg_merge_gives_the_separate_passes_result(animate_env, media, tmp_path):
    """One batch-2 forward ([prompt; negative] rows, the face tokens then the black crops')
    equals the two passes, to fp32 rounding."""
    latents = []
    for merge in (False, True):
        path = recipe(tmp_path, media, sampler={"cfg": 4.0, "cfg_merge": merge})
        for _, ex in _executed(path):
            latents.append(ex.load("denoise")["latents"])
    assert torch.allclose(*latents, rtol=1e-4, atol=1e-4), (latents[0] - latents[1]).abs().max()


def test_a_run_killed_between_clips_resumes_at_the_next_clip_to_the_same_bits(animate_env, media, tmp_path,
                                                                               monkeypatch):
    from wanflow.steps.denoise_animate import AnimateDenoise

    path = recipe(tmp_path, media, frames=LONG)
    whole = run(path, animate_env, "sampler.seed=3")
    started = []
    original = AnimateDenoise._clip_condition

    def killed_at_clip_1(self, ctx, vae, k, previous):
        started.append(k)
        if k == 1 and started.count(1) == 1:
            raise KeyboardInterrupt  # the first run dies once clip 0 is saved
        return original(self, ctx, vae, k, previous)

    monkeypatch.setattr(AnimateDenoise, "_clip_condition", killed_at_clip_1)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "other-cache"))
    with pytest.raises(KeyboardInterrupt):
        run(path, animate_env, "sampler.seed=3")
    resumed = run(path, animate_env, "sampler.seed=3")
    assert started == [0, 1, 1]  # clip 0 was not sampled again
    assert resumed.lock["outputs"] == whole.lock["outputs"]
