"""LongCat-Video's size buckets: ``[inputs].longcat_resolution`` picks ``[video].width`` and height
from the input's aspect ratio, as the authors' ``generate_i2v`` and ``generate_vc`` do.

Their ``get_condition_shape(condition, resolution)`` takes the height/width ratio of the image
(or of the video's first frame) and the bucket nearest it (``families.longcat.SIZE_BUCKETS``).
The size is settled here, when the recipe is resolved, because every check and every step's key
reads ``[video].width`` and height: so this module reads the input's pixel size
(``wanflow.media_size``: torch-free, the image's EXIF orientation applied, as every image input
is loaded). The input is then resized and centre-cropped to the bucket as any input is (the authors resize it to the
bucket without cropping; the bucket being the nearest ratio, the crop is a few percent).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from wanflow.families.longcat import PIPELINE, bucket_size
from wanflow.families.spec import FamilySpec
from wanflow.media_size import file_pixel_size
from wanflow.recipe.problems import Problems
from wanflow.recipe.schema import Recipe

KEY = ("inputs", "longcat_resolution")
#: The label ``wanflow show`` gives the width and height a bucket set.
LABEL = "longcat_resolution"


def with_bucket_size(recipe: Recipe, family: FamilySpec, origins: Mapping[tuple, Any],
                     paths: Mapping[tuple, tuple[str, Path]], problems: Problems) -> tuple[Recipe, bool]:
    """The recipe with ``[video].width`` and height of the authors' bucket for its input (a written
    size must equal it), and whether they were set so; the recipe as it is when
    ``longcat_resolution`` is unset or cannot apply (each such case is a problem here, or another
    family's, refused in ``longcat_rules``)."""
    resolution, inputs = recipe.inputs.longcat_resolution, recipe.inputs
    if resolution is None or family.pipeline != PIPELINE or problems.is_bad(KEY):
        return recipe, False
    if recipe.train is not None:
        problems.add(KEY, resolution, "sizes a generated clip from its input; a training stage reads its "
                     "dataset at [video].width x height: remove it")
        return recipe, False
    source = ("inputs", "image") if inputs.image is not None else (
        ("inputs", "longcat_video") if inputs.longcat_video is not None else None)
    if source is None:
        problems.add(KEY, resolution, "picks the size from the aspect ratio of the input, and there is none: set "
                     "[inputs].image or [inputs].longcat_video, or remove it and set [video].width and height")
        return recipe, False
    size = file_pixel_size(Path(paths[source][1])) if source in paths else None
    if size is None:
        return recipe, False  # the file checks say why the input cannot be read
    width, height = bucket_size(size[0], size[1], resolution)
    picked = {"width": width, "height": height}
    # a written size must be the bucket's (a run archive's resolved.toml writes every value)
    other = [f"[video].{name} = {getattr(recipe.video, name)}" for name in picked
             if ("video", name) in origins and getattr(recipe.video, name) != picked[name]]
    if other:
        problems.add(KEY, resolution, f"picks {width} x {height} for the input's aspect ratio, and the recipe "
                     f"sets {' and '.join(other)}: remove [video].width and height, or this setting")
        return recipe, False
    return attrs.evolve(recipe, video=attrs.evolve(recipe.video, **picked)), True
