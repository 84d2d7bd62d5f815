"""LongCat-Video's distilled run end to end: the release's cfg_step LoRA in LongCat's own format,
read and merged, and the 16-step distilled schedule without guidance.

The denoise step equals the tiny DiT driven by hand with the LoRA applied as LongCat's own forward
applies it (unmerged: each targeted Linear's output plus alpha_scale times the LoRA's output, a
fused layer's down-projection split into one slice per output block); picking the distilled
solver brings its defaults (16 steps, guidance 1); a distilled recipe without the LoRA, with more
steps than the grid holds, or with a shift is refused before anything runs.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_longcat import LORA_ALPHA_SCALE, REPO, SHIFT, cfg_step_lora
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_longcat_runs import _executed
from wanflow.errors import WanflowError

FAMILY = "longcat-video"
LORA = {"source": f"modelscope:{REPO}", "file": "lora/cfg_step_lora.safetensors"}
HYPHEN = "___lorahyphen___"


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, lora=(LORA,), **sampler):
    tables = {"lora": [dict(x) for x in lora]} if lora else {}
    return write_recipe(tmp_path, FAMILY, video={"width": 16, "height": 16, "frames": 9},
                        sampler={"solver": "longcat-distill", "steps": 3, **sampler}, **tables)


def _longcat_lora_hooks(dit: torch.nn.Module, state: dict[str, torch.Tensor]) -> int:
    """LongCat's forward with a LoRA, on the plain DiT: every module the file names returns its
    output plus alpha_scale · [up_i(down(x) slice i)] over its output blocks i. Returns the count."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, role = key.removeprefix("lora" + HYPHEN).split(".", 1)
        parts.setdefault(module.replace(HYPHEN, "."), {})[role] = tensor
    for name, p in parts.items():
        ups = [p["lora_up.weight"]] if "lora_up.weight" in p else \
            [p[f"lora_up.blocks.{i}.weight"] for i in range(sum(r.startswith("lora_up.blocks.") for r in p))]
        down, scale = p["lora_down.weight"], float(p["alpha_scale"])

        def hook(module, inputs, out, ups=ups, down=down, scale=scale):
            slices = (inputs[0] @ down.T).chunk(len(ups), dim=-1)
            return out + scale * torch.cat([h @ up.T for h, up in zip(slices, ups)], dim=-1)

        dit.get_submodule(name).register_forward_hook(hook)
    return len(parts)


def test_the_distilled_run_equals_longcat_s_lora_forward_and_distilled_grid_by_hand(longcat_env, longcat_root,
                                                                                     tmp_path):
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity, longcat_schedule

    schedule = longcat_schedule(3, SHIFT, distill=True, enhance_hf=False)  # t 1000, 940 and 820 before the shift
    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    assert _longcat_lora_hooks(dit, cfg_step_lora()) == 14  # 7 modules in each of the 2 blocks
    for resolved, ex in _executed(_recipe(tmp_path)):
        assert resolved.values["sampler.cfg"] == 1.0 and not resolved.values["sampler.cfg_zero_star"]
        assert "encode-text:negative" not in {s.name for s in ex.plan.steps}  # no guidance: one pass a step
        context = ex.load("encode-text:positive")["context"]
        x = initial_noise((1, 16, 3, 2, 2), 0, noise_device="cpu")
        for i, t in enumerate(schedule.timesteps):
            with torch.no_grad():
                v = flow_velocity(dit(x, t.reshape(1), context))
            x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * v
        ours = ex.load("denoise")["latents"]
        assert ours.shape == x.shape
        assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5), (ours - x).abs().max()
        # the schedule is the distilled one: the authors' full grid at the same steps is another result
        full = longcat_schedule(3, SHIFT, enhance_hf=False)
        assert not torch.allclose(full.sigmas, schedule.sigmas)


def test_a_distilled_run_makes_its_video_and_is_keyed_apart_from_the_authors_sampler(longcat_env, tmp_path):
    recipe = _recipe(tmp_path)
    first = run(recipe, longcat_env)
    assert computed(first) == {"encode-text:positive", "denoise", "decode", "save", "save-metadata"}
    assert video_shape(first.archive / "outputs" / "video.mp4") == (9, 16, 16)
    assert computed(run(recipe, longcat_env)) == set()
    # the authors' full grid with the same LoRA and guidance: the same encodes, another denoise
    other = run(recipe, longcat_env, "sampler.solver=longcat", "sampler.cfg=1.0", "sampler.cfg_zero_star=false")
    assert computed(other) == {"denoise", "decode", "save", "save-metadata"}
    # the LoRA's strength is keyed
    (tmp_path / "half").mkdir()
    half = _recipe(tmp_path / "half", lora=({**LORA, "scale": 0.5},))
    assert "denoise" in computed(run(half, longcat_env))


def test_picking_the_distilled_solver_brings_its_steps_and_guidance(longcat_env, tmp_path):
    from wanflow.recipe import load_recipe

    path = _recipe(tmp_path)
    text = path.read_text().replace("steps = 3\n", "")
    path.write_text(text)
    resolved = load_recipe(path)
    assert resolved.values["sampler.steps"] == 16
    assert resolved.values["sampler.cfg"] == 1.0 and resolved.values["sampler.cfg_zero_star"] is False
    assert resolved.origins["sampler.steps"] == "family"
    written = load_recipe(path, sets=("sampler.cfg=2.0",))  # a written value wins
    assert written.values["sampler.cfg"] == 2.0 and written.values["sampler.steps"] == 16
    authors = load_recipe(path, sets=("sampler.solver=longcat",))  # the authors' sampler keeps its own
    assert authors.values["sampler.steps"] == 50 and authors.values["sampler.cfg"] == 4.0


@pytest.mark.parametrize("lora, sampler, message", [
    ((), {}, "add it as [[lora]]"),
    ((LORA,), {"steps": 51}, "use at most 50"),
    ((LORA,), {"shift": 3.0}, "takes its shift from the release's"),
])
def test_a_distilled_recipe_that_cannot_work_is_refused_before_anything_runs(longcat_env, tmp_path, lora,
                                                                                 sampler, message):
    from wanflow.recipe import load_recipe

    with pytest.raises(WanflowError) as err:
        load_recipe(_recipe(tmp_path, lora=lora, **sampler))
    assert message in str(err.value) and "longcat-video.toml" in str(err.value)


def test_the_rules_and_the_sampler_agree_on_the_distilled_grid():
    from wanflow.recipe import longcat_rules
    from wanflow.sampling.longcat import DISTILL_GRID

    assert longcat_rules._DISTILL_GRID == DISTILL_GRID


def test_the_lora_reads_as_longcat_s_forward_applies_it():
    """ΔW of each module is alpha_scale · [up_i @ down slice i] stacked over its output blocks."""
    from wanflow.lora import read_lora

    state = cfg_step_lora()
    lora = read_lora(state)
    assert lora.dialect == "longcat" and lora.unread == ()
    qkv = f"lora{HYPHEN}blocks{HYPHEN}1{HYPHEN}attn{HYPHEN}qkv."
    down = state[qkv + "lora_down.weight"]
    rank = down.shape[0] // 3
    expected = torch.cat([state[qkv + f"lora_up.blocks.{i}.weight"] @ down[i * rank:(i + 1) * rank]
                          for i in range(3)]) * LORA_ALPHA_SCALE
    assert torch.equal(lora.deltas["blocks.1.attn.qkv.weight"].tensor(), expected)
