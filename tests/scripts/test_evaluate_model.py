"""The quickstart model's grading helpers that need no model: scores and the contact sheet."""

from __future__ import annotations

import numpy as np

from scripts.quickstart.evaluate_model import Sample, accuracy, contact_sheet


def _clip(value: int) -> np.ndarray:
    clip = np.zeros((17, 4, 4, 3), np.uint8)
    clip[:, 0, 0] = value
    clip[:, 1, 1] = np.arange(17)[:, None]  # each frame tells its index
    return clip


def test_the_contact_sheet_puts_each_combination_on_a_row_and_its_seeds_side_by_side():
    a, b = ("red", "ball", "left"), ("blue", "square", "up")
    samples = [Sample(a, 0, a), Sample(a, 1, a), Sample(b, 0, b), Sample(b, 1, b)]
    clips = [_clip(v) for v in (10, 20, 30, 40)]
    sheet = contact_sheet(samples, clips, picks=(0, 8, 16), scale=1, gap=2)
    assert sheet.shape == (4 + 2 + 4, 2 * (3 * 4 + 2), 3)
    # row b, seed 1 (fourth clip): three shots of 4 px after the first clip and its gap
    x, y = 3 * 4 + 2, 4 + 2
    assert sheet[y, x, 0] == 40 and sheet[y + 1, x + 1 + 4, 0] == 8 and sheet[y + 1, x + 1 + 8, 0] == 16
    assert (sheet[4:6] == 255).all()  # the gap between rows
    assert sheet[0, 0, 0] == 10 and sheet[0, 14, 0] == 20


def test_accuracy_counts_each_attribute_and_all_three():
    asked = ("red", "square", "right")
    samples = [Sample(asked, 0, asked), Sample(asked, 1, ("red", "ball", "right")),
               Sample(asked, 2, ("unknown", "ball", "right"))]
    assert accuracy(samples) == {"colour": 2 / 3, "shape": 1 / 3, "motion": 1.0, "overall": 1 / 3}
