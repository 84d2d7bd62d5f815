"""Krea Realtime's sampler: the authors' step list, denoise-then-re-noise steps with fresh seeded
noise, the context each block is given, and a block loop on a tiny block-causal Wan DiT."""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import random_state, tiny_config
from wanflow.errors import ModelInputError
from wanflow.models.causal_stream import CausalWan
from wanflow.models.dit import WanDiT
from wanflow.sampling import make_schedule
from wanflow.sampling.krea import (
    DIFFSYNTH_KREA,
    KreaSampling,
    denoise_block,
    sample_blocks,
    sigma_at,
    step_timesteps,
    training_grid,
    x0_from_velocity,
)

SHAPE = (1, 2, 12, 2, 3)  # (B, C, F, H, W): four blocks of three latent frames


def shifted(sigma: float, shift: float = 5.0) -> float:
    return shift * sigma / (1 + (shift - 1) * sigma)


def test_the_step_list_is_the_authors_warped_grid():
    assert torch.allclose(step_timesteps(5), torch.tensor([1000.0, 937.5, 833.3333, 625.0, 0.0]))
    # N = 4: linspace(1000, 0, 4).long() = 1000, 666, 333, 0 -> grid rows 0, 334, 667 and the padded 0
    assert torch.allclose(step_timesteps(4), torch.tensor([1000.0, 1000 * shifted(0.666), 1000 * shifted(0.333), 0]))
    half = [1000 * shifted(s) for s in (0.5, 0.375, 0.25, 0.125)] + [0.0]
    assert torch.allclose(step_timesteps(5, strength=0.5), torch.tensor(half))


def test_sigma_lookup_maps_t_zero_to_the_grids_last_sigma():
    sigmas, timesteps = training_grid(5.0)
    assert sigmas.shape == (1000,) and float(sigmas[0]) == 1.0
    assert torch.allclose(timesteps, sigmas * 1000)
    found = [sigma_at(float(t), 5.0) for t in step_timesteps(5)]
    assert found == pytest.approx([1.0, 0.9375, 0.833333, 0.625, shifted(0.001)], abs=1e-6)
    assert found[-1] > 0.0049


def test_x0_is_taken_in_float64():
    gen = torch.Generator().manual_seed(0)
    x, v = torch.randn(4096, generator=gen) * 30, torch.randn(4096, generator=gen) * 30
    sigma = sigma_at(833.3333, 5.0)
    assert torch.equal(x0_from_velocity(x, v, sigma), (x.double() - sigma * v.double()).float())
    assert not torch.equal(x0_from_velocity(x, v, sigma), x - sigma * v)  # fp32 would round differently


class FakeModel:
    """A block-causal model whose velocity sends every block's x0 to a known target video, and
    which records what the loop hands it."""

    def __init__(self, target: torch.Tensor, shift: float = 5.0):
        self.target, self.shift = target, shift
        self.contexts: list[torch.Tensor] = []
        self.calls: list[tuple[float, int, int]] = []  # (t, start_frame, block)
        self.first_inputs: list[torch.Tensor] = []

    def context_cache(self, clean):
        self.contexts.append(clean.clone())
        return clean.shape[2]

    def velocity(self, x, t, cache, start_frame):
        block = len(self.contexts)
        if not self.calls or self.calls[-1][2] != block:
            self.first_inputs.append(x.clone())
        assert cache == (None if block == 0 else start_frame)
        self.calls.append((float(t[0, 0]), start_frame, block))
        c = self.target[:, :, 3 * block:3 * block + 3]
        return (x - c) / sigma_at(float(t[0, 0]), self.shift)  # x0 = x - sigma * v = c


def target_video() -> torch.Tensor:
    return torch.arange(torch.Size(SHAPE).numel(), dtype=torch.float32).reshape(SHAPE) / 100


def test_each_block_sees_an_anchor_and_the_recent_clean_frames_at_positions_zero_on():
    target, anchors = target_video(), []

    def reanchor(history, recent):
        anchors.append((history.shape[2], recent))
        return torch.full_like(history[:, :, :1], -7.0)

    model = FakeModel(target)
    clean = sample_blocks(model, SHAPE, seed=0, reanchor=reanchor)
    assert torch.allclose(clean, target, atol=1e-5)
    assert [c[1] for c in model.calls] == [0] * 5 + [3] * 15  # 5 steps per block; the block after 3 context frames
    assert [c[0] for c in model.calls[:5]] == pytest.approx([1000, 937.5, 833.333, 625, 0], abs=1e-3)
    assert torch.equal(model.contexts[0], clean[:, :, 0:3])  # block 1: the first frame is still in reach
    for context, first in zip(model.contexts[1:], (6, 9)):  # blocks 2 and 3: re-anchored
        assert torch.equal(context[:, :, 1:], clean[:, :, first - 2:first]) and bool((context[:, :, 0] == -7).all())
    assert anchors == [(6, 2), (9, 2)]


def test_keep_first_frame_anchors_every_block_on_the_video_s_first_frame():
    model = FakeModel(target_video())
    clean = sample_blocks(model, SHAPE, seed=0, settings=KreaSampling(keep_first_frame=True, kv_cache_frames=4))
    assert torch.equal(model.contexts[2], torch.cat([clean[:, :, :1], clean[:, :, 6:9]], dim=2))


def test_a_step_denoises_then_renoises_with_fresh_seeded_noise():
    calls = []

    def velocity(x, t, cache, start_frame):
        calls.append(x.clone())
        return 0.5 * torch.tanh(x) + t[0, 0] / 1000

    model = type("M", (), {"velocity": staticmethod(velocity), "context_cache": None})()
    out = sample_blocks(model, (1, 2, 3, 2, 2), seed=11, settings=KreaSampling(steps=2))
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn((1, 3, 2, 2, 2), generator=gen).movedim(1, 2)  # drawn (B, F, C, H, W)
    fresh = torch.randn((1, 3, 2, 2, 2), generator=gen).movedim(1, 2)
    sigma = shifted(0.001)  # the step list is 1000, 0; t = 0 is looked up as the grid's last sigma
    x0 = noise.double() - 1.0 * (0.5 * torch.tanh(noise) + 1.0).double()
    x1 = (1 - sigma) * x0.float() + sigma * fresh
    expected = x1.double() - sigma * (0.5 * torch.tanh(x1)).double()
    assert torch.equal(calls[0], noise) and torch.allclose(calls[1], x1, atol=1e-6)
    assert torch.allclose(out, expected.float(), atol=1e-6)


def test_video_to_video_starts_from_the_input_noised_to_the_first_sigma():
    video = target_video() * -1
    model = FakeModel(target_video())
    sample_blocks(model, SHAPE, seed=2, settings=KreaSampling(strength=0.5, keep_first_frame=True), video=video)
    gen = torch.Generator().manual_seed(2)
    torch.randn((1, 12, 2, 2, 3), generator=gen)  # the text-to-video noise is drawn first, as the authors do
    mix = torch.randn((1, 12, 2, 2, 3), generator=gen).movedim(1, 2)
    sigma = shifted(0.5)
    assert torch.allclose(model.first_inputs[0], (1 - sigma) * video[:, :, :3] + sigma * mix[:, :, :3], atol=1e-6)
    assert model.calls[0][0] == pytest.approx(1000 * sigma, abs=1e-3)


def test_runs_repeat_per_seed_and_differ_across_seeds():
    def run(seed):
        model = FakeModel(torch.zeros(SHAPE))
        model.velocity = lambda x, t, cache, start: 0.3 * x - 0.1
        return sample_blocks(model, SHAPE, seed=seed, settings=KreaSampling(keep_first_frame=True))

    assert torch.equal(run(4), run(4))
    assert (run(4) - run(5)).abs().max() > 1e-2


def test_bad_settings_are_refused_before_the_first_model_call():
    model = FakeModel(target_video())
    with pytest.raises(ModelInputError, match="a multiple of the block"):
        sample_blocks(model, (1, 2, 10, 2, 3), seed=0, settings=KreaSampling(keep_first_frame=True))
    with pytest.raises(ModelInputError, match="outgrow a 3-frame cache.*reanchor"):
        sample_blocks(model, SHAPE, seed=0)
    with pytest.raises(ModelInputError, match="needs input video latents"):
        sample_blocks(model, SHAPE, seed=0, settings=KreaSampling(strength=0.5, keep_first_frame=True))
    with pytest.raises(ModelInputError, match=r"\[sampler\].steps = 0"):
        sample_blocks(model, SHAPE, seed=0, settings=KreaSampling(steps=0))
    assert model.calls == []
    sample_blocks(model, SHAPE[:2] + (6,) + SHAPE[3:], seed=0)  # two blocks fit the cache: no anchor needed


def test_diffsynth_runs_the_weights_bidirectionally_in_six_euler_steps_at_shift_20():
    assert (DIFFSYNTH_KREA.solver, DIFFSYNTH_KREA.steps, DIFFSYNTH_KREA.cfg, DIFFSYNTH_KREA.shift) == ("euler", 6, 1.0, 20.0)
    assert (DIFFSYNTH_KREA.frames, DIFFSYNTH_KREA.height, DIFFSYNTH_KREA.width, DIFFSYNTH_KREA.seed) == (81, 480, 832, 0)
    schedule = make_schedule(DIFFSYNTH_KREA.solver, DIFFSYNTH_KREA.steps, DIFFSYNTH_KREA.shift)
    expected = [shifted(1 - i / 6, 20.0) for i in range(6)] + [0.0]
    assert schedule.sigmas.tolist() == pytest.approx(expected, abs=1e-6)


@torch.no_grad()
def test_the_block_loop_on_a_tiny_causal_dit_is_the_hand_unrolled_loop():
    cfg = tiny_config()
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state(cfg))
    context = torch.randn(1, 5, cfg.text_dim, generator=torch.Generator().manual_seed(1))
    model = CausalWan(dit.eval(), context)
    settings = KreaSampling(steps=3)
    out = sample_blocks(model, (1, 16, 6, 4, 4), seed=8, settings=settings)
    assert out.shape == (1, 16, 6, 4, 4) and bool(out.isfinite().all())

    gen = torch.Generator().manual_seed(8)
    start = torch.randn((1, 6, 16, 4, 4), generator=gen).movedim(1, 2)

    def draw():
        return torch.randn((1, 3, 16, 4, 4), generator=gen).movedim(1, 2)

    steps = step_timesteps(3)
    first = denoise_block(model, start[:, :, :3], steps, 5.0, None, 0, draw)
    state = gen.get_state()
    second = denoise_block(model, start[:, :, 3:], steps, 5.0, model.context_cache(first), 3, draw)
    assert torch.allclose(out, torch.cat([first, second], dim=2), atol=1e-6)
    gen.set_state(state)  # the same noise, without the first block's cache
    no_cache = denoise_block(model, start[:, :, 3:], steps, 5.0, None, 0, draw)
    assert (no_cache - second).abs().max() > 1e-2  # the second block does read the first
