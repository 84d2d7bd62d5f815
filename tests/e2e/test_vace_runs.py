"""The four VACE families end to end on tiny weights in their repositories' real file layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e._layout_vace import REPOS, write_vace_root
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe

SIZE, FRAMES = 16, 5
AFTER_VACE = {"encode-conditioning:vace", "denoise", "decode", "save", "save-metadata"}
#: VACE-Fun's shift 12 keeps both of 2 steps above its boundary; shift 5 makes the experts switch.
EXTRA = {"wan2.2-vace-fun-a14b": {"shift": 5.0}}


@pytest.fixture(scope="module")
def vace_root(tmp_path_factory):
    return write_vace_root(tmp_path_factory.mktemp("vace-models"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 16×16 source video of 7 frames, three masks (left half, top half, a soft left half) and two
    references."""
    from PIL import Image

    from wanflow.output import save_mp4

    folder = tmp_path_factory.mktemp("vace-inputs")
    rng = np.random.default_rng(3)
    save_mp4(rng.integers(0, 256, (FRAMES + 2, SIZE, SIZE, 3), dtype=np.uint8), folder / "source.mp4", 8, {},
             quality=0)
    for name, region, value in (("left", np.s_[:, : SIZE // 2], 255), ("top", np.s_[: SIZE // 2, :], 255),
                                ("soft", np.s_[:, : SIZE // 2], 160)):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[region] = value
        Image.fromarray(mask).save(folder / f"{name}.png")
    for i, shape in enumerate(((24, 12, 3), (12, 20, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"ref{i}.png")
    return folder


@pytest.fixture()
def env(vace_root, tmp_path, monkeypatch):
    return use_models(vace_root, tmp_path, monkeypatch)


def recipe(folder, family, media, **vace):
    """The small e2e recipe at 16×16, 5 frames, with these [inputs.vace] values (file names in ``media``)."""
    import tomlkit

    path = write_recipe(folder, family, video={"width": SIZE, "height": SIZE, "frames": FRAMES},
                        sampler=EXTRA.get(family, {}))
    if vace:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
        doc["inputs"] = {"vace": {k: str(media / v) if isinstance(v, str) and "." in v else v
                                  for k, v in vace.items()}}
        path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def frames_of(outcome) -> np.ndarray:
    import imageio_ffmpeg

    path = outcome.archive / "outputs" / "video.mp4"
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    out = np.stack([np.frombuffer(f, np.uint8) for f in reader]).reshape(-1, *meta["size"][::-1], 3)
    reader.close()
    return out


def test_every_vace_family_is_laid_out():
    from wanflow.families import vace

    assert sorted(REPOS) == sorted(f.name for f in vace.families())


@pytest.mark.parametrize("family", sorted(REPOS))
def test_vace_family_end_to_end(family, env, media, tmp_path):
    path = recipe(tmp_path, family, media, video="source.mp4", mask="left.png", reference="ref0.png")
    first = run(path, env)
    assert computed(first) == set(first.results)
    assert video_shape(first.archive / "outputs" / "video.mp4") == (FRAMES, SIZE, SIZE)  # reference dropped

    again = run(path, env)
    assert computed(again) == set()
    # another mask: the VACE context and what follows it, not the text
    edited = recipe(tmp_path, family, media, video="source.mp4", mask="top.png", reference="ref0.png")
    assert computed(run(edited, env)) == AFTER_VACE


def test_text_only_and_the_reference_image_changes_the_output(env, media, tmp_path):
    family = "wan2.1-vace-1.3b"
    plain = run(recipe(tmp_path, family, media), env)  # no [inputs.vace]: a grey video, all generated
    assert video_shape(plain.archive / "outputs" / "video.mp4") == (FRAMES, SIZE, SIZE)
    referenced = run(recipe(tmp_path, family, media, reference="ref0.png"), env)
    assert computed(referenced) == AFTER_VACE
    assert video_shape(referenced.archive / "outputs" / "video.mp4") == (FRAMES, SIZE, SIZE)
    assert np.abs(frames_of(plain).astype(int) - frames_of(referenced)).max() > 8
    other = run(recipe(tmp_path, family, media, reference="ref1.png"), env)
    assert np.abs(frames_of(other).astype(int) - frames_of(referenced)).max() > 8


def test_the_vace_options_are_part_of_the_key(env, media, tmp_path):
    family = "wan2.1-vace-1.3b"
    base = {"video": "source.mp4", "reference": "ref0.png"}
    run(recipe(tmp_path, family, media, **base), env)
    for change in ({"reference_resize": "stretch"}, {"scale": 0.5}):
        assert computed(run(recipe(tmp_path, family, media, **base, **change), env)) == AFTER_VACE
    # a soft mask (0.63 inside): cut to 1 (the authors), or kept as it is (DiffSynth)
    run(recipe(tmp_path, family, media, **base, mask="soft.png"), env)
    kept = recipe(tmp_path, family, media, **base, mask="soft.png", binarize_mask=False)
    assert computed(run(kept, env)) == AFTER_VACE
    # a hard mask is the same either way: the context is recomputed, the rest is a hit
    run(recipe(tmp_path, family, media, **base, mask="left.png"), env)
    hard = recipe(tmp_path, family, media, **base, mask="left.png", binarize_mask=False)
    assert computed(run(hard, env)) == {"encode-conditioning:vace", "save", "save-metadata"}


@pytest.mark.parametrize("family", sorted(REPOS))
def test_no_two_nodes_of_a_vace_plan_share_a_key(family, env, media, tmp_path):
    """The key-identity check of every plan (``test_key_identity``) over the VACE layouts: with and
    without [inputs.vace], guidance on and off, each node is its own computation."""
    from tests.e2e.test_key_identity import _groups, planned, static_keys

    for vace in ({}, {"video": "source.mp4", "mask": "left.png", "reference": "ref0.png"}):
        path = recipe(tmp_path, family, media, **vace)
        for cfg in (5.0, 1.0):
            keys = static_keys(planned(path, f"sampler.cfg={cfg}"))
            assert "encode-conditioning:vace" in keys
            assert [g for g in _groups(keys) if len(g) > 1] == [], (family, vace, cfg)
