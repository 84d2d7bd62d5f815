"""Clip sizes and buckets: the family's spatial factor, the pixel budget, aspect groups, 4n+1 frames."""

from __future__ import annotations

import pytest

from wanflow.families.spec import FamilySpec
from wanflow.train.buckets import (
    Sizing,
    Target,
    bucket_table,
    format_bucket_table,
    frames_for,
    size_for,
    target_for,
)

BUDGET_480P = 832 * 480


@pytest.mark.parametrize(("available", "expected"), [(81, 81), (200, 81), (80, 77), (11, 9), (5, 5), (4, 1),
                                                     (1, 1), (0, 0)])
def test_frames_are_the_largest_4n_plus_1_that_fits_the_clip_and_the_maximum(available, expected):
    assert frames_for(available, Sizing(16, max_frames=81)) == expected


def test_frame_buckets_pick_the_longest_listed_length_that_fits():
    sizing = Sizing(16, max_frames=81, frame_buckets=(33, 17, 81))
    assert [frames_for(n, sizing) for n in (100, 80, 33, 32, 16)] == [81, 33, 33, 17, 0]


def test_dynamic_size_follows_the_familys_spatial_factor_under_the_pixel_budget():
    assert size_for(1920, 1080, Sizing(16, max_pixels=BUDGET_480P)) == (832, 464)
    assert size_for(1920, 1080, Sizing(32, max_pixels=BUDGET_480P)) == (832, 448)
    for factor in (16, 32):
        w, h = size_for(1919, 1079, Sizing(factor, max_pixels=BUDGET_480P))
        assert w % factor == 0 and h % factor == 0 and w * h <= BUDGET_480P


def test_a_clip_under_the_budget_is_floored_to_the_factor_and_never_enlarged():
    assert size_for(120, 70, Sizing(16)) == (112, 64)
    assert size_for(120, 70, Sizing(32)) == (96, 64)
    assert size_for(10, 10, Sizing(32)) == (32, 32)  # at least one tile


def test_for_family_takes_the_spatial_factor_from_the_family():
    family = FamilySpec("x", "", {}, {}, spatial_factor=32)
    assert Sizing.for_family(family, max_frames=9) == Sizing(32, max_frames=9)


def test_aspect_buckets_group_clips_by_nearest_ratio_at_the_full_budget():
    sizing = Sizing(16, max_pixels=BUDGET_480P, aspect_ratios=(16 / 9, 1.0, 9 / 16))
    wide, square, tall = size_for(1280, 720, sizing), size_for(500, 500, sizing), size_for(700, 1280, sizing)
    assert wide == size_for(1500, 1000, sizing) == size_for(64, 36, sizing)  # 1.5 and a tiny clip: 16:9
    assert wide == (832, 464) and square == (624, 624) and tall == (464, 832)
    assert all(w * h <= BUDGET_480P for w, h in (wide, square, tall))


def test_a_fixed_size_is_used_for_every_clip():
    sizing = Sizing(16, width=832, height=480)
    assert size_for(1920, 1080, sizing) == size_for(300, 900, sizing) == (832, 480)


def test_targets_for_images_have_one_frame_and_short_videos_none():
    sizing = Sizing(16, max_frames=17, min_frames=9)
    assert target_for(64, 48, None, sizing) == Target(1, 48, 64)
    assert target_for(64, 48, 12, sizing) == Target(9, 48, 64)
    assert target_for(64, 48, 8, sizing) is None


def test_sizing_problems_name_each_setting_and_the_fix():
    problems = Sizing(32, width=848, height=480, max_frames=80, min_frames=0, frame_buckets=(20,),
                      aspect_ratios=(0.0,)).problems()
    text = "\n".join(problems)
    assert len(problems) == 5, problems
    assert "width = 848: must be a positive multiple of 32" in text and "use 832" in text
    assert "max_frames = 80: must be 4n+1; use 81" in text and "min_frames = 0" in text
    assert "frame_buckets: 20" in text and "aspect_ratios" in text
    assert Sizing(16, width=848, height=480).problems() == []
    assert "set both" in Sizing(16, width=832).problems()[0]


def test_bucket_table_counts_samples_per_bucket_in_a_stable_order():
    targets = [Target(9, 48, 64), Target(1, 32, 32), Target(9, 48, 64), Target(9, 32, 64)]
    rows = bucket_table(targets)
    assert [(r.bucket, r.count) for r in rows] == [("32x32x1", 1), ("64x32x9", 1), ("64x48x9", 2)]
    assert bucket_table(reversed(targets)) == rows
    assert format_bucket_table(rows).splitlines()[3].split() == ["64x48x9", "64", "48", "9", "2"]
