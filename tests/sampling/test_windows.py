"""Sliding windows over latent frames: DiffSynth's layout and blend, RoPE restarting per window."""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import random_state, tiny_config
from tests.sampling.conftest import ToyModel
from wanflow.errors import ModelInputError
from wanflow.models.dit import WanDiT
from wanflow.sampling import make_schedule, sample
from wanflow.sampling.guidance import Guidance, Passes, guided_model
from wanflow.sampling.windows import (
    blend_weights,
    check_windows,
    window_spans,
    windowed_model,
)


def diffsynth_spans(frames: int, size: int, stride: int) -> list[tuple[int, int]]:
    """DiffSynth's loop as it reads: start every stride, skip once the previous window hit the end."""
    spans = []
    for t in range(0, frames, stride):
        if t - stride >= 0 and t - stride + size >= frames:
            continue
        spans.append((t, min(t + size, frames)))
    return spans


def tiny_dit(variant: str) -> tuple[WanDiT, dict]:
    cfg = tiny_config(variant)
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state(cfg, seed=7))
    dit.eval()
    g = torch.Generator().manual_seed(8)
    channels = cfg.out_dim
    data = {"x": torch.randn(1, channels, 7, 4, 4, generator=g)}
    data["y"] = torch.randn(1, cfg.in_dim - channels, 7, 4, 4, generator=g) if cfg.in_dim != channels else None
    clip = torch.randn(1, cfg.image_len, 1280, generator=g) if cfg.clip else None
    with torch.no_grad():
        data["context"] = dit.prepare_context(torch.randn(1, 9, cfg.text_dim, generator=g), clip)
    return dit, data


def window_fn(dit: WanDiT, data: dict, calls: list):
    """The DiT on some frames of the clip, with y cut to the same frames."""

    def run(x, t, frames):
        calls.append((frames.start, frames.stop))
        y = None if data["y"] is None else data["y"][:, :, frames]
        with torch.no_grad():
            return dit(x, t.reshape(1), data["context"], y=y).float()

    return run


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
@pytest.mark.parametrize("size", [7, 12])
def test_a_window_covering_the_clip_is_the_full_pass_bit_for_bit(variant, size):
    dit, data = tiny_dit(variant)
    calls: list = []
    t = torch.tensor(640.0)
    windowed = windowed_model(window_fn(dit, data, calls), size, 3)(data["x"], t)
    with torch.no_grad():
        full = dit(data["x"], t.reshape(1), data["context"], y=data["y"]).float()
    assert torch.equal(windowed, full)
    assert calls == [(0, 7)]


def test_each_window_is_its_own_clip_with_rope_from_frame_zero():
    dit, data = tiny_dit("i2v")
    calls: list = []
    t = torch.tensor(640.0)
    out = windowed_model(window_fn(dit, data, calls), 4, 3)(data["x"], t)  # windows [0, 4) and [3, 7)
    assert calls == [(0, 4), (3, 7)]
    with torch.no_grad():
        first = dit(data["x"][:, :, 0:4], t.reshape(1), data["context"], y=data["y"][:, :, 0:4])
        second = dit(data["x"][:, :, 3:7], t.reshape(1), data["context"], y=data["y"][:, :, 3:7])
    assert torch.equal(out[:, :, 0:3], first[:, :, 0:3])  # frames only the first window covers
    assert torch.equal(out[:, :, 4:7], second[:, :, 1:4])  # the second one restarts RoPE at frame 3
    torch.testing.assert_close(out[:, :, 3], 0.5 * first[:, :, 3] + 0.5 * second[:, :, 0], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        full = dit(data["x"], t.reshape(1), data["context"], y=data["y"])
    assert (out - full).abs().max() > 1e-3  # windows are not the full pass: attention spans fewer frames


@pytest.mark.parametrize("frames", range(1, 25))
def test_windows_follow_diffsynth_and_cover_every_frame(frames):
    for size in range(1, 12):
        for stride in range(1, size + 1):
            spans = window_spans(frames, size, stride)
            assert spans == diffsynth_spans(frames, size, stride)
            covered = torch.zeros(frames, dtype=torch.bool)
            for a, b in spans:
                covered[a:b] = True
            assert covered.all() and spans[-1][1] == frames


def test_known_layouts_and_ramps():
    assert window_spans(21, 9, 6) == [(0, 9), (6, 15), (12, 21)]
    assert window_spans(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert window_spans(7, 4, 2) == [(0, 4), (2, 6), (4, 7)]
    assert window_spans(5, 9, 6) == [(0, 5)]
    weights = blend_weights(21, 9, 6)  # a 3-frame ramp: (i + ½)/3 = 1/6, 1/2, 5/6
    ramp = torch.tensor([1 / 6, 1 / 2, 5 / 6])
    torch.testing.assert_close(weights[0][1], torch.cat([torch.ones(6), ramp.flip(0)]))
    torch.testing.assert_close(weights[1][1], torch.cat([ramp, torch.ones(3), ramp.flip(0)]))
    torch.testing.assert_close(weights[2][1], torch.cat([ramp, torch.ones(6)]))


@pytest.mark.parametrize(("frames", "size", "stride"), [(21, 9, 6), (21, 8, 3), (13, 5, 2), (10, 4, 4), (9, 6, 1)])
def test_blend_weights_sum_to_one_per_frame(frames, size, stride):
    total = torch.zeros(frames)
    for frames_of, weights in blend_weights(frames, size, stride):
        assert (weights > 0).all()
        total[frames_of] += weights
    torch.testing.assert_close(total, torch.ones(frames), rtol=0, atol=1e-6)


def test_toy_windows_blend_with_those_weights():
    # window k returns the constant k + 1: each frame gets the weighted mean of its windows
    def constant(x, t, frames):
        return torch.full_like(x, float(frames.start // 3 + 1))

    out = windowed_model(constant, 4, 3)(torch.zeros(1, 2, 10, 1, 1), torch.tensor(0.0))
    # windows [0, 4) [3, 7) [6, 10), one-frame ramps of 0.5 at frames 3 and 6
    expected = torch.tensor([1, 1, 1, 1.5, 2, 2, 2.5, 3, 3, 3])
    assert torch.equal(out[0, 0, :, 0, 0], expected) and torch.equal(out[0, 1, :, 0, 0], expected)


def test_frames_under_more_than_two_windows_are_normalised():
    # size 4, stride 1: windows [0,4) [1,5) [2,6) [3,7), ramps of 3 frames (1/6, 1/2, 5/6) that
    # overlap inside the middle windows (the falling ramp overwrites, as in DiffSynth); window k
    # returns k + 1, so frame 3 gets (1·1/6 + 2·1/2 + 3·5/6 + 4·1/6) / (10/6) = 2.6
    def constant(x, t, frames):
        return torch.full_like(x, float(frames.start + 1))

    out = windowed_model(constant, 4, 1)(torch.zeros(1, 1, 7, 1, 1), torch.tensor(0.0))
    expected = torch.tensor([1, 7 / 6, 16 / 9, 2.6, 23 / 7, 23 / 6, 4])
    torch.testing.assert_close(out[0, 0, :, 0, 0], expected, rtol=1e-6, atol=0)


class FrameLocalToy:
    """The sampler tests' toy as a window function: per voxel only, its pattern cut to the frames."""

    def __init__(self, seed: int):
        self.toy = ToyModel(seed)
        self.calls: list[tuple[int, int]] = []

    def window(self, x: torch.Tensor, t: torch.Tensor, frames: slice) -> torch.Tensor:
        self.calls.append((frames.start, frames.stop))
        s = float(t) / 1000.0
        mixed = torch.einsum("oc,bcthw->bothw", self.toy.mix, x)  # (B, C, T, H, W)
        return mixed * (0.5 + s) + 0.3 * torch.tanh(x) + (s - 0.4) * self.toy.pattern[:, :, frames]

    def full(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.window(x, t, slice(0, x.shape[2]))


def test_a_frame_local_model_is_unchanged_by_windows(latent):
    # every window agrees on the frames they share, so the blend gives those values back
    model = FrameLocalToy(seed=1)
    schedule = make_schedule("unipc", 5, 5.0)
    windowed = sample("unipc", windowed_model(model.window, 2, 1), latent, schedule).x
    assert model.calls == [(0, 2), (1, 3)] * 5  # 3 latent frames
    full = sample("unipc", FrameLocalToy(seed=1).full, latent, schedule).x
    torch.testing.assert_close(windowed, full, rtol=1e-6, atol=1e-6)


def test_windows_wrap_each_pass_and_guidance_wraps_the_windows(latent):
    schedule = make_schedule("euler", 3, 5.0)
    cond, uncond = FrameLocalToy(seed=1), FrameLocalToy(seed=2)
    passes = Passes(cond=windowed_model(cond.window, 2, 1), uncond=windowed_model(uncond.window, 2, 1))
    windowed = sample("euler", guided_model(passes, Guidance(cfg=5.0), schedule), latent, schedule).x
    plain = Passes(cond=FrameLocalToy(seed=1).full, uncond=FrameLocalToy(seed=2).full)
    full = sample("euler", guided_model(plain, Guidance(cfg=5.0), schedule), latent, schedule).x
    torch.testing.assert_close(windowed, full, rtol=1e-5, atol=1e-5)
    assert cond.calls == uncond.calls == [(0, 2), (1, 3)] * 3


def messages(problems):
    return {p.key: p.message for p in problems}


def test_window_checks_name_the_setting_and_the_fix():
    assert check_windows(None, None, 81) == []
    assert check_windows(9, 6, 81) == [] and check_windows(21, 21, 81) == []
    found = messages(check_windows(22, 6, 81))
    assert "21 latent frames ([video].frames = 81)" in found["sampler.sliding_window_size"]
    assert "use at most 21" in found["sampler.sliding_window_size"]
    assert "use at most 8" in messages(check_windows(8, 9, 81))["sampler.sliding_window_stride"]
    assert "both" in messages(check_windows(8, None, 81))["sampler.sliding_window_stride"]
    assert "remove [sampler].sliding_window_stride" in messages(check_windows(None, 4, 81))[
        "sampler.sliding_window_size"]
    found = messages(check_windows(0, -2, 81))
    assert set(found) == {"sampler.sliding_window_size", "sampler.sliding_window_stride"}
    assert "integer ≥ 1" in found["sampler.sliding_window_size"]
    assert "integer ≥ 1" in messages(check_windows(4.5, 2, 81))["sampler.sliding_window_size"]


def test_a_gapped_window_layout_is_refused_when_built():
    with pytest.raises(ModelInputError, match=r"\[sampler\].sliding_window_stride = 5: larger than the window"):
        windowed_model(lambda x, t, frames: x, 4, 5)
