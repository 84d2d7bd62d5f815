"""The block-causal Wan DiT forward: the plain forward when there is one block, block-causal
attention with per-frame time modulation, and a KV cache that reproduces the masked forward."""

from __future__ import annotations

import pytest
import torch

from tests.models._dit_fixtures import inputs, random_state, tiny_config
from wanflow.errors import ModelInputError
from wanflow.models.causal import causal_forward
from wanflow.models.causal_kv import FrameKV, block_causal_mask, kept_frames, rolled
from wanflow.models.dit import WanDiT

FRAMES, PER_BLOCK = 9, 3  # three blocks of three latent frames, 4 x 4 tokens each


@pytest.fixture(scope="module")
def dit() -> WanDiT:
    cfg = tiny_config()
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg))
    return model.eval()


@pytest.fixture(scope="module")
def inp(dit) -> dict:
    found = inputs(dit.cfg, grid=(FRAMES, 8, 8))
    gen = torch.Generator().manual_seed(5)
    found["t_frames"] = torch.rand(1, FRAMES, generator=gen) * 1000  # a different t for every frame
    found["prepared"] = dit.prepare_context(found["context"])
    return found


def frames_of(x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    return x[:, :, first:last]


@torch.no_grad()
def test_one_block_with_equal_timesteps_is_the_plain_forward(dit, inp):
    plain = dit(inp["x"], inp["t"], inp["context"])
    t = inp["t"][:, None].expand(1, FRAMES)
    causal = causal_forward(dit, inp["x"], t, inp["context"], frames_per_block=FRAMES).velocity
    assert torch.allclose(causal, plain, rtol=0, atol=1e-5)


@torch.no_grad()
def test_per_frame_timesteps_modulate_each_frame_as_per_token_timesteps_do(dit, inp):
    tokens_per_frame = 16  # 8 x 8 latents in 2 x 2 patches
    per_token = inp["t_frames"].repeat_interleave(tokens_per_frame, dim=1)  # (1, L)
    plain = dit(inp["x"], per_token, inp["context"])
    causal = causal_forward(dit, inp["x"], inp["t_frames"], inp["prepared"], frames_per_block=FRAMES).velocity
    assert torch.allclose(causal, plain, rtol=0, atol=1e-5)


@torch.no_grad()
def test_under_the_block_causal_mask_the_first_block_sees_only_itself(dit, inp):
    full = causal_forward(dit, inp["x"], inp["t_frames"], inp["prepared"], frames_per_block=FRAMES).velocity
    causal = causal_forward(dit, inp["x"], inp["t_frames"], inp["prepared"], frames_per_block=PER_BLOCK).velocity
    alone = causal_forward(dit, frames_of(inp["x"], 0, 3), inp["t_frames"][:, :3], inp["prepared"]).velocity
    assert torch.allclose(frames_of(causal, 0, 3), alone, rtol=0, atol=1e-5)
    assert (causal - full).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-2  # every frame differs from full attention


@torch.no_grad()
def test_a_later_block_never_changes_an_earlier_one(dit, inp):
    before = causal_forward(dit, inp["x"], inp["t_frames"], inp["prepared"]).velocity
    x = inp["x"].clone()
    x[:, :, 6:] = torch.randn(x[:, :, 6:].shape, generator=torch.Generator().manual_seed(9))
    t = inp["t_frames"].clone()
    t[:, 3:6] = 17.0  # the middle block's time changes too
    after = causal_forward(dit, x, t, inp["prepared"]).velocity
    assert torch.equal(frames_of(after, 0, 3), frames_of(before, 0, 3))
    assert (frames_of(after, 3, 6) - frames_of(before, 3, 6)).abs().max() > 1e-2
    assert (frames_of(after, 6, 9) - frames_of(before, 6, 9)).abs().max() > 1e-2


@torch.no_grad()
def test_a_block_run_on_the_cache_of_every_earlier_frame_equals_the_masked_forward(dit, inp):
    full = causal_forward(dit, inp["x"], inp["t_frames"], inp["prepared"]).velocity
    for first in (3, 6):  # blocks 1 and 2, at their absolute RoPE positions
        cache = causal_forward(dit, frames_of(inp["x"], 0, first), inp["t_frames"][:, :first], inp["prepared"]).kv
        block = causal_forward(dit, frames_of(inp["x"], first, first + 3), inp["t_frames"][:, first:first + 3],
                               inp["prepared"], cache=cache, start_frame=first).velocity
        assert cache.frames == first
        assert torch.allclose(block, frames_of(full, first, first + 3), rtol=0, atol=1e-5)


def eviction_mask(frames: int, per_block: int, recent: int) -> torch.Tensor:
    """By hand: a frame sees its own block, frame 0 and the `recent` frames before its block."""
    mask = torch.zeros(frames, frames, dtype=torch.bool)
    for i in range(frames):
        first = i // per_block * per_block
        mask[i, first:first + per_block] = True
        mask[i, 0] = True
        mask[i, max(0, first - recent):first] = True
    return mask


@torch.no_grad()
def test_a_rolling_cache_equals_a_masked_forward_keeping_the_first_and_recent_frames(dit):
    frames, recent = 12, 2
    inp = inputs(dit.cfg, seed=3, grid=(frames, 4, 4))
    t = torch.rand(1, frames, generator=torch.Generator().manual_seed(4)) * 1000
    prepared = dit.prepare_context(inp["context"])
    mask = eviction_mask(frames, PER_BLOCK, recent)
    masked = causal_forward(dit, inp["x"], t, prepared, frame_mask=mask).velocity
    cache, kept = None, []
    for first in range(0, frames, PER_BLOCK):
        out = causal_forward(dit, frames_of(inp["x"], first, first + 3), t[:, first:first + 3], prepared,
                             cache=cache, start_frame=first)
        assert torch.allclose(out.velocity, frames_of(masked, first, first + 3), rtol=0, atol=1e-5)
        cache = rolled(out.kv if cache is None else cache.then(out.kv), recent)
        kept.append(cache.frames)
    assert kept == [3, 3, 3, 3]  # frames {0,1,2}, {0,4,5}, {0,7,8}, {0,10,11}
    plain = causal_forward(dit, inp["x"], t, prepared).velocity
    assert (frames_of(plain, 6, 12) - frames_of(masked, 6, 12)).abs().max() > 1e-2  # eviction mattered


def test_the_block_causal_mask_and_the_kept_frames():
    assert block_causal_mask(5, 2).int().tolist() == [
        [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert kept_frames(9, 3) == [0, 6, 7, 8]
    assert kept_frames(3, 3) == [0, 1, 2]
    assert kept_frames(0, 3) == []


def test_frame_kv_selects_and_extends_frames():
    keys = torch.arange(2 * 4 * 1 * 1 * 1, dtype=torch.float32).reshape(1, 4, 1, 1, 2)
    kv = FrameKV((keys,), (keys + 100,))
    picked = kv.select([0, 3])
    assert picked.keys[0][0, :, 0, 0].tolist() == [[0.0, 1.0], [6.0, 7.0]]
    assert picked.values[0][0, :, 0, 0, 0].tolist() == [100.0, 106.0]
    joined = picked.then(kv.select([1]))
    assert joined.frames == 3 and joined.keys[0][0, 2, 0, 0].tolist() == [2.0, 3.0]
    with pytest.raises(ModelInputError, match="must be non-empty and lie in 0..3"):
        kv.select([4])


@torch.no_grad()
def test_bad_inputs_are_refused_with_what_was_expected(dit, inp):
    x, t = inp["x"], inp["t_frames"]
    with pytest.raises(ModelInputError, match=r"one timestep per latent frame, \(1, 9\)"):
        causal_forward(dit, x, t[:, :4], inp["prepared"])
    with pytest.raises(ModelInputError, match="every frame must see itself"):
        causal_forward(dit, x, t, inp["prepared"], frame_mask=torch.zeros(9, 9, dtype=torch.bool))
    with pytest.raises(ModelInputError, match=r"need a bool \(9, 9\) mask"):
        causal_forward(dit, x, t, inp["prepared"], frame_mask=torch.ones(9, 8, dtype=torch.bool))
    cache = causal_forward(dit, frames_of(x, 0, 3)[..., :4, :4], t[:, :3], inp["prepared"]).kv
    with pytest.raises(ModelInputError, match="the cache was made at another size"):
        causal_forward(dit, frames_of(x, 3, 6), t[:, 3:6], inp["prepared"], cache=cache, start_frame=3)
    with pytest.raises(ModelInputError, match="start_frame = -1"):
        causal_forward(dit, x, t, inp["prepared"], start_frame=-1)


def test_dits_with_extra_inputs_are_refused():
    cfg = tiny_config("i2v")
    with pytest.raises(ModelInputError, match="plain text-to-video DiTs"):
        causal_forward(WanDiT(cfg), torch.zeros(1, 36, 3, 4, 4), torch.zeros(1, 3), torch.zeros(1, 3, 4096))
