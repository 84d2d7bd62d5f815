"""The VAE posterior of LongCat's held frames: the authors' sample or DiffSynth's mean, and its keys.

The numbers of the sample are checked by hand where each encode is (``test_longcat_runs``,
``_image``, ``_long_video``, ``_refine``, through ``tests/e2e/_posterior.py``); here: which
configuration samples, that every encode of a plan draws its own ε, and what the setting and the
seed re-run.
"""

from __future__ import annotations

import pytest

from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models
from tests.e2e.test_longcat_runs import AFTER, ENCODE, _recipe, videos  # noqa: F401 (the fixture)
from wanflow.engine.step import step_config


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _nodes(recipe, *sets):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    resolved = load_recipe(recipe, sets=sets)
    return {n.name: n for n in get_registry().pipeline(resolved.model).steps(resolved)}


def _sampled(nodes) -> dict[str, str]:
    """Encode node -> its stream, for the nodes that draw a posterior sample."""
    from wanflow.steps.longcat_posterior import KINDS

    return {name: n.step.stream for name, n in nodes.items()
            if n.step.kind in KINDS and n.step.posterior == "sample"}


def test_the_authors_solver_samples_and_diffsynth_s_takes_the_mean(longcat_env, videos, tmp_path):  # noqa: F811
    recipe = _recipe(tmp_path, videos["past"])
    authors = _nodes(recipe)
    assert _sampled(authors) == {ENCODE: ENCODE}
    assert "sampler.seed" in authors[ENCODE].params_read
    diffsynth = _nodes(recipe, 'sampler.solver="euler"', "sampler.shift=1.0")
    assert _sampled(diffsynth) == {}
    assert "sampler.seed" not in diffsynth[ENCODE].params_read
    # the mean holds neither field in its key: the encodes made before the setting keep theirs
    assert not {"posterior", "stream"} & set(step_config(diffsynth[ENCODE].step))
    assert {"posterior": "sample", "stream": ENCODE}.items() <= step_config(authors[ENCODE].step).items()
    # a written value wins over the solver's
    assert _sampled(_nodes(recipe, 'inputs.longcat_cond_latents="mean"')) == {}
    assert _sampled(_nodes(recipe, 'sampler.solver="euler"', "sampler.shift=1.0",
                           'inputs.longcat_cond_latents="sample"')) == {ENCODE: ENCODE}


def test_the_distilled_solver_samples_and_training_takes_the_mean():
    from wanflow.steps.longcat_posterior import posterior_mode

    values = {"inputs.longcat_cond_latents": None}
    assert posterior_mode({**values, "sampler.solver": "longcat-distill"}, training=False) == "sample"
    assert posterior_mode({**values, "sampler.solver": "longcat"}, training=True) == "mean"
    assert posterior_mode({**values, "sampler.solver": "euler"}, training=False) == "mean"


def test_every_encode_of_a_long_refined_video_draws_its_own_noise(longcat_env, tmp_path):
    import tomlkit

    recipe = _recipe(tmp_path, lora=[{"source": "modelscope:meituan-longcat/LongCat-Video",
                                      "file": "lora/refinement_lora.safetensors", "target": "refine"}])
    doc = tomlkit.parse(recipe.read_text())
    doc["inputs"] = {"longcat_segments": 1, "longcat_cond_frames": 5, "longcat_refine": True}
    recipe.write_text(tomlkit.dumps(doc))
    streams = _sampled(_nodes(recipe))
    assert set(streams) == {"encode-conditioning:segment-1", "encode-conditioning:longcat-refine-0",
                            "encode-conditioning:longcat-refine-1", "encode-conditioning:longcat-refine-cond-1"}
    assert all(name == stream for name, stream in streams.items())  # one stream per node: never a shared ε


def test_the_seed_re_runs_a_sampled_encode_and_never_the_mean(longcat_env, videos, tmp_path):  # noqa: F811
    sampled = _recipe(tmp_path, videos["past"])
    first = run(sampled, longcat_env)
    assert ENCODE in computed(first)
    assert computed(run(sampled, longcat_env, "sampler.seed=1")) == {ENCODE, *AFTER}
    mean = run(sampled, longcat_env, 'inputs.longcat_cond_latents="mean"')
    assert computed(mean) == {ENCODE, *AFTER}  # the setting is keyed
    assert mean.results[ENCODE].key != first.results[ENCODE].key
    assert computed(run(sampled, longcat_env, 'inputs.longcat_cond_latents="mean"', "sampler.seed=1")) == AFTER
