"""Bad inputs fail before any work, with a message naming the argument and the fix."""

from __future__ import annotations

import pytest
import torch

from wanflow.errors import ModelInputError

from ._fixtures import latents, video


@pytest.mark.parametrize("make, words", [
    (lambda v: video(v, 6), ["6 frames", "1 + 4n", "5 or 9"]),
    (lambda v: video(v, 5)[..., :-1], ["divisible by", "video"]),
    (lambda v: video(v, 5)[:, :2], ["video has shape", "(B, 3, T, H, W)"]),
    (lambda v: video(v, 5)[0], ["video has shape"]),
    (lambda v: video(v, 5).index_fill_(2, torch.tensor([3]), float("nan")), ["NaN/inf", "video"]),
])
def test_bad_videos(tiny, make, words):
    with pytest.raises(ModelInputError) as err:
        tiny.encode(make(tiny))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_latents(tiny):
    z = latents(tiny, 2)
    with pytest.raises(ModelInputError, match="latents has shape"):
        tiny.decode(z[:, :4])
    with pytest.raises(ModelInputError, match="NaN/inf"):
        tiny.decode(z.clone().fill_(float("inf")))


def test_sampling_needs_a_generator(tiny):
    with pytest.raises(ModelInputError, match="generator"):
        tiny.encode(video(tiny, 1), sample=True)


def test_nothing_runs_before_the_check(tiny):
    calls = []
    hook = tiny.encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ModelInputError):
            tiny.encode(video(tiny, 4))
    finally:
        hook.remove()
    assert calls == []
