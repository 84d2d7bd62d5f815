"""The cached, chunked passes (the official chunking) equal one uncached causal pass."""

from __future__ import annotations

import torch

from wanflow.models.vae import FrameCache

from ._fixtures import latents, video


def test_chunked_encode_equals_the_full_pass(tiny):
    x = video(tiny, 9)
    chunked, _ = tiny.moments(x)
    full, _ = tiny.moments(x, chunked=False)
    assert (chunked - full).abs().max() <= 1e-5 * full.abs().max()  # measured ~3e-7


def test_chunked_decode_equals_the_full_pass(tiny):
    z = latents(tiny, 3)
    chunked, full = tiny.decode_raw(z), tiny.decode_raw(z, chunked=False)
    assert chunked.shape == full.shape == (1, 3, 9, *full.shape[-2:])
    assert (chunked - full).abs().max() <= 1e-5 * full.abs().max()  # measured ~3e-7


def test_encoding_is_causal(tiny):
    """Later frames never change earlier latents (the first 5 frames fix the first 2 latents)."""
    x = video(tiny, 9, h=1, w=2)
    full, prefix = tiny.encode(x), tiny.encode(x[:, :, :5])
    assert full.shape[2] == 3 and torch.allclose(full[:, :, :2], prefix, rtol=0, atol=1e-6 * full.abs().max())


def test_decoding_is_causal(tiny):
    z = latents(tiny, 3, h=1, w=2)
    full, prefix = tiny.decode(z), tiny.decode(z[:, :, :2])
    assert full.shape[2] == 9 and torch.allclose(full[:, :, :5], prefix, rtol=0, atol=1e-6)


def test_the_cache_does_not_grow_with_the_clip(tiny):
    """After the first chunks the cache holds a fixed number of bytes, however long the clip."""
    x = tiny.conv2(latents(tiny, 6, h=1, w=1))
    cache, sizes = FrameCache(tiny.decoder.slots), []
    with torch.no_grad():
        for i in range(6):
            tiny.decoder(x[:, :, i:i + 1], cache)
            sizes.append(cache.nbytes())
    assert sizes[0] < sizes[2] and sizes[2] == sizes[3] == sizes[4] == sizes[5]
    assert not cache.fresh and FrameCache(3).fresh


def test_a_fresh_cache_per_clip_makes_clips_independent(tiny):
    """Encoding one clip does not leak into the next (no state is kept in the modules)."""
    a, b = video(tiny, 5, 1, 1, seed=5), video(tiny, 5, 1, 1, seed=6)
    first = tiny.encode(b)
    tiny.encode(a)
    assert torch.equal(tiny.encode(b), first)  # same shapes and data: bit-identical
