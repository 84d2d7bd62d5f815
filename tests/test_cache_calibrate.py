"""`wanflow cache calibrate`: the recipe's own model sampled uncached, fitted, handed back as TOML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomlkit
import tomllib
import torch

from tests.e2e._layout import write_models_root
from wanflow.cli import main
from wanflow.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "wanflow" / "assets" / "wanflow-tiny"
#: The tiny family at a few seconds a run: 32×32, 5 frames (2 latent frames), 6 Euler steps.
SMALL = {"video": {"width": 32, "height": 32, "frames": 5},
         "sampler": {"seed": 3, "steps": 6, "cfg": 3.0, "solver": "euler", "shift": 3.0}}
PROMPTS = ("a red ball bouncing on a wooden floor", "a green kite over a beach at noon")


def recipe(folder: Path, model: str = "wanflow-tiny", cache: str = "", tail: str = "", **sampler: object) -> Path:
    """A small recipe; ``cache``: TOML text for [sampler.cache]; ``tail``: TOML text after it;
    ``sampler``: more [sampler] keys."""
    doc = {"schema": 1, "name": "calib", "model": model, "prompt": {"text": PROMPTS[0], "negative": "blurry"},
           "video": SMALL["video"], "sampler": {**SMALL["sampler"], **sampler}}
    path = folder / "calib.toml"
    path.write_text(tomlkit.dumps(doc) + (f"[sampler.cache]\n{cache}" if cache else "") + tail,
                    encoding="utf-8")
    return path


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    return tmp_path


def prompts_file(folder: Path, *lines: str) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def calibrate(path: Path, capsys, *args: str) -> tuple[str, dict]:
    """Run the command; its printed fragment and that fragment parsed."""
    assert main(["cache", "calibrate", str(path), *args]) == 0
    out = capsys.readouterr().out
    return out, tomllib.loads(out)


def by_hand(runs: int, mode: str = "e") -> tuple[tuple[float, ...], tuple]:
    """docs/step-cache.md's Python procedure on the tiny model, as a user would write it."""
    from wanflow.models.dit_cache import cached_forward
    from wanflow.models.dit_loader import load_dit
    from wanflow.models.text_encoder import TextEncoder
    from wanflow.sampling import cfg_model, initial_noise, make_schedule, sample
    from wanflow.sampling.step_cache_calibration import Calibration

    dit = load_dit(TINY / "dit" / "diffusion_pytorch_model.safetensors")
    encoder = TextEncoder.from_checkpoint(TINY / "text_encoder" / "models_t5_umt5-xxl-enc-bf16.safetensors",
                                          TINY / "tokenizer", dtype=torch.float32)

    def encoded(text: str) -> torch.Tensor:
        out = encoder.encode([text])
        return out.embeddings[:, :int(out.lengths[0])]

    s = SMALL["sampler"]
    schedule = make_schedule(s["solver"], s["steps"], s["shift"])
    noise = initial_noise((1, 16, 2, 4, 4), s["seed"])  # 5 frames of 32×32 in the tiny VAE's latents
    calibration = Calibration(schedule.timesteps)
    negative = encoded("blurry")
    with torch.no_grad():
        for prompt in PROMPTS[:runs]:
            calibration.new_run()
            context = encoded(prompt)
            cond = lambda x, t, c=context: cached_forward(dit, x, t.reshape(1), c, cache=calibration, branch="cond")
            uncond = lambda x, t: cached_forward(dit, x, t.reshape(1), negative, cache=calibration,
                                                 branch="uncond")
            sample(s["solver"], cfg_model(cond, uncond, s["cfg"]), noise, schedule)
    return calibration.teacache_coefficients(mode), calibration.magcache_ratios()


def test_the_fragment_equals_a_calibration_by_hand_and_validates_in_the_recipe(offline, capsys):
    path = recipe(offline)
    more = prompts_file(offline, "# a comment", "", PROMPTS[1])
    out_file = offline / "fragment.toml"
    out, fragment = calibrate(path, capsys, "--runs", "2", "--prompts", str(more), "--out", str(out_file))
    assert out_file.read_text(encoding="utf-8") == out
    coefficients, ratios = by_hand(2)
    assert fragment["mode"] == "e" and fragment["coefficients"] == "calibrated"
    np.testing.assert_allclose(fragment["calibrated"], coefficients, rtol=1e-6)
    assert len(fragment["ratios_cond"]) == len(fragment["ratios_uncond"]) == SMALL["sampler"]["steps"]
    np.testing.assert_allclose(fragment["ratios_cond"], dict(ratios)["cond"], rtol=1e-6)
    np.testing.assert_allclose(fragment["ratios_uncond"], dict(ratios)["uncond"], rtol=1e-6)
    for method in ('method = "teacache"\ntarget_speedup = 2.0\n', 'method = "magcache"\nthreshold = 0.12\n'):
        pasted = recipe(offline, cache=method + out)
        cache = load_recipe(pasted).recipe.sampler.cache
        assert list(cache.calibrated) == fragment["calibrated"]
        assert list(cache.ratios_uncond) == fragment["ratios_uncond"]


def test_batched_guidance_is_calibrated_as_two_passes(offline, capsys):
    """cfg_merge's one batched pass would record a single "pair" branch: the command calibrates
    the two passes apart (the same numbers), so both MagCache lists exist and match by hand."""
    _, merged = calibrate(recipe(offline, cfg_merge=True), capsys, "--runs", "1")
    coefficients, ratios = by_hand(1)
    np.testing.assert_allclose(merged["calibrated"], coefficients, rtol=1e-4)
    for branch in ("cond", "uncond"):
        np.testing.assert_allclose(merged[f"ratios_{branch}"], dict(ratios)[branch], rtol=1e-5)


def test_without_guidance_only_the_conditional_pass_is_calibrated(offline, capsys):
    out, fragment = calibrate(recipe(offline, cfg=1.0), capsys, "--runs", "1")
    assert len(fragment["ratios_cond"]) == SMALL["sampler"]["steps"] and "ratios_uncond" not in fragment
    assert "# ratios_uncond: not recorded (cfg = 1 runs no uncond pass)" in out


def test_one_prompt_fits_other_numbers_than_two(offline, capsys):
    """The runs really are the prompts asked for: one run is a different fit from two."""
    path = recipe(offline)
    _, one = calibrate(path, capsys, "--runs", "1", "--set", "sampler.steps=6")
    coefficients, ratios = by_hand(1)
    np.testing.assert_allclose(one["calibrated"], coefficients, rtol=1e-6)
    np.testing.assert_allclose(one["ratios_cond"], dict(ratios)["cond"], rtol=1e-6)
    two, _ = by_hand(2)
    assert not np.allclose(one["calibrated"], two, rtol=1e-3)


@pytest.fixture(scope="module")
def a14b_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_root(tmp_path_factory.mktemp("models"), ("wan2.2-t2v-a14b",))


def test_a14b_calibrates_each_expert_on_its_own_steps(a14b_root, offline, monkeypatch, capsys):
    from wanflow.sampling import Expert, expert_segments, make_schedule
    from wanflow.steps.calibrate_fragment import fragment as render

    monkeypatch.setenv("WANFLOW_MODELS", str(a14b_root))
    path = recipe(offline, "wan2.2-t2v-a14b", boundary=0.9)
    result = run_api(path, runs=2, sets=("sampler.steps=8",))
    steps = 8
    schedule = make_schedule("euler", steps, 3.0)
    segments = {seg.expert: (seg.start, seg.stop) for seg in expert_segments(schedule, 0.9, 0)}
    high, low = result.experts
    assert (high.role, low.role) == ("dit_high_noise", "dit_low_noise")
    assert (high.start, high.stop) == segments[Expert.HIGH_NOISE] and (low.start, low.stop) == segments[Expert.LOW_NOISE]
    assert high.stop == low.start and 2 <= high.stop - high.start <= steps - 2  # both experts ran steps
    for e in (high, low):  # every consecutive pair of each expert's steps, both passes, both runs
        assert len(e.calibration.pairs["e"]) == (e.stop - e.start - 1) * 2 * 2
    own_high, own_low = (e.calibration.teacache_coefficients("e") for e in (high, low))
    assert not np.allclose(own_high, own_low, rtol=1e-3)  # two DiTs, two fits

    text = render(result, "e", load_recipe(path, sets=("sampler.steps=8",)).values)
    fragment = tomllib.loads(text)
    assert fragment["calibrated"] == list(own_low) and fragment["calibrated_high_noise"] == list(own_high)
    np.testing.assert_allclose(own_high, np.polyfit(*np.array(high.calibration.pairs["e"]).T, 4), rtol=1e-9)
    for branch in ("cond", "uncond"):
        want = [dict((high if s < high.stop else low).calibration.magcache_ratios())[branch][s] for s in range(steps)]
        assert fragment[f"ratios_{branch}"] == want
    assert f"calibrated_high_noise: dit_high_noise (steps 0-{high.stop - 1})" in text
    pasted = recipe(offline, "wan2.2-t2v-a14b", cache='method = "teacache"\nthreshold = 0.2\n' + text,
                    boundary=0.9)
    resolved = load_recipe(pasted)
    assert resolved.recipe.sampler.cache.coefficients == "calibrated"  # Wan2.2 takes it
    from wanflow.steps.denoise import cache_settings

    assert cache_settings(resolved.values, "dit_high_noise").calibrated == own_high  # each expert its own
    assert cache_settings(resolved.values, "dit_low_noise").calibrated == own_low


def test_the_a14b_command_prints_both_experts(a14b_root, offline, monkeypatch, capsys):
    monkeypatch.setenv("WANFLOW_MODELS", str(a14b_root))
    path = recipe(offline, "wan2.2-t2v-a14b", boundary=0.9)
    out, fragment = calibrate(path, capsys, "--runs", "2", "--set", "sampler.steps=8")
    assert "dit_high_noise (steps 0-" in out and "dit_low_noise (steps " in out
    assert len(fragment["ratios_cond"]) == 8


def run_api(path: Path, runs: int, sets: tuple[str, ...] = ()):
    """The steps layer's calibration over the first ``runs`` prompts, planned as the command does."""
    import json

    from wanflow.engine.cache import Cache
    from wanflow.engine.runner import plan_job
    from wanflow.plugins import get_registry
    from wanflow.steps.calibrate import calibrate as calibrate_plans

    with Cache() as cache:
        plans = []
        for prompt in PROMPTS[:runs]:
            resolved = load_recipe(path, sets=(*sets, f"prompt.text={json.dumps(prompt)}"))
            plans.append((prompt, plan_job(resolved, get_registry().pipeline(resolved.model), cache)))
        return calibrate_plans(plans, cache)


SKIPPING = {"cache": 'method = "first-block"\nthreshold = 0.05\n'}
SWEEP = {"tail": '[sweep]\n"sampler.seed" = [0, 1]\n'}


@pytest.mark.parametrize(("written", "args", "message"), [
    (SKIPPING, (), ["calib.toml: [sampler.cache].method = 'first-block' skips steps",
                    "--set sampler.cache.method=none"]),
    ({}, ("--set", "sampler.sliding_window_size=1", "--set", "sampler.sliding_window_stride=1"),
     ["[sampler].sliding_window_size: calibrate over the whole clip", "remove the sliding window settings"]),
    (SWEEP, (), ["calib.toml: [sweep] makes 2 jobs", "remove [sweep]"]),
    ({}, ("--runs", "0"), ["--runs 0: a calibration needs at least one run"]),
    ({}, ("--runs", "3", "--prompts", "PROMPTS"), ["--runs 3: only 2 distinct prompts", "--prompts"]),
    ({}, ("--prompts", "MISSING"), ["--prompts", "missing.txt: no such file"]),
    ({}, ("--prompts", "FOLDER"), ["folder: is a folder"]),
    ({}, ("--prompts", "EMPTY"), ["empty.txt: holds no prompt"]),
    ({}, ("--set", "sampler.steps=3", "--runs", "1"), ["calib.toml: [sampler].steps = 3", "give 4 step pairs",
                                                       "raise sampler.steps"]),
])
def test_bad_input_exits_2_with_its_message(offline, capsys, written, args, message):
    path = recipe(offline, **written)
    (offline / "folder").mkdir()
    (offline / "empty.txt").write_text("# only a comment\n\n", encoding="utf-8")
    files = {"PROMPTS": str(prompts_file(offline, PROMPTS[1])), "MISSING": str(offline / "missing.txt"),
             "FOLDER": str(offline / "folder"), "EMPTY": str(offline / "empty.txt")}
    assert main(["cache", "calibrate", str(path), *(files.get(a, a) for a in args)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for part in message:
        assert part in err


def test_a_cache_that_never_skips_may_stay(offline):
    from wanflow.steps.calibrate import calibration_problems

    assert calibration_problems(load_recipe(recipe(offline, cache='method = "first-block"\nthreshold = 0\n'))) == []
    assert len(calibration_problems(load_recipe(recipe(offline, **SKIPPING)))) == 1


def test_the_engine_cache_actions_refuse_a_recipe(offline, capsys):
    assert main(["cache", "stats", "calib.toml"]) == 2
    assert "did you mean `wanflow cache calibrate RECIPE`" in capsys.readouterr().err
    assert main(["cache", "gc", "--runs", "3"]) == 2
    assert "--runs only go with `wanflow cache calibrate RECIPE`" in capsys.readouterr().err
    assert main(["cache", "stats"]) == 0
