"""What a shape clip can show: six colours, three shapes, four motions, and the held-out combinations.

The held-out list is fixed (not drawn from a seed) so that every dataset, every trained model and
every evaluation agree on which combinations the model never saw. It holds one motion out of ten
distinct colour×shape pairs, so every colour, shape, motion and colour×shape pair still appears
in training: only the combination is new.
"""

from __future__ import annotations

import itertools

#: RGB of each colour as drawn; saturated and far apart so the classifier's nearest-colour rule is safe.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 90, 230),
    "yellow": (235, 215, 40), "white": (245, 245, 245), "purple": (155, 55, 200),
}
SHAPES = ("ball", "square", "triangle")
MOTIONS = ("left", "right", "up", "down")

Combo = tuple[str, str, str]  # (colour, shape, motion)

#: Never in training; the quickstart's prompt and the evaluation draw from these.
HELD_OUT: tuple[Combo, ...] = (
    ("red", "triangle", "up"), ("red", "square", "right"),
    ("green", "ball", "left"), ("green", "triangle", "down"),
    ("blue", "square", "down"), ("blue", "ball", "right"),
    ("yellow", "triangle", "right"), ("white", "ball", "up"),
    ("purple", "square", "left"), ("purple", "ball", "down"),
)


def all_combos() -> list[Combo]:
    """Every colour × shape × motion, in vocabulary order (72)."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def training_combos() -> list[Combo]:
    """Every combination except the held-out ones (62), in vocabulary order."""
    held = set(HELD_OUT)
    return [c for c in all_combos() if c not in held]
