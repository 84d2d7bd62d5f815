"""The loss history as CSV and as a plot."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from wanflow.train.history import to_csv, to_png

ROWS = [[1, 2.0, 1e-4, math.nan], [2, 1.0, 1e-4, 1.5], [3, 0.01, 5e-5, math.nan]]


def _colours(image) -> set[tuple[int, ...]]:
    return set(map(tuple, np.asarray(image.convert("RGB")).reshape(-1, 3).tolist()))


def test_csv_has_one_row_per_step_and_blank_validation_cells():
    assert to_csv(ROWS).decode().splitlines() == [
        "step,loss,lr,val_loss", "1,2,0.0001,", "2,1,0.0001,1.5", "3,0.01,5e-05,"]


def test_plot_is_a_png_that_draws_the_losses():
    image = Image.open(io.BytesIO(to_png(ROWS)))
    assert image.format == "PNG" and image.size == (640, 360)
    pixels = _colours(image)
    assert (20, 60, 160) in pixels  # the running mean's line
    assert (230, 120, 20) in pixels  # the validation point
    empty = _colours(Image.open(io.BytesIO(to_png([]))))
    assert (20, 60, 160) not in empty
