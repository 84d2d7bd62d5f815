"""Every official family end to end on tiny weights in its ModelScope layout: video, hits, re-keying."""

from __future__ import annotations

import json

import pytest

from tests.e2e._layout import REPOS
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import write_recipe
from wanflow.output import read_mp4_metadata

#: The inputs each family needs (the others take text only).
IMAGE_INPUTS = {
    "wan2.1-i2v-14b-480p": ("first",), "wan2.1-i2v-14b-720p": ("first",),
    "wan2.1-flf2v-14b-720p": ("first", "last"), "wan2.2-i2v-a14b": ("first",), "wan2.2-ti2v-5b": ("first",),
}
AFTER_SEED = {"denoise", "decode", "save", "save-metadata"}
#: The smallest sizes each VAE takes (16 px per latent token for Wan2.1, 32 for Wan2.2).
SIZE = {"wan2.2-ti2v-5b": 32}
#: T2V-A14B's shift 12 keeps both steps of 2 above the boundary; shift 5 makes the experts switch.
EXTRA = {"wan2.2-t2v-a14b": {"shift": 5.0}}


def test_every_official_family_is_covered():
    from wanflow.families import wan

    assert sorted(REPOS) == sorted(f.name for f in wan.families())
    assert len(REPOS) == 8


@pytest.mark.parametrize("family", sorted(REPOS))
def test_family_end_to_end(family, env, images, tmp_path):
    names = dict(zip(("image", "end_image"), IMAGE_INPUTS.get(family, ())))
    size = SIZE.get(family, 16)
    recipe = write_recipe(tmp_path, family, {k: images[v] for k, v in names.items()},
                          video={"width": size, "height": size}, sampler=EXTRA.get(family, {}))

    first = run(recipe, env)
    assert computed(first) == set(first.results)
    video = first.archive / "outputs" / "video.mp4"
    assert video_shape(video) == (5, size, size)
    meta = read_mp4_metadata(video)
    assert meta["seed"] == 0
    assert json.loads((first.archive / "outputs" / "video.json").read_text()) == meta

    again = run(recipe, env)
    assert computed(again) == set()
    assert again.lock["outputs"] == first.lock["outputs"]

    assert computed(run(recipe, env, "sampler.seed=1")) == AFTER_SEED
    assert computed(run(recipe, env, "prompt.negative=grainy")) == {"encode-text:negative", *AFTER_SEED}


def test_wanflow_models_sees_every_family_present(env, capsys):
    from wanflow.cli import main

    assert main(["models"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.strip()]
    present = {name for name, state in rows if state == "present"}
    assert present == {*REPOS, "wanflow-tiny"}
