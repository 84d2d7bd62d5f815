"""Training sizes: the (frames, height, width) each clip is cropped to, and the buckets that group them.

A batch holds clips of one size, so every clip is given a target from a small set: a fixed size, or
(dynamic resolution) its own aspect scaled under a pixel budget, optionally snapped to a list of
aspect ratios, and a frame count 4n+1 (the VAE packs 4 frames per latent after the first). Sides
are multiples of the family's spatial factor (VAE stride × DiT patch: 16 for the Wan2.1 VAE, 32 for
Wan2.2's), never a constant. Everything here is a pure function of the media's size and length, so
the same dataset always gets the same buckets.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import attrs


@attrs.frozen(order=True)
class Target:
    """The clip a sample trains on: ``frames`` frames of ``width``×``height`` pixels."""

    frames: int
    height: int
    width: int

    @property
    def bucket(self) -> str:
        """The bucket's name, ``WIDTHxHEIGHTxFRAMES``: samples that can share a batch share it."""
        return f"{self.width}x{self.height}x{self.frames}"


@attrs.frozen
class Sizing:
    """How clips are sized; build it with ``Sizing.for_family`` so the spatial factor is the family's."""

    spatial_factor: int  # the family's: 16 (Wan2.1 VAE) or 32 (Wan2.2 VAE)
    width: int | None = None  # fixed size: width and height both set; else dynamic resolution
    height: int | None = None
    max_pixels: int = 1024 * 1024  # DiffSynth's default budget for dynamic resolution
    aspect_ratios: tuple[float, ...] = ()  # width/height buckets; (): each clip keeps its aspect
    max_frames: int = 81  # DiffSynth's default clip length (5 s at 16 fps)
    min_frames: int = 1  # videos shorter than this are refused
    frame_buckets: tuple[int, ...] = ()  # allowed lengths (each 4n+1); (): any 4n+1 ≤ max_frames

    @classmethod
    def for_family(cls, family, **settings) -> Sizing:
        """Sizing with ``family.spatial_factor`` (a ``FamilySpec``) and the given settings."""
        return cls(family.spatial_factor, **settings)

    @property
    def fixed(self) -> bool:
        return self.width is not None or self.height is not None

    def problems(self) -> list[str]:
        """Every setting that cannot work, each with its fix (empty when all is well)."""
        f, found = self.spatial_factor, []
        if f < 1:
            return [f"spatial_factor = {f}: must be a positive integer (the family's VAE stride × patch)"]
        if self.fixed:
            found += _fixed_problems(self.width, self.height, f)
        if self.max_pixels < f * f:
            found.append(f"max_pixels = {self.max_pixels}: smaller than one {f}x{f} tile; use at least {f * f}")
        found += [f"aspect_ratios: {a!r} is not a positive width/height ratio; use e.g. 1.777 for 16:9"
                  for a in self.aspect_ratios if not a > 0]
        if not _four_n_plus_one(self.max_frames):
            found.append(f"max_frames = {self.max_frames}: must be 4n+1; use {_nearest_4n1(self.max_frames)}")
        if not 1 <= self.min_frames <= self.max_frames:
            found.append(f"min_frames = {self.min_frames}: must be between 1 and max_frames ({self.max_frames})")
        found += [f"frame_buckets: {n} must be 4n+1 and ≤ max_frames ({self.max_frames}); use "
                  f"{min(_nearest_4n1(n), self.max_frames)}"
                  for n in self.frame_buckets if not (_four_n_plus_one(n) and n <= self.max_frames)]
        return found


def _fixed_problems(width: int | None, height: int | None, f: int) -> list[str]:
    if width is None or height is None:
        return ["width and height: set both for a fixed size, or neither for dynamic resolution"]
    return [f"{name} = {v}: must be a positive multiple of {f} (the family's spatial factor); use "
            f"{max(f, round(v / f) * f)}" for name, v in (("width", width), ("height", height)) if v < f or v % f]


def _four_n_plus_one(n: int) -> bool:
    return n >= 1 and (n - 1) % 4 == 0


def _nearest_4n1(n: int) -> int:
    return max(1, round((n - 1) / 4) * 4 + 1)


def frames_for(available: int, sizing: Sizing) -> int:
    """The clip length: the largest allowed 4n+1 ≤ min(available, max_frames); 0 when none fits."""
    cap = min(available, sizing.max_frames)
    if sizing.frame_buckets:
        return max((n for n in sizing.frame_buckets if n <= cap), default=0)
    return (cap - 1) // 4 * 4 + 1 if cap >= 1 else 0


def nearest_aspect(width: int, height: int, ratios: Iterable[float]) -> float:
    """The listed width/height ratio closest to the media's, on a log scale (ties: the smaller ratio)."""
    own = math.log(width / height)
    return min(ratios, key=lambda r: (abs(math.log(r) - own), r))


def size_for(width: int, height: int, sizing: Sizing) -> tuple[int, int]:
    """(width, height) of the target, each a multiple of the spatial factor, area ≤ max_pixels.

    Own aspect (DiffSynth's rule): shrink by √(max_pixels / area) when larger, never enlarge, then
    floor each side. Aspect buckets: the bucket's ratio at the full pixel budget, whatever the
    source size (a bucket has one size, so small clips are enlarged).
    """
    f = sizing.spatial_factor
    if sizing.fixed:
        return sizing.width, sizing.height
    if sizing.aspect_ratios:
        ratio = nearest_aspect(width, height, sizing.aspect_ratios)
        h = math.sqrt(sizing.max_pixels / ratio)
        return _floor(ratio * h, f), _floor(h, f)
    if width * height <= sizing.max_pixels:
        return max(f, width // f * f), max(f, height // f * f)
    scale = math.sqrt(sizing.max_pixels / (width * height))
    return _floor(width * scale, f), _floor(height * scale, f)


def _floor(side: float, factor: int) -> int:
    return max(factor, int(side + 1e-9) // factor * factor)


def target_for(width: int, height: int, frames: int | None, sizing: Sizing) -> Target | None:
    """The target of one sample (``frames`` None: an image, one frame); None when the video is too short."""
    w, h = size_for(width, height, sizing)
    if frames is None:
        return Target(1, h, w)
    n = frames_for(frames, sizing)
    return Target(n, h, w) if n >= sizing.min_frames else None


@attrs.frozen
class BucketRow:
    """One line of the bucket table: a size and how many samples train at it."""

    bucket: str
    width: int
    height: int
    frames: int
    count: int


def bucket_table(targets: Iterable[Target]) -> tuple[BucketRow, ...]:
    """Samples per bucket, ordered by frames, then height, then width (stable across runs)."""
    counts = Counter(targets)
    return tuple(BucketRow(t.bucket, t.width, t.height, t.frames, n) for t, n in sorted(counts.items()))


def format_bucket_table(rows: Iterable[BucketRow]) -> str:
    """The bucket table as aligned text, for logs and ``explain``."""
    lines = [f"{'bucket':>16}  {'width':>5}  {'height':>6}  {'frames':>6}  {'samples':>7}"]
    lines += [f"{r.bucket:>16}  {r.width:>5}  {r.height:>6}  {r.frames:>6}  {r.count:>7}" for r in rows]
    return "\n".join(lines)
