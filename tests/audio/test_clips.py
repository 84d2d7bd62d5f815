"""The clip arithmetic, against hand computations from the official code's formulas."""

from __future__ import annotations

import pytest

from wanflow.audio.clips import (
    clip_count,
    feature_frames,
    frame_feature_indices,
    min_samples,
    plan_clips,
    receptive_field,
)


def test_the_encoder_front_end_counts_frames_as_its_convolutions_do():
    assert receptive_field() == 400 and min_samples() == 720  # 25 ms window; two frames make one at 30/s
    assert [feature_frames(n) for n in (399, 400, 719, 720, 16000)] == [0, 1, 1, 2, 49]
    assert feature_frames(16000 * 60) == (16000 * 60 - 400) // 320 + 1


def test_frame_times_round_half_to_even_as_numpy_does():
    idx = frame_feature_indices(149)  # 16 fps, 80 frames: k -> round(k * 1.875)
    assert list(idx[:5]) == [0, 2, 4, 6, 8]
    assert (idx[12], idx[20], idx[28], idx[36]) == (22, 38, 52, 68)  # 22.5, 37.5, 52.5, 67.5 -> even
    assert idx[79] == 148 and len(idx) == 80


def test_frames_past_the_recording_point_past_its_end():
    idx = frame_feature_indices(100)
    assert idx[53] == 99 and idx[54] == 101  # 99.375 -> 99 is the last real feature; 101.25 -> silence


def test_a_recording_filling_its_clips_exactly_gets_one_more_clip():
    assert [clip_count(n) for n in (0, 149, 150, 299, 300)] == [1, 1, 2, 2, 3]  # a clip covers 150 features
    assert clip_count(150, fps=16, frames_per_clip=40) == 3  # 75 per clip
    assert len(frame_feature_indices(150)) == 160


def test_clip_plans_for_round_durations():
    five = plan_clips(5 * 16000)  # 249 frames at 50/s -> int(149.4) = 149 at 30/s
    assert (five.clips, five.video_frames, five.feature_frames, five.latent_frames_per_clip) == (1, 77, 149, 20)
    ten = plan_clips(10 * 16000)  # 499 -> 299: two clips, the first losing 3 frames
    assert (ten.clips, ten.video_frames) == (2, 157)
    assert plan_clips(10 * 16000, max_clips=1).clips == 1 and plan_clips(10 * 16000, max_clips=9).clips == 2
    assert plan_clips(10 * 16000, frames_per_clip=40, first_clip_drop=0).video_frames == 4 * 40


def test_clip_lengths_that_are_not_whole_latent_frames_are_refused():
    with pytest.raises(ValueError, match="frames_per_clip = 81: must be a positive multiple of 4"):
        plan_clips(16000, frames_per_clip=81)
