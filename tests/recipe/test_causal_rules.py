"""The block-causal solver at validation: what it refuses, naming the key, and what it takes."""

from __future__ import annotations

import pytest

from tests.recipe.helpers import write
from wanflow.errors import RecipeError
from wanflow.families import krea
from wanflow.models.causal import FRAMES_PER_BLOCK as MODEL_BLOCK
from wanflow.plugins import build_registry
from wanflow.recipe import load_recipe
from wanflow.sampling.krea import KreaSampling

HEAD = 'schema = 1\nmodel = "krea-realtime-video"\n[prompt]\ntext = "waves"\n'


def _load(tmp_path, body: str = "", head: str = HEAD):
    return load_recipe(write(tmp_path, "r.toml", head + body), families=build_registry(entry_points=False))


def _problems(tmp_path, body: str, head: str = HEAD) -> list[str]:
    with pytest.raises(RecipeError) as err:
        _load(tmp_path, body, head)
    return err.value.problems


def test_the_family_defaults_are_the_authors_and_fill_whole_blocks(tmp_path):
    v = _load(tmp_path).values
    assert (v["sampler.solver"], v["sampler.steps"], v["sampler.shift"], v["sampler.cfg"]) == ("krea-causal", 5, 5.0, 1.0)
    assert (v["video.width"], v["video.height"], v["video.frames"], v["prompt.negative"]) == (832, 480, 105, "")
    assert ((v["video.frames"] - 1) // 4 + 1) == 9 * krea.FRAMES_PER_BLOCK  # the server's 9 blocks
    assert krea.FRAMES_PER_BLOCK == MODEL_BLOCK == KreaSampling().frames_per_block


@pytest.mark.parametrize(("body", "key", "fragment"), [
    ("[sampler]\ncfg = 5.0\n", "[sampler].cfg = 5.0", "takes no guidance"),
    ('[prompt]\nnegative = "blurry"\n', "[prompt].negative", "never read without guidance"),
    ("[sampler]\ncfg_merge = true\n", "[sampler].cfg_merge", "takes no guidance"),
    ("[sampler]\ncfg_zero_star = true\n", "[sampler].cfg_zero_star", "takes no guidance"),
    ("[sampler]\nslg_blocks = [1]\n", "[sampler].slg_blocks", "skip-layer guidance"),
    ("[sampler]\nsliding_window_size = 3\nsliding_window_stride = 3\n", "[sampler].sliding_window_size", "block by block"),
    ('[sampler]\nstrength_schedule = "truncate"\n', "[sampler].strength_schedule", "its own step list"),
    ('[sampler.cache]\nmethod = "first-block"\nthreshold = 0.1\n', "[sampler.cache].method", 'use "none"'),
    ('[runtime]\ncompile = "blocks"\n', "[runtime].compile", 'use "none"'),
])
def test_a_setting_the_block_loop_would_ignore_is_refused_by_key(tmp_path, body, key, fragment):
    if body.startswith("[prompt]"):
        body, head = "", HEAD.replace('text = "waves"\n', 'text = "waves"\nnegative = "blurry"\n')
    else:
        head = HEAD
    problems = _problems(tmp_path, body, head)
    assert any(key in p and fragment in p and "r.toml" in p for p in problems), problems


@pytest.mark.parametrize(("frames", "fix"), [(25, "21 (2 blocks) or 33 (3 blocks)"), (5, "9 (1 block)")])
def test_frames_that_do_not_fill_whole_blocks_are_refused_with_the_fix(tmp_path, frames, fix):
    problems = _problems(tmp_path, f"[video]\nframes = {frames}\n")
    assert any(f"[video].frames = {frames}" in p and fix in p for p in problems), problems


def test_whole_blocks_and_the_bidirectional_way_validate(tmp_path):
    assert _load(tmp_path, "[video]\nframes = 33\n").values["video.frames"] == 33
    # DiffSynth's way: any 4n+1 frames, guidance and its options are the ordinary pipeline's
    v = _load(tmp_path, '[video]\nframes = 25\n[sampler]\nsolver = "euler"\ncfg = 3.0\n').values
    assert (v["sampler.solver"], v["video.frames"], v["sampler.cfg"]) == ("euler", 25, 3.0)


def test_another_family_cannot_take_the_block_causal_solver(tmp_path):
    head = 'schema = 1\nmodel = "wan2.1-t2v-14b"\n[prompt]\ntext = "waves"\n'
    problems = _problems(tmp_path, '[sampler]\nsolver = "krea-causal"\n', head)
    assert any('[sampler].solver = "krea-causal"' in p and "block-causal models only" in p for p in problems)
