"""Per-frame audio buckets: hand-checked layouts everywhere, DiffSynth's copy of the official code
as an oracle where it is installed (a test-only reference, loaded from its file: importing the
``diffsynth`` package itself needs torchvision)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.audio._sound import tiny_ctc, tone
from wanflow.audio.buckets import audio_buckets, frame_buckets, to_bucket_rate
from wanflow.audio.wav2vec import speech_hidden_states


def test_resampling_to_30_per_second_is_linear_with_the_ends_aligned():
    states = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = to_bucket_rate(states)  # int(10 / 50 * 30) = 6 frames at positions 0, 1.8, 3.6, 5.4, 7.2, 9
    assert out.shape == (2, 6, 3)
    grid = np.linspace(0, 9, 6)
    for layer in range(2):
        for channel in range(3):
            expected = np.interp(grid, np.arange(10), states[layer, :, channel].numpy())
            np.testing.assert_allclose(out[layer, :, channel].numpy(), expected, atol=1e-12)
    assert torch.equal(to_bucket_rate(states[:, :5])[:, [0, 2]], states[:, [0, 4]])  # 3 frames: 0, 2, 4


def test_each_frame_takes_the_feature_at_its_time_and_silence_after_the_end():
    states = _numbered(layers=2, frames=100, dim=3)
    buckets = frame_buckets(states)  # 16 fps, 80 frames per clip, window 0
    assert buckets.shape == (1, 2, 3, 80)
    ids = buckets[0, 0, 0]  # feature number in channel 0 of layer 0 (0 where silent)
    assert ids[[0, 1, 4, 12, 53]].tolist() == [0, 2, 8, 22, 99]
    assert torch.all(buckets[..., 54:] == 0) and torch.all(ids[1:54] > 0)
    assert torch.equal(buckets[0, 1, :, 12], states[1, 22])  # every layer and channel of the feature


def test_a_window_takes_neighbours_clamped_to_the_recording():
    states = _numbered(layers=1, frames=20, dim=2)
    buckets = frame_buckets(states, fps=15, frames_per_clip=4, window=1)  # 2 features per frame, stride 2
    assert buckets.shape == (1, 1, 6, 12)  # 3 clips: a clip covers 8 of the 20 features
    first = buckets[0, 0, :, 0].view(3, 2)[:, 0]  # frame 0 centres on feature 0: window -2, 0, 2 clamps
    assert first.tolist() == [0.0, 0.0, 2.0]
    last_real = buckets[0, 0, :, 9].view(3, 2)[:, 0]  # frame 9 centres on 18: 16, 18, 20 -> 19
    assert last_real.tolist() == [16.0, 18.0, 19.0]
    assert torch.all(buckets[..., 10:] == 0)  # centres 20 and 22 are past the end


def test_clips_are_consecutive_slices():
    states = torch.randn(3, 260, 4, generator=torch.Generator().manual_seed(1))  # 156 at 30/s: 2 clips of 80
    clips = audio_buckets(states)
    assert len(clips) == 2 and all(c.shape == (1, 3, 4, 80) for c in clips)
    assert torch.equal(torch.cat(clips, dim=-1), frame_buckets(to_bucket_rate(states)))


# ----------------------------------------------------------------------------- the oracle


def reference():
    """DiffSynth 2.1.12's ``models/wav2vec.py`` (the official audio_encoder's bucket code), or skip."""
    spec = importlib.util.find_spec("diffsynth")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("DiffSynth is not installed (a test-only reference)")
    path = Path(spec.submodule_search_locations[0]) / "models" / "wav2vec.py"
    module_spec = importlib.util.spec_from_file_location("reference_wav2vec", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("frames_50, fps, per_clip, window", [
    (173, 16, 80, 0), (500, 16, 80, 0), (250, 16, 80, 0), (97, 16, 12, 0), (131, 16, 12, 2), (211, 15, 8, 1),
])
def test_buckets_equal_the_reference_exactly(frames_50, fps, per_clip, window):
    ref = reference()
    states = torch.randn(3, frames_50, 5, generator=torch.Generator().manual_seed(frames_50))
    feat = ref.linear_interpolation(states, input_fps=50, output_fps=30)
    stand_in = SimpleNamespace(video_rate=30)  # the methods read only this attribute
    expected, clips = ref.WanS2VAudioEncoder.get_audio_embed_bucket_fps(stand_in, feat, fps, per_clip, window)
    expected = expected.unsqueeze(0).permute(0, 2, 3, 1)
    ours = audio_buckets(states, fps, per_clip, window)
    assert len(ours) == clips
    assert torch.equal(torch.cat(ours, dim=-1), expected)  # max |Δ| = 0


def test_the_encoder_path_equals_the_reference_below_the_last_layer():
    from transformers import Wav2Vec2FeatureExtractor

    ref = reference()
    model = tiny_ctc()
    waveform = (tone(220.0, 1.3, 16000) + 0.1 * np.random.default_rng(0).standard_normal(20800)).astype(np.float32)
    processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    stand_in = SimpleNamespace(model=model, video_rate=30)
    expected = ref.WanS2VAudioEncoder.extract_audio_feat(stand_in, waveform, 16000, processor, return_all_layers=True)
    ours = to_bucket_rate(speech_hidden_states(model.wav2vec2, waveform, 16000))
    assert ours.shape == expected.shape == (3, 38, 16)  # 64 frames at 50/s -> int(38.4)
    torch.testing.assert_close(ours[:2], expected[:2], atol=2e-5, rtol=0)  # float64 vs float32 normalising
    # the last state is the one transformers versions disagree on: see test_wav2vec


def _numbered(layers: int, frames: int, dim: int) -> torch.Tensor:
    """States whose value says which feature frame they are (+1000 per layer, +0.25 per channel)."""
    frame = torch.arange(frames, dtype=torch.float64)[None, :, None]
    return frame + 1000.0 * torch.arange(layers)[:, None, None] + 0.25 * torch.arange(dim)[None, None, :]
