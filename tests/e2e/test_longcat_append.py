"""A continuation written as the authors' demo writes it: the whole input video, then the new frames.

``video[::stride] + output[num_cond_frames:]`` (``run_demo_video_continuation.py``), and for the
refinement the same at the refined rate after ``2 · num_cond_frames`` frames; the input's frames
at the output's size. What the setting re-runs, and its refusals (``tests/recipe/bad``).
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models
from tests.e2e.test_longcat_refine import REFINE
from tests.e2e.test_longcat_runs import COND, _executed, _recipe, videos  # noqa: F401 (the fixture)
from wanflow.steps.longcat_append import NODE

REFINE_LORA = {"source": "modelscope:meituan-longcat/LongCat-Video", "file": "lora/refinement_lora.safetensors",
               "target": "refine"}


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _appended(tmp_path, video, frames: int = 13, refine: bool = False):
    import tomlkit

    recipe = _recipe(tmp_path, video, frames=frames, **({"lora": [REFINE_LORA]} if refine else {}))
    doc = tomlkit.parse(recipe.read_text())
    doc["inputs"]["longcat_append_to_input"] = True
    if refine:
        doc["inputs"].update(REFINE)
    recipe.write_text(tomlkit.dumps(doc))
    return recipe


def _input_frames(path, size: int, keep) -> torch.Tensor:
    from wanflow.output import load_video

    return torch.from_numpy(load_video(path, 11, size, size)[list(keep)])


def test_the_input_video_comes_before_the_generated_frames(longcat_env, videos, tmp_path):  # noqa: F811
    """11 frames at 30 fps brought to 15 (frames 0, 2, … 10), then the 13-frame clip after its 5
    conditioning frames: 6 + 8 frames at 15 fps."""
    recipe = _appended(tmp_path, videos["fast"])
    for _, ex in _executed(recipe, keep={"decode"}):
        clip = ex.load("decode")["frames"]  # (13, 16, 16, 3)
        joined = ex.load(NODE)["frames"]
        expected = torch.cat([_input_frames(videos["fast"], 16, range(0, 11, 2)), clip[COND:]])
        assert torch.equal(joined, expected)
    outcome = run(recipe, longcat_env)
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (6 + 8, 16, 16)


def test_the_setting_re_runs_only_the_join_and_the_saves(longcat_env, videos, tmp_path):  # noqa: F811
    clip = run(_recipe(tmp_path, videos["fast"], frames=13), longcat_env)
    assert NODE not in clip.results
    assert video_shape(clip.archive / "outputs" / "video.mp4") == (13, 16, 16)
    joined = run(_appended(tmp_path, videos["fast"]), longcat_env)
    assert computed(joined) == {NODE, "save", "save-metadata"}
    assert joined.lock["outputs"] != clip.lock["outputs"]
    slower = run(_appended(tmp_path, videos["fast"]), longcat_env, "video.fps=30")  # every input frame
    assert NODE in computed(slower)


def test_a_refined_continuation_is_joined_at_the_refined_rate(longcat_env, videos, tmp_path):  # noqa: F811
    """The refinement doubles 9 frames to 18 at 30 fps, the first 10 its conditioning frames: the
    input's 11 frames at 30 fps (all of them) and 64 x 64, then the 8 refined new frames."""
    from wanflow.steps.longcat_refine import DECODE

    recipe = _appended(tmp_path, videos["fast"], frames=9, refine=True)
    for _, ex in _executed(recipe, keep={"decode", DECODE}):
        refined = ex.load(DECODE)["frames"]  # (18, 64, 64, 3)
        expected = torch.cat([_input_frames(videos["fast"], 64, range(11)), refined[2 * COND:]])
        assert torch.equal(ex.load(NODE)["frames"], expected)


def test_a_long_video_continuing_an_input_is_joined_after_the_first_clip_s_conditioning(
        longcat_env, videos, tmp_path):  # noqa: F811
    """The input at 15 fps (6 frames), then the joined clips (9 + 4 frames) after the first clip's 5
    conditioning frames."""
    import tomlkit

    from wanflow.steps.longcat_segments import JOIN

    recipe = _appended(tmp_path, videos["fast"], frames=9)
    doc = tomlkit.parse(recipe.read_text())
    doc["inputs"]["longcat_segments"] = 1
    recipe.write_text(tomlkit.dumps(doc))
    for _, ex in _executed(recipe, keep={"decode", "decode:segment-1"}):
        joined = ex.load(JOIN)["frames"]  # (13, 16, 16, 3)
        expected = torch.cat([_input_frames(videos["fast"], 16, range(0, 11, 2)), joined[COND:]])
        assert joined.shape[0] == 13 and torch.equal(ex.load(NODE)["frames"], expected)
