"""LongCat's size buckets: ``[inputs].longcat_resolution`` sizes the clip from the input's aspect
ratio as the authors' ``get_condition_shape`` does (their tables, nearest height/width ratio)."""

from __future__ import annotations

import numpy as np
import pytest

from wanflow.errors import RecipeError
from wanflow.families.longcat import bucket_size
from wanflow.recipe import load_recipe


@pytest.mark.parametrize("size, resolution, expected", [
    ((832, 480), "480p", (832, 480)),  # ratio 0.577: the 0.58 bucket
    ((1280, 720), "480p", (832, 480)),  # 0.5625: 0.58 (0.0175 away) before 0.52 (0.0425)
    ((1280, 720), "720p", (1312, 704)),  # 0.5625: 0.54 (0.0225 away) before 0.59 (0.0275)
    ((56, 40), "480p", (736, 544)),  # 0.714: 0.74 (0.026) before 0.67 (0.044)
    ((40, 56), "720p", (800, 1152)),  # 1.4: 1.44 (0.04) before 1.35 (0.05)
    ((100, 1000), "480p", (320, 1280)),  # 10: past the last bucket, 4.00
])
def test_the_bucket_is_the_authors_nearest_ratio(size, resolution, expected):
    assert bucket_size(*size, resolution) == expected


def _image(path, width: int, height: int):
    from PIL import Image

    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(path)
    return path


def _recipe(tmp_path, inputs: str, extra: str = "") -> str:
    path = tmp_path / "r.toml"
    path.write_text(f'model = "longcat-video"\n{extra}\n[prompt]\ntext = "a cat"\n\n[inputs]\n{inputs}\n')
    return path


def test_an_image_sizes_the_clip_and_show_says_so(tmp_path):
    _image(tmp_path / "wide.png", 56, 40)
    resolved = load_recipe(_recipe(tmp_path, 'image = "wide.png"\nlongcat_resolution = "480p"'))
    assert (resolved.values["video.width"], resolved.values["video.height"]) == (736, 544)
    assert resolved.origins["video.width"] == resolved.origins["video.height"] == "longcat_resolution"
    plain = load_recipe(_recipe(tmp_path, 'image = "wide.png"'))  # unset: the family's 832 x 480
    assert (plain.values["video.width"], plain.values["video.height"]) == (832, 480)


def test_a_video_to_continue_sizes_the_clip_from_its_first_frame(tmp_path):
    from wanflow.output import save_mp4

    pixels = np.zeros((5, 40, 24, 3), dtype=np.uint8)  # 24 wide, 40 high: ratio 1.67
    save_mp4(pixels, tmp_path / "tall.mp4", 8, {}, quality=0)
    resolved = load_recipe(_recipe(tmp_path, 'longcat_video = "tall.mp4"\nlongcat_resolution = "720p"'))
    assert (resolved.values["video.width"], resolved.values["video.height"]) == (736, 1248)  # the 1.70 bucket


def test_a_written_size_or_no_input_is_refused(tmp_path):
    _image(tmp_path / "wide.png", 56, 40)
    with pytest.raises(RecipeError, match=r"\[inputs\]\.longcat_resolution = \"480p\": picks 736 x 544 for the "
                                          r"input's aspect ratio, and the recipe sets \[video\]\.width = 640"):
        load_recipe(_recipe(tmp_path, 'image = "wide.png"\nlongcat_resolution = "480p"', "[video]\nwidth = 640\n"))
    # the bucket's own size written out (as a run archive's resolved.toml writes it) is no conflict
    same = load_recipe(_recipe(tmp_path, 'image = "wide.png"\nlongcat_resolution = "480p"',
                               "[video]\nwidth = 736\nheight = 544\n"))
    assert (same.values["video.width"], same.values["video.height"]) == (736, 544)
    from wanflow.recipe.resolve import load_recipe_text

    again = load_recipe_text(same.canonical_toml(), path=tmp_path / "resolved.toml")  # a run archive reloaded
    assert (again.values["video.width"], again.values["video.height"]) == (736, 544)
    with pytest.raises(RecipeError, match=r"longcat_resolution = \"480p\": picks the size from the aspect ratio "
                                          r"of the input, and there is none"):
        load_recipe(_recipe(tmp_path, 'longcat_resolution = "480p"'))
