"""The LongCat-Video DiT on its own: video continuation, the KV cache, text slots, the pieces
checked by hand, and the inputs it refuses. Runs everywhere (no reference needed)."""

from __future__ import annotations

import math

import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.models.longcat import LongCatDiT, rope_table, rotate, timestep_features
from wanflow.models.longcat_config import LongCatConfig, swiglu_width

TINY = dict(hidden_size=64, depth=2, num_heads=4, ffn_dim=swiglu_width(64), caption_channels=32,
            adaln_tembed_dim=24, frequency_embedding_size=16)
#: fp32 rounding where the same numbers take another op order or matrix size (outputs ~2-5).
CLOSE = 1e-5


def tiny(seed: int = 0, zero_pad: bool = True) -> LongCatDiT:
    """A seeded tiny model whose every weight is random (norm weights near 1)."""
    model = LongCatDiT(LongCatConfig(text_tokens_zero_pad=zero_pad, **TINY)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 1 / math.sqrt(p.shape[-1])))
            if "norm" in name:
                p.add_(1.0)
    return model


def video(batch: int = 1, frames: int = 5, seed: int = 1, tokens: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 16, frames, 4, 6, generator=g), torch.randn(batch, tokens, 32, generator=g))


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- continuation


@torch.no_grad()
def test_the_kv_cache_path_equals_the_full_pass_and_one_cache_serves_both_guidance_rows():
    model = tiny()
    x, context = video(batch=2, frames=6)
    x[1, :, :2] = x[0, :, :2]  # both rows continue the same video (prompt and negative prompt)
    t, lens = torch.tensor([640.0, 640.0]), torch.tensor([9, 4])
    full = model(x, t, context, lens, cond_frames=2)
    cache = model.cache_conditioning(x[:1, :, :2])  # one sample
    assert cache.batch == 1 and cache.frames == 2 and len(cache.kv) == 2
    cached = model(x[:, :, 2:], t, context, lens, cache=cache)
    assert cached.shape == (2, 16, 4, 4, 6)
    assert diff(cached, full[:, :, 2:]) < CLOSE
    assert diff(cached, model(x[:, :, 2:], t, context, lens)) > 1e-2  # without the cache: no conditioning


@torch.no_grad()
def test_conditioning_frames_see_only_themselves_and_ignore_time_and_text():
    model = tiny(seed=2)
    x, context = video(frames=5)
    out = model(x, torch.tensor([500.0]), context, cond_frames=2)
    other_x = x.clone()
    other_x[:, :, 2:] = torch.randn_like(other_x[:, :, 2:])
    other = model(other_x, torch.tensor([900.0]), torch.randn_like(context), cond_frames=2)
    assert torch.equal(other[:, :, :2], out[:, :, :2])
    assert diff(other[:, :, 2:], out[:, :, 2:]) > 0.1


@torch.no_grad()
def test_conditioning_frames_sit_at_t0_whatever_timestep_is_given_for_them():
    model = tiny(seed=3)
    x, context = video(frames=4)
    given = model(x, torch.tensor([[777.0, 300.0, 300.0, 300.0]]), context, cond_frames=1)
    zeroed = model(x, torch.tensor([[0.0, 300.0, 300.0, 300.0]]), context, cond_frames=1)
    assert torch.equal(given, zeroed)
    plain = model(x, torch.tensor([[777.0, 300.0, 300.0, 300.0]]), context)  # text-to-video: t is used
    assert diff(plain[:, :, 0], given[:, :, 0]) > 0.1


@torch.no_grad()
def test_the_frames_to_denoise_depend_on_the_conditioning_frames():
    model = tiny(seed=4)
    x, context = video(frames=5)
    out = model(x, torch.tensor([400.0]), context, cond_frames=2)
    moved = x.clone()
    moved[:, :, :2] += 1.0
    assert diff(model(moved, torch.tensor([400.0]), context, cond_frames=2)[:, :, 2:], out[:, :, 2:]) > 0.1


# ----------------------------------------------------------------------------- text


@torch.no_grad()
def test_zero_pad_mode_attends_512_slots_whose_padding_is_zero_after_projection():
    model = tiny(seed=5)
    x, context = video(tokens=512)
    lens = torch.tensor([9])
    out = model(x, torch.tensor([300.0]), context, lens)
    junk = context.clone()
    junk[:, 9:] = torch.randn_like(junk[:, 9:])  # what the encoder left in padded slots is irrelevant
    assert torch.equal(model(x, torch.tensor([300.0]), junk, lens), out)
    trimmed = model(x, torch.tensor([300.0]), context[:, :9])  # 9 real tokens, padded here to 512
    assert diff(trimmed, out) < CLOSE
    only_real = tiny(seed=5, zero_pad=False)(x, torch.tensor([300.0]), context, lens)
    assert diff(only_real, out) > 0.1  # the 503 zero slots are attended: the two modes differ


@torch.no_grad()
def test_without_zero_pad_each_sample_attends_only_its_real_tokens():
    model = tiny(seed=6, zero_pad=False)
    x, context = video(batch=2, tokens=12)
    lens = torch.tensor([12, 5])
    both = model(x, torch.tensor([250.0, 250.0]), context, lens)
    alone = model(x[1:], torch.tensor([250.0]), context[1:, :5])
    assert diff(both[1:], alone) < CLOSE
    assert diff(both[:1], model(x[:1], torch.tensor([250.0]), context[:1])) < CLOSE


# ----------------------------------------------------------------------------- the pieces by hand


def test_timestep_features_are_cos_then_sin_of_t_times_falling_frequencies():
    feats = timestep_features(torch.tensor([0.0, 1.0, 500.0]), 4)  # frequencies 1 and 10000^(-1/2)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)],
                             [math.cos(500), math.cos(5), math.sin(500), math.sin(5)]])
    torch.testing.assert_close(feats, expected, atol=2e-5, rtol=0)


def test_rope_turns_frame_height_and_width_pairs_by_their_positions():
    cos, sin = rope_table((3, 2, 2), 16, torch.device("cpu"))  # 8 frame dims, 4 height, 4 width
    assert cos.shape == sin.shape == (12, 1, 16)
    token = 2 * 4 + 1 * 2 + 0  # frame 2, row 1, column 0
    angles = torch.tensor([2.0, 0.2, 0.02, 0.002, 1.0, 0.01, 0.0, 0.0]).repeat_interleave(2)
    torch.testing.assert_close(cos[token, 0], angles.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[token, 0], angles.sin() * torch.tensor([-1.0, 1.0]).repeat(8), atol=1e-6, rtol=0)
    x = torch.zeros(1, 12, 1, 16)
    x[0, token, 0, 8:10] = torch.tensor([1.0, 2.0])  # the first height pair, angle 1
    turned = rotate(x, (cos, sin))[0, token, 0, 8:10]
    c, s = math.cos(1.0), math.sin(1.0)
    torch.testing.assert_close(turned, torch.tensor([c - 2 * s, 2 * c + s]), atol=1e-6, rtol=0)


def test_the_released_sizes_and_the_swiglu_width():
    assert swiglu_width(4096) == 11008 and swiglu_width(64) == 256
    with torch.device("meta"):
        model = LongCatDiT(LongCatConfig(hidden_size=4096, depth=48, num_heads=32, ffn_dim=11008))
    assert sum(p.numel() for p in model.parameters()) == 13_581_071_424  # 13.581 B, as counted from the release
    assert len(model.state_dict()) == 1022


# ----------------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize("change, message", [
    (dict(x=torch.zeros(1, 8, 5, 4, 6)), "expected latents"),
    (dict(x=torch.zeros(1, 16, 5, 3, 6)), "multiples of the patch"),
    (dict(t=torch.zeros(1, 4)), "one per latent frame"),
    (dict(context=torch.zeros(1, 513, 32)), "at most 512"),
    (dict(context=torch.zeros(1, 9, 16)), "umT5 features"),
    (dict(text_lens=torch.tensor([10])), "text_lens"),
    (dict(text_lens=torch.tensor([0])), "text_lens"),
    (dict(cond_frames=5), "at least one frame"),
    (dict(cond_frames=-1), "cond_frames"),
])
def test_malformed_inputs_are_refused_before_any_work(change, message):
    model = tiny()
    x, context = video()
    args = dict(x=x, t=torch.tensor([10.0]), context=context, text_lens=None, cond_frames=0) | change
    with pytest.raises(ModelInputError, match=message):
        model(**args)


def test_a_cache_that_does_not_fit_is_refused():
    model = tiny()
    x, context = video(frames=4)
    cache = model.cache_conditioning(x[:, :, :1])
    with pytest.raises(ModelInputError, match="already holds"):
        model(x, torch.tensor([10.0]), context, cond_frames=1, cache=cache)
    with pytest.raises(ModelInputError, match="token grid"):
        model(torch.zeros(1, 16, 3, 4, 8), torch.tensor([10.0]), context, cache=cache)
    with pytest.raises(ModelInputError, match="made for 2 samples"):
        model(x.repeat(3, 1, 1, 1, 1), torch.tensor([10.0] * 3), context.repeat(3, 1, 1),
              cache=model.cache_conditioning(x.repeat(2, 1, 1, 1, 1)[:, :, :1]))
