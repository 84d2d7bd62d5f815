"""Draw one clip: a flat-coloured shape gliding in a straight line over a plain grey background.

A clip is a pure function of its ``ClipSpec``; the spec is drawn from a numpy Generator, so a
seed fixes every pixel. Shapes are antialiased by 4×4 supersampling (hard edges would alias into
staircases the model would learn). The three shapes have the same area, so size never hints at
the shape, and they are axis-aligned, so the fraction of its bounding box a shape fills tells
them apart (square ≈ 1, ball ≈ π/4, triangle ≈ 1/2), which is what the classifier reads.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from .vocabulary import COLOURS, MOTIONS, SHAPES

SUPERSAMPLE = 4  # sub-pixels per side for antialiasing
SQUARE_HALF = math.sqrt(math.pi) / 2  # half side of the square whose area is π r²
TRIANGLE_SIDE = math.sqrt(4 * math.pi / math.sqrt(3))  # side (in r) of the equilateral triangle of area π r²
EXTENT = TRIANGLE_SIDE / 2  # widest half extent of any shape, in units of r (the triangle's base)
SIZE_RANGE = (0.20, 0.24)  # r as a fraction of the shorter frame side (the shape spans ~3 latent cells)
TRAVEL_RANGE = (0.60, 0.90)  # distance covered, as a fraction of the room the shape has on its axis
BACKGROUND_RANGE = (16, 72)  # grey level of the background: dark, so white and yellow stand out
MARGIN = 1.0  # pixels kept free between the shape and the frame edge
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y grows downward


@attrs.frozen
class ClipSpec:
    """Everything that fixes a clip's pixels; positions and sizes in pixels, centre of the shape."""

    colour: str
    shape: str
    motion: str
    frames: int
    height: int
    width: int
    radius: float  # the shape's size: every shape has the area of a disc of this radius
    start: tuple[float, float]  # (x, y) of the centre in the first frame
    speed: float  # pixels per frame along the motion's direction
    background: int  # grey level 0..255

    def centre(self, t: int) -> tuple[float, float]:
        """(x, y) of the shape's centre in frame ``t``."""
        dx, dy = DIRECTIONS[self.motion]
        return self.start[0] + dx * self.speed * t, self.start[1] + dy * self.speed * t


def sample_spec(rng: np.random.Generator, colour: str, shape: str, motion: str, *,
                frames: int = 17, height: int = 64, width: int = 64) -> ClipSpec:
    """A random size, background, speed and start that keep the whole path inside the frame."""
    _check_words(colour, shape, motion)
    if frames < 2 or min(height, width) < 16:
        raise ValueError(f"a clip needs ≥ 2 frames and ≥ 16×16 pixels, got {frames} × {height}×{width}")
    radius = float(rng.uniform(*SIZE_RANGE)) * min(height, width)
    lo = EXTENT * radius + MARGIN  # the centre stays in [lo, side - lo] on each axis
    dx, dy = DIRECTIONS[motion]
    axis_len = width if dx else height
    travel = float(rng.uniform(*TRAVEL_RANGE)) * (axis_len - 2 * lo)
    along = float(rng.uniform(lo, axis_len - lo - travel))  # where the path's low end lies
    across = float(rng.uniform(lo, (height if dx else width) - lo))
    if dx + dy < 0:  # left or up: start at the high end of the path
        along += travel
    start = (along, across) if dx else (across, along)
    background = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    return ClipSpec(colour, shape, motion, frames, height, width, radius, start, travel / (frames - 1),
                    background)


def render(spec: ClipSpec) -> np.ndarray:
    """The clip's frames, uint8 (T, H, W, 3) RGB."""
    bg = np.full(3, spec.background, np.float64)
    fg = np.asarray(COLOURS[spec.colour], np.float64)
    out = np.empty((spec.frames, spec.height, spec.width, 3), np.uint8)
    for t in range(spec.frames):
        cover = coverage(spec.shape, spec.centre(t), spec.radius, spec.height, spec.width)[..., None]  # (H, W, 1)
        out[t] = np.rint(bg * (1 - cover) + fg * cover).astype(np.uint8)
    return out


def coverage(shape: str, centre: tuple[float, float], radius: float, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel the shape covers, (H, W) in [0, 1], from SUPERSAMPLE² sample points."""
    n = SUPERSAMPLE
    sub = (np.arange(n) + 0.5) / n
    ys = (np.arange(height)[:, None] + sub[None, :]).reshape(-1)  # (H·n,) pixel (i, j) spans [i, i+1)
    xs = (np.arange(width)[:, None] + sub[None, :]).reshape(-1)  # (W·n,)
    x, y = xs[None, :] - centre[0], ys[:, None] - centre[1]  # (H·n, W·n) offsets from the centre
    inside = _inside(shape, x, y, radius)
    return inside.reshape(height, n, width, n).mean(axis=(1, 3))


def _inside(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Which offsets (x right, y down) from the centre fall in the shape of size ``r``."""
    if shape == "ball":
        return x * x + y * y <= r * r
    if shape == "square":
        return (np.abs(x) <= SQUARE_HALF * r) & (np.abs(y) <= SQUARE_HALF * r)
    side = TRIANGLE_SIDE * r  # apex up, base down, the bounding box centred on the centre
    h = side * math.sqrt(3) / 2
    depth = y + h / 2  # 0 at the apex, h at the base
    return (depth >= 0) & (depth <= h) & (np.abs(x) <= depth / h * side / 2)


def _check_words(colour: str, shape: str, motion: str) -> None:
    for word, allowed in ((colour, COLOURS), (shape, SHAPES), (motion, MOTIONS)):
        if word not in allowed:
            raise ValueError(f"{word!r} is not in the vocabulary; choose from {', '.join(allowed)}")
