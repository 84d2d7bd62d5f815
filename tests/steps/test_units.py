"""The small pieces of the steps: the I2V frame mask, TI2V token timesteps and the runtime."""

from __future__ import annotations

import pytest
import torch

from wanflow.steps import runtime
from wanflow.steps.conditioning import frame_mask
from wanflow.steps.denoise import _token_timesteps, expert_cfgs


def test_i2v_mask_marks_the_first_frame_four_times_then_nothing():
    mask = frame_mask(9, 2, 3, last=False)  # 9 frames -> 3 latent frames
    assert mask.shape == (4, 3, 2, 3)
    assert mask[:, 0].eq(1).all() and mask[:, 1:].eq(0).all()


def test_flf2v_mask_also_marks_the_last_pixel_frame():
    mask = frame_mask(9, 1, 1, last=True)[:, :, 0, 0]  # (4 channels, 3 latent frames)
    # latent frame 2 covers pixel frames 5..8; only frame 8 (the last) is given
    assert mask.T.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_ti2v_tokens_of_the_first_frame_get_timestep_zero():
    x = torch.zeros(1, 48, 3, 4, 6)  # 3 latent frames of 2×3 tokens
    t = _token_timesteps(x, torch.tensor(700), (1, 2, 2))
    assert t.shape == (1, 18)
    assert t[0, :6].eq(0).all() and t[0, 6:].eq(700).all()


def test_expert_guidance_falls_back_to_cfg():
    params, experts = {"sampler.cfg": 3.0, "sampler.cfg_high_noise": None}, ("dit_high_noise", "dit_low_noise")
    assert expert_cfgs(params, experts) == {"dit_high_noise": 3.0, "dit_low_noise": 3.0}
    params["sampler.cfg_high_noise"] = 4.0
    assert expert_cfgs(params, experts) == {"dit_high_noise": 4.0, "dit_low_noise": 3.0}
    assert expert_cfgs(params, ("dit",)) == {"dit": 3.0}


@pytest.mark.parametrize(("cuda", "device", "dtype"), [(True, "cuda", "bf16"), (False, "cpu", "fp32")])
def test_auto_runtime_follows_the_machine(monkeypatch, cuda, device, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    values = {"runtime.device": "auto", "runtime.dtype": "auto", "runtime.attention": "sdpa",
              "sampler.noise_device": "cpu"}
    assert runtime.describe_runtime(values) == {"device": device, "dtype": dtype, "attention": "sdpa",
                                                "noise_device": "cpu", "cpu_threads": "1"}
    assert runtime.runtime_of({**values, "runtime.dtype": "fp16"}) == (device, torch.float16)


@pytest.mark.parametrize(("native", "compute"), [(False, "fp32"), (True, "bf16")])
def test_a_cpu_bf16_run_records_what_it_multiplies_in(monkeypatch, native, compute):
    from wanflow.models import precision

    monkeypatch.setattr(precision, "cpu_has_native", lambda _: native)
    values = {"runtime.device": "cpu", "runtime.dtype": "bf16", "runtime.attention": "sdpa",
              "sampler.noise_device": "cpu"}
    assert runtime.describe_runtime(values)["cpu_compute"] == compute  # part of every step key
    assert "cpu_compute" not in runtime.describe_runtime({**values, "runtime.dtype": "fp32"})
