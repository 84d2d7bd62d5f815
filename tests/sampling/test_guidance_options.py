"""Guidance options: batched passes, CFG-Zero*, skip-layer guidance, and their validation."""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import random_state, tiny_config
from wanflow.errors import ModelInputError
from wanflow.models.dit import PreparedContext, WanDiT
from wanflow.sampling import cfg_model, make_schedule, sample
from wanflow.sampling.guidance import (
    Guidance,
    Passes,
    SkipLayerGuidance,
    check_slg,
    check_zero_star,
    guide_zero_star,
    guided_model,
    step_index,
)


def pair_of(cond, uncond):
    """A batch-2 model function made of two toy models (rows [cond; uncond])."""

    def pair(x2, t):
        half = x2.shape[0] // 2
        return torch.cat([cond(x2[:half], t), uncond(x2[half:], t)])

    return pair


# ----------------------------------------------------------------------------- plain and batched


def test_guided_model_without_options_is_plain_cfg_bit_for_bit(latent, toy):
    schedule = make_schedule("unipc", 8, 5.0)
    plain = sample("unipc", cfg_model(toy(seed=1), toy(seed=2), 4.5), latent, schedule).x
    passes = Passes(cond=toy(seed=1), uncond=toy(seed=2))
    guided = sample("unipc", guided_model(passes, Guidance(cfg=4.5), schedule), latent, schedule).x
    assert torch.equal(guided, plain)


def test_batched_guidance_calls_one_pair_per_step_and_matches(latent, toy):
    cond, uncond = toy(seed=1), toy(seed=2)
    calls: list[int] = []

    def pair(x2, t):
        calls.append(x2.shape[0])
        return pair_of(cond, uncond)(x2, t)

    schedule = make_schedule("dpm++", 5, 5.0)
    batched = guided_model(Passes(cond=toy(seed=9), pair=pair), Guidance(cfg=4.0, batched=True), schedule)
    separate = guided_model(Passes(cond=toy(seed=1), uncond=toy(seed=2)), Guidance(cfg=4.0), schedule)
    assert torch.equal(sample("dpm++", batched, latent, schedule).x, sample("dpm++", separate, latent, schedule).x)
    assert calls == [2] * 5


class DitPasses:
    """A tiny 3-block DiT with a 7-token prompt and a 30-token negative prompt, bound as passes."""

    def __init__(self, variant: str):
        cfg = tiny_config(variant, num_layers=3)
        self.dit = WanDiT(cfg)
        self.dit.load_state_dict(random_state(cfg, seed=3))
        self.dit.eval()
        g = torch.Generator().manual_seed(4)
        channels = cfg.out_dim
        self.x = torch.randn(1, channels, 3, 8, 8, generator=g)
        self.y = torch.randn(1, cfg.in_dim - channels, 3, 8, 8, generator=g) if cfg.in_dim != channels else None
        clip = torch.randn(1, cfg.image_len, 1280, generator=g) if cfg.clip else None
        with torch.no_grad():
            self.contexts = {"pos": self.dit.prepare_context(torch.randn(1, 7, cfg.text_dim, generator=g), clip),
                             "neg": self.dit.prepare_context(torch.randn(1, 30, cfg.text_dim, generator=g), clip)}
        # both prompts are zero-padded to 512 tokens by prepare_context: the halves join as they are
        pos, neg = self.contexts["pos"].kv, self.contexts["neg"].kv
        self.both = PreparedContext(tuple(tuple(torch.cat([p, n]) for p, n in zip(kp, kn))
                                          for kp, kn in zip(pos, neg)), 2)

    def bound(self, context, skip=()):
        """(x, t) → velocity with this context; x may hold 2 rows for the joined context."""

        def velocity(x, t):
            y = None if self.y is None else self.y.repeat(x.shape[0], 1, 1, 1, 1)
            with torch.no_grad():
                return self.dit(x, t.reshape(1).repeat(x.shape[0]), context, y=y, skip_blocks=skip).float()

        return velocity

    def passes(self, skip=None):
        slg_pass = None if skip is None else self.bound(self.contexts[skip.prompt], skip.blocks)
        return Passes(cond=self.bound(self.contexts["pos"]), uncond=self.bound(self.contexts["neg"]),
                      pair=self.bound(self.both), skip=slg_pass)


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_batched_dit_forward_equals_two_forwards_within_fp32_rounding(variant):
    # Not bit-identical on the CPU: the time embedding's GEMM takes another kernel for 2 rows
    # than for 1 (GEMV); measured max |Δ| ≈ 4e-6 of outputs ~7. Tolerance: 1e-5 of max |v|.
    dit = DitPasses(variant)
    passes, x = dit.passes(), dit.x
    schedule = make_schedule("euler", 4, 5.0)
    batched = guided_model(passes, Guidance(cfg=5.0, batched=True), schedule)
    separate = guided_model(passes, Guidance(cfg=5.0), schedule)
    t = schedule.timesteps[1]
    one, two = batched(x, t), separate(x, t)
    assert (one - two).abs().max() <= 1e-5 * two.abs().max()
    assert (passes.cond(x, t) - passes.uncond(x, t)).abs().max() > 0.1  # the prompts really differ
    a, b = sample("euler", batched, x, schedule).x, sample("euler", separate, x, schedule).x
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


# ----------------------------------------------------------------------------- CFG-Zero*


def direct_zero_star(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """The paper's formula written out sample by sample, in float64."""
    out = []
    for c, u in zip(cond.double(), uncond.double()):
        s = torch.dot(c.flatten(), u.flatten()) / (torch.dot(u.flatten(), u.flatten()) + 1e-8)
        out.append(u * s + cfg * (c - u * s))
    return torch.stack(out)


def test_cfg_zero_star_equals_the_formula_per_sample():
    g = torch.Generator().manual_seed(5)
    cond = torch.randn(2, 4, 3, 4, 5, generator=g)
    uncond = 0.7 * cond + 0.5 * torch.randn(2, 4, 3, 4, 5, generator=g)
    uncond[1] *= -2.0  # samples need their own scale: s* < 0 for the second
    ours = guide_zero_star(cond, uncond, 5.0)
    torch.testing.assert_close(ours.double(), direct_zero_star(cond, uncond, 5.0), rtol=1e-5, atol=1e-5)
    assert (ours - (uncond + 5.0 * (cond - uncond))).abs().max() > 0.1  # not plain CFG


def test_zero_init_outputs_zero_and_skips_the_model_then_guides_with_zero_star(latent, toy):
    cond, uncond = toy(seed=1), toy(seed=2)
    schedule = make_schedule("euler", 6, 5.0)
    guidance = Guidance(cfg=4.0, zero_star=True, zero_init_steps=2)
    guided = guided_model(Passes(cond=cond, uncond=uncond), guidance, schedule)
    ref_cond, ref_uncond = toy(seed=1), toy(seed=2)
    for i, t in enumerate(schedule.timesteps):
        v = guided(latent, t)
        if i < 2:
            assert torch.equal(v, torch.zeros_like(latent))
        else:
            expected = direct_zero_star(ref_cond(latent, t), ref_uncond(latent, t), 4.0)
            torch.testing.assert_close(v.double(), expected, rtol=1e-5, atol=1e-5)
    evaluated = [float(t) for t in schedule.timesteps[2:]]
    assert cond.calls == evaluated and uncond.calls == evaluated


def test_zero_init_beyond_the_schedule_is_refused(toy):
    with pytest.raises(ModelInputError, match=r"\[sampler\].cfg_zero_init_steps = 6: the schedule has 6 steps"):
        guided_model(Passes(cond=toy(), uncond=toy(seed=2)), Guidance(cfg=4.0, zero_star=True, zero_init_steps=6),
                     make_schedule("euler", 6, 5.0))


# ----------------------------------------------------------------------------- skip-layer guidance


def test_steps_are_read_from_the_timestep_for_every_solver():
    for solver in ("euler", "unipc", "dpm++"):
        schedule = make_schedule(solver, 30, 5.0)
        assert [step_index(schedule, t) for t in schedule.timesteps] == list(range(30))


def test_slg_window_is_inclusive_like_the_wrapper():
    slg = SkipLayerGuidance(blocks=(1,), scale=1.0, start=0.2, end=0.5, mode="extra")
    assert [i for i in range(10) if slg.active(i, 10)] == [2, 3, 4, 5]
    assert not SkipLayerGuidance(blocks=(1,), scale=0.0, start=0.0, end=1.0, mode="extra").active(3, 10)


@pytest.mark.parametrize("mode", ["extra", "uncond"])
def test_slg_at_scale_zero_is_plain_cfg_and_never_runs_the_skip_pass(latent, toy, mode):
    schedule = make_schedule("unipc", 6, 5.0)
    skip = toy(seed=3)
    slg = SkipLayerGuidance(blocks=(1,), scale=0.0, start=0.0, end=1.0, mode=mode)
    guided = guided_model(Passes(cond=toy(seed=1), uncond=toy(seed=2), skip=skip), Guidance(cfg=5.0, slg=slg),
                          schedule)
    plain = sample("unipc", cfg_model(toy(seed=1), toy(seed=2), 5.0), latent, schedule).x
    assert torch.equal(sample("unipc", guided, latent, schedule).x, plain)
    assert skip.calls == []


def test_slg_formulas(latent, toy):
    schedule = make_schedule("euler", 4, 5.0)
    t = schedule.timesteps[1]
    c, u, s = (toy(seed=k)(latent, t) for k in (1, 2, 3))
    cfg = u + 5.0 * (c - u)

    def run(mode, scale):
        slg = SkipLayerGuidance(blocks=(1,), scale=scale, start=0.0, end=1.0, mode=mode)
        passes = Passes(cond=toy(seed=1), uncond=toy(seed=2), skip=toy(seed=3))
        return guided_model(passes, Guidance(cfg=5.0, slg=slg), schedule)(latent, t)

    torch.testing.assert_close(run("extra", 3.0), cfg + 3.0 * (c - s), rtol=1e-6, atol=1e-6)  # SD3.5
    torch.testing.assert_close(run("uncond", 1.0), s + 5.0 * (c - s), rtol=1e-6, atol=1e-6)  # the wrapper
    blended = u + 0.25 * (s - u)
    torch.testing.assert_close(run("uncond", 0.25), blended + 5.0 * (c - blended), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("mode", "expected"), [("extra", [14, 12, 14]), ("uncond", [12, 10, 12])])
def test_slg_really_skips_its_blocks_in_its_steps(mode, expected):
    dit = DitPasses("t2v")
    calls = [0, 0, 0]
    for i, block in enumerate(dit.dit.blocks):
        block.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    slg = SkipLayerGuidance(blocks=(1,), scale=1.0, start=0.2, end=0.6, mode=mode)  # steps 2 and 3 of 6
    schedule = make_schedule("euler", 6, 5.0)
    sample("euler", guided_model(dit.passes(skip=slg), Guidance(cfg=5.0, slg=slg), schedule), dit.x, schedule)
    assert calls == expected  # 6 steps × 2 passes, plus (extra) or instead of (uncond) 2 skip passes


def test_dit_skip_blocks_default_is_the_full_model_and_refuses_unknown_blocks():
    made = DitPasses("t2v")
    dit, x = made.dit, made.x
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = dit(x, t, ctx)
        assert torch.equal(dit(x, t, ctx, skip_blocks=()), full)
        assert (dit(x, t, ctx, skip_blocks=(1,)) - full).abs().max() > 1e-3
        for bad in ((3,), (-1,), (True,)):
            with pytest.raises(ModelInputError, match="skip_blocks"):
                dit(x, t, ctx, skip_blocks=bad)


def test_missing_passes_are_refused_before_sampling(latent, toy):
    schedule = make_schedule("euler", 4, 5.0)
    with pytest.raises(ModelInputError, match=r"\['pair'\]"):
        guided_model(Passes(cond=toy()), Guidance(cfg=4.0, batched=True), schedule)
    slg = SkipLayerGuidance(blocks=(1,), scale=2.0, start=0.0, end=1.0, mode="extra")
    with pytest.raises(ModelInputError, match=r"\['uncond', 'skip'\]"):
        guided_model(Passes(cond=toy()), Guidance(cfg=4.0, slg=slg), schedule)
    # at cfg = 1 there is no negative pass for "uncond" mode to alter: only the prompt runs
    inert = SkipLayerGuidance(blocks=(1,), scale=1.0, start=0.0, end=1.0, mode="uncond")
    cond = toy(seed=1)
    v = guided_model(Passes(cond=cond), Guidance(cfg=1.0, slg=inert), schedule)(latent, schedule.timesteps[0])
    assert torch.equal(v, toy(seed=1)(latent, schedule.timesteps[0])) and len(cond.calls) == 1


# ----------------------------------------------------------------------------- validation


def messages(problems):
    return {p.key: p.message for p in problems}


def test_zero_star_checks_name_the_setting_and_the_fix():
    assert check_zero_star(True, 1, 50, (5.0,)) == []
    assert "at most 49" in messages(check_zero_star(True, 50, 50, (5.0,)))["sampler.cfg_zero_init_steps"]
    assert "integer ≥ 0" in messages(check_zero_star(True, -1, 50, (5.0,)))["sampler.cfg_zero_init_steps"]
    assert "cfg_zero_star = true" in messages(check_zero_star(False, 2, 50, (5.0,)))["sampler.cfg_zero_init_steps"]
    assert "cfg = 1 runs none" in messages(check_zero_star(True, 0, 50, (1.0, 1.0)))["sampler.cfg_zero_star"]
    assert check_zero_star(True, 0, 50, (1.0, 3.0)) == []  # A14B: one expert guides


def test_slg_checks_name_the_setting_and_the_fix():
    assert check_slg((9,), 3.0, 0.0, 0.3, "extra", (5.0,), num_layers=30) == []
    found = messages(check_slg((9, 30), 3.0, 0.0, 0.3, "extra", (5.0,), num_layers=30))
    assert "numbered 0..29: drop [30]" in found["sampler.slg_blocks"]
    assert "distinct" in messages(check_slg((9, 9), 1.0, 0.0, 1.0, "extra", (5.0,)))["sampler.slg_blocks"]
    assert "distinct" in messages(check_slg((), 1.0, 0.0, 1.0, "extra", (5.0,)))["sampler.slg_blocks"]
    found = messages(check_slg((1,), -1.0, 0.8, 0.3, "sometimes", (5.0,)))
    assert set(found) == {"sampler.slg_scale", "sampler.slg_end", "sampler.slg_mode"}
    assert "use an end ≥ 0.8" in found["sampler.slg_end"]
    assert "[0, 1]" in messages(check_slg((1,), 1.0, 0.0, 1.5, "extra", (5.0,)))["sampler.slg_end"]
    assert "cfg = 1" in messages(check_slg((1,), 1.0, 0.0, 1.0, "uncond", (1.0,)))["sampler.slg_mode"]


def test_bad_settings_are_refused_when_built():
    with pytest.raises(ModelInputError, match=r"\[sampler\].slg_start = -0.1"):
        Guidance(cfg=5.0, slg=SkipLayerGuidance(blocks=(1,), scale=1.0, start=-0.1, end=1.0, mode="extra"))
    with pytest.raises(ModelInputError, match=r"\[sampler\].cfg_zero_init_steps = 2: zero-init belongs"):
        Guidance(cfg=5.0, zero_init_steps=2)
