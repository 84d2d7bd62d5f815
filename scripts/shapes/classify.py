"""Say what a clip shows: the moving object's colour, its shape and its direction, or "unknown".

Plain numpy measurements, no learned model, so the judge of a trained model cannot share its
mistakes. Per frame: the background is the median colour (the object covers far less than half
the frame); pixels far from it form a mask whose largest 4-connected component is the object.
Across frames the object must be *coherent*: found in most frames, of steady size, moving along
a straight line. Otherwise nothing is claimed (all three attributes "unknown"), which is what
noise gets. Then:

- colour: the nearest palette colour to the median object colour ("unknown" if none is near);
- shape: the fraction of its bounding box the object fills (square ≈ 1, ball ≈ π/4 ≈ 0.79,
  triangle ≈ 0.5), measured on a mask cut halfway between background and object colour;
- motion: the dominant axis of the centroid's fitted straight-line track ("unknown" if it barely
  moves or moves diagonally).
"""

from __future__ import annotations

import attrs
import numpy as np

from .vocabulary import COLOURS

UNKNOWN = "unknown"
DETECT_DISTANCE = 60.0  # RGB distance from the background that marks a pixel as possibly object
MIN_AREA_FRACTION = 0.002  # smaller components are specks, not the object
MAX_AREA_FRACTION = 0.35  # larger "objects" are a changed background or noise
MIN_FOUND_FRACTION = 0.75  # the object must be found in this share of the frames
STEADY_AREA = (0.5, 2.0)  # a frame's object area relative to the median, to count as the same object
MAX_TRACK_RMS = 0.08  # RMS distance of the centroids from their fitted line, as a fraction of the frame side
MAX_COLOUR_DISTANCE = 90.0  # farther from every palette colour: "unknown" (blue–purple, the closest, are 124 apart)
SHAPE_FILL = {"square": (0.88, 1.01), "ball": (0.66, 0.88), "triangle": (0.36, 0.62)}  # [lo, hi) fill ratio
MAX_ASPECT = 1.6  # bounding boxes more elongated than this are none of the shapes
MIN_TRAVEL_FRACTION = 0.06  # slower than this share of the frame side over the clip counts as still
AXIS_DOMINANCE = 2.0  # the main axis of travel must be this many times the other


@attrs.frozen
class Classification:
    """The three attributes (vocabulary words or "unknown") and the measurements behind them."""

    colour: str
    shape: str
    motion: str
    reason: str = ""  # why nothing was claimed, when the object was not coherent
    fill: float = float("nan")  # median fraction of the bounding box the object fills
    travel: tuple[float, float] = (0.0, 0.0)  # (dx, dy) of the fitted track over the clip, pixels
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  # median object colour


@attrs.frozen
class _Found:
    """The object in one frame."""

    area: int
    centroid: tuple[float, float]  # (x, y)
    fill: float
    aspect: float  # bounding box width / height
    rgb: np.ndarray  # (3,) median colour of the object's pixels


def classify(frames: np.ndarray) -> Classification:
    """Classify a clip given as uint8 (T, H, W, 3) RGB frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected frames (T ≥ 2, H, W, 3), got shape {frames.shape}")
    side = min(frames.shape[1:3])
    found = {t: f for t, frame in enumerate(frames.astype(np.float64)) if (f := find_object(frame)) is not None}
    reason = _incoherence(found, len(frames), side)
    if reason:
        return Classification(UNKNOWN, UNKNOWN, UNKNOWN, reason=reason)
    objs = list(found.values())
    rgb = np.median(np.stack([o.rgb for o in objs]), axis=0)
    fill = float(np.median([o.fill for o in objs]))
    aspect = float(np.median([o.aspect for o in objs]))
    travel = _fitted_travel(found, len(frames))
    return Classification(nearest_colour(rgb), shape_from(fill, aspect), motion_from(travel, side),
                          fill=fill, travel=travel, rgb=tuple(float(c) for c in rgb))


def find_object(frame: np.ndarray) -> _Found | None:
    """The object in one float (H, W, 3) frame: the largest region unlike the background, or None."""
    h, w, _ = frame.shape
    background = np.median(frame.reshape(-1, 3), axis=0)
    distance = np.linalg.norm(frame - background, axis=-1)  # (H, W)
    rough = largest_component(distance > DETECT_DISTANCE)
    if rough.sum() < max(4, MIN_AREA_FRACTION * h * w):
        return None
    core = distance >= np.quantile(distance[rough], 0.75)  # the object's inner, fully covered pixels
    rgb = np.median(frame[rough & core], axis=0)
    half_contrast = np.linalg.norm(rgb - background) / 2
    mask = largest_component(distance > max(half_contrast, DETECT_DISTANCE / 2))
    area = int(mask.sum())
    if not MIN_AREA_FRACTION * h * w <= area <= MAX_AREA_FRACTION * h * w:
        return None
    ys, xs = np.nonzero(mask)
    box_w, box_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    return _Found(area, (float(xs.mean()), float(ys.mean())), area / float(box_w * box_h),
                  box_w / float(box_h), rgb)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a (H, W) bool mask (all False if the mask is empty).

    Every pixel starts labelled with its own flat index; labels shrink to the smallest index
    of their region by repeated neighbour minima, sped up by pointer jumping."""
    if not mask.any():
        return mask.copy()
    h, w = mask.shape
    none = h * w
    label = np.where(mask, np.arange(h * w).reshape(h, w), none)
    while True:
        p = np.pad(label, 1, constant_values=none)
        new = np.minimum.reduce([label, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
        new = np.where(mask, new, none)
        new[mask] = new.reshape(-1)[new[mask]]  # jump to the label's own label: the same region, no larger
        if np.array_equal(new, label):
            break
        label = new
    counts = np.bincount(label[mask])
    return label == counts.argmax()


def _incoherence(found: dict[int, _Found], frames: int, side: int) -> str:
    """Why the per-frame finds are not one object moving in a line ("" when they are)."""
    if len(found) < MIN_FOUND_FRACTION * frames:
        return f"an object is found in only {len(found)} of {frames} frames"
    areas = np.array([o.area for o in found.values()], np.float64)
    steady = (areas >= STEADY_AREA[0] * np.median(areas)) & (areas <= STEADY_AREA[1] * np.median(areas))
    if steady.mean() < MIN_FOUND_FRACTION:
        return "the object's size jumps between frames"
    t = np.array(list(found), np.float64)
    xy = np.array([o.centroid for o in found.values()])  # (N, 2)
    fit = np.polynomial.polynomial.polyfit(t, xy, 1)  # (2, 2): intercepts, slopes
    residual = xy - (fit[0] + t[:, None] * fit[1])
    rms = float(np.sqrt((residual ** 2).sum(axis=1).mean()))
    if rms > MAX_TRACK_RMS * side:
        return f"the object does not move along a line (track RMS {rms:.1f} px)"
    return ""


def _fitted_travel(found: dict[int, _Found], frames: int) -> tuple[float, float]:
    """(dx, dy) over the whole clip from a least-squares line through the centroids."""
    t = np.array(list(found), np.float64)
    xy = np.array([o.centroid for o in found.values()])
    slopes = np.polynomial.polynomial.polyfit(t, xy, 1)[1]
    return float(slopes[0] * (frames - 1)), float(slopes[1] * (frames - 1))


def nearest_colour(rgb: np.ndarray) -> str:
    """The palette colour nearest to ``rgb``, or "unknown" if none is within MAX_COLOUR_DISTANCE."""
    names = list(COLOURS)
    distances = np.linalg.norm(np.array([COLOURS[n] for n in names], np.float64) - rgb, axis=1)
    best = int(distances.argmin())
    return names[best] if distances[best] <= MAX_COLOUR_DISTANCE else UNKNOWN


def shape_from(fill: float, aspect: float) -> str:
    """The shape whose bounding-box fill ratio range holds ``fill``; "unknown" if elongated or between."""
    if not 1 / MAX_ASPECT <= aspect <= MAX_ASPECT:
        return UNKNOWN
    return next((s for s, (lo, hi) in SHAPE_FILL.items() if lo <= fill < hi), UNKNOWN)


def motion_from(travel: tuple[float, float], side: int) -> str:
    """left/right/up/down from the track's (dx, dy), y pointing down; "unknown" if still or diagonal."""
    dx, dy = travel
    major, minor = max(abs(dx), abs(dy)), min(abs(dx), abs(dy))
    if major < MIN_TRAVEL_FRACTION * side or major < AXIS_DOMINANCE * minor:
        return UNKNOWN
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"
