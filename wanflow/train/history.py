"""The loss history of a training run, as CSV and as a plot (PNG), both archived with the run.

One row per optimizer step: the step, the training loss (mean over its micro-batches), the
learning rate, and the held-out validation loss where one was measured (NaN elsewhere). Only
numbers that are a function of the recipe go here, so the history is as reproducible as the
weights; timings are logged, not stored.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

COLUMNS = ("step", "loss", "lr", "val_loss")


def to_csv(rows: Sequence[Sequence[float]]) -> bytes:
    """The history as CSV text (``COLUMNS``), empty validation cells where none was measured."""
    lines = [",".join(COLUMNS)]
    for step, loss, lr, val in rows:
        lines.append(f"{int(step)},{loss:.6g},{lr:.6g},{'' if math.isnan(val) else f'{val:.6g}'}")
    return ("\n".join(lines) + "\n").encode()


def to_png(rows: Sequence[Sequence[float]], width: int = 640, height: int = 360) -> bytes:
    """A line plot of the training loss (blue, with a running mean in dark blue) and the
    validation loss (orange dots), log-scaled when the loss spans more than a decade."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 56, width - 12, 14, height - 30
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    steps = [r[0] for r in rows]
    losses = [r[1] for r in rows if math.isfinite(r[1])]
    vals = [(r[0], r[3]) for r in rows if math.isfinite(r[3])]
    values = losses + [v for _, v in vals]
    if not rows or not values:
        draw.text((left + 8, top + 8), "no steps recorded", fill=(0, 0, 0))
        return _png(image)
    log_scale = min(values) > 0 and max(values) / min(values) > 10
    f = math.log10 if log_scale else (lambda v: v)
    lo, hi = f(min(values)), f(max(values))
    hi = hi if hi > lo else lo + 1
    x_lo, x_hi = min(steps), max(max(steps), min(steps) + 1)

    def point(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_lo) / (x_hi - x_lo) * (right - left)
        y = bottom - (f(value) - lo) / (hi - lo) * (bottom - top)
        return x, y

    train = [point(r[0], r[1]) for r in rows if math.isfinite(r[1])]
    if len(train) > 1:
        draw.line(train, fill=(150, 180, 230), width=1)
    window = max(1, len(rows) // 20)
    smooth = [point(rows[i][0], sum(r[1] for r in rows[max(0, i - window + 1):i + 1]) / min(window, i + 1))
              for i in range(len(rows))]
    if len(smooth) > 1:
        draw.line(smooth, fill=(20, 60, 160), width=2)
    for step, value in vals:
        x, y = point(step, value)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(230, 120, 20))
    label = (lambda v: f"{10 ** v:.3g}") if log_scale else (lambda v: f"{v:.3g}")
    draw.text((4, top - 4), label(hi), fill=(0, 0, 0))
    draw.text((4, bottom - 8), label(lo), fill=(0, 0, 0))
    draw.text((left, bottom + 6), f"step {int(x_lo)}", fill=(0, 0, 0))
    draw.text((right - 70, bottom + 6), f"step {int(max(steps))}", fill=(0, 0, 0))
    legend = "loss (blue: per step, dark: mean)" + (", validation (orange)" if vals else "")
    draw.text((left + 90, bottom + 6), legend + (", log scale" if log_scale else ""), fill=(0, 0, 0))
    return _png(image)


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
