"""The clip arithmetic of Wan2.2-Animate's loop: how many clips, where each starts, ping-pong padding."""

from __future__ import annotations

import pytest

from wanflow.steps.animate_clips import ClipPlan, pingpong


@pytest.mark.parametrize(("frames", "overlap", "padded", "starts"), [
    (9, 1, 77, [0]),  # shorter than a clip: one clip, the videos ping-ponged to 77
    (77, 1, 77, [0]),
    (77, 5, 77, [0]),
    (153, 1, 153, [0, 76]),  # exactly two clips sharing one frame
    (149, 5, 149, [0, 72]),  # exactly two clips sharing five frames
    (150, 5, 221, [0, 72, 144]),  # one frame more: a third clip, the videos padded to fill it
    (81, 1, 153, [0, 76]),
])
def test_clips_cover_the_video_advancing_by_the_clip_less_its_overlap(frames, overlap, padded, starts):
    plan = ClipPlan(frames, overlap)
    assert (plan.padded, plan.starts(), plan.count) == (padded, starts, len(starts))
    indices = plan.indices()
    assert [len(i) for i in indices] == [77] * len(starts)
    for before, after in zip(indices, indices[1:]):
        assert before[-overlap:] == after[:overlap]  # each clip starts on the last frames of the one before
    shown = indices[0] + [i for clip in indices[1:] for i in clip[overlap:]]  # as the decode joins them
    assert shown[:frames] == list(range(frames))  # the real frames, in order


def test_videos_are_padded_forth_and_back():
    assert pingpong(3, 9) == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert pingpong(1, 3) == [0, 0, 0]
    assert ClipPlan(9, 1).indices()[0][:20] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3]
