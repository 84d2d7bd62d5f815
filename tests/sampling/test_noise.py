"""Initial noise from an explicit seeded generator, and the start latent of video-to-video."""

from __future__ import annotations

import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling import denoise_start, draw_seed, initial_latent, initial_noise, make_schedule

SHAPE = (1, 16, 3, 6, 8)


def test_same_seed_same_noise_and_different_seeds_differ():
    a, b, c = initial_noise(SHAPE, 7), initial_noise(SHAPE, 7), initial_noise(SHAPE, 8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert abs(float(a.mean())) < 0.2 and 0.8 < float(a.std()) < 1.2


def test_noise_comes_from_a_generator_on_the_noise_device_in_fp32():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        noise = initial_noise(SHAPE, 3, noise_device="cpu")
    finally:
        torch.set_default_dtype(default)
    generator = torch.Generator("cpu").manual_seed(3)
    expected = torch.randn(SHAPE, generator=generator, dtype=torch.float32)
    assert noise.dtype == torch.float32 and noise.device == torch.device("cpu")
    assert torch.equal(noise, expected)


def test_global_rng_state_neither_used_nor_changed():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = initial_noise(SHAPE, 11)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    assert torch.equal(initial_noise(SHAPE, 11), first)


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, True, None])
def test_bad_seed_is_refused(bad):
    with pytest.raises(ModelInputError, match="seed"):
        initial_noise(SHAPE, bad)


def test_drawn_seeds_are_valid_and_vary():
    seeds = {draw_seed() for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds)


def test_full_strength_starts_from_pure_noise():
    schedule = make_schedule("unipc", 50, 5.0)
    noise, video = initial_noise(SHAPE, 1), torch.ones(SHAPE)
    start = denoise_start(50, 1.0)
    assert start == 0 and torch.equal(initial_latent(noise, schedule, start, video), noise)


def test_half_strength_noises_the_input_at_the_start_sigma():
    schedule = make_schedule("unipc", 50, 5.0)
    noise, video = initial_noise(SHAPE, 1), torch.randn(SHAPE)
    start = denoise_start(50, 0.5)
    assert start == 25
    sigma = float(schedule.sigmas[start])
    expected = (1 - sigma) * video + sigma * noise
    latent = initial_latent(noise, schedule, start, video)
    torch.testing.assert_close(latent, expected, rtol=0, atol=1e-6)


def test_late_start_without_an_input_is_refused():
    schedule = make_schedule("euler", 10, 5.0)
    with pytest.raises(ModelInputError, match="input latent"):
        initial_latent(initial_noise(SHAPE, 1), schedule, 5)
    with pytest.raises(ModelInputError, match="shape"):
        initial_latent(initial_noise(SHAPE, 1), schedule, 5, torch.zeros(1, 16, 3, 6, 4))
