"""Media in and out: conditioning images and videos as arrays, mp4 and PNG outputs with metadata."""

from wanflow.output.media import (
    cover_crop,
    describe_file,
    load_image,
    load_video,
    to_model_image,
    to_model_video,
    to_uint8_frames,
)
from wanflow.output.video import (
    read_mp4_metadata,
    read_mp4_tags,
    save_mp4,
    save_png_frames,
)

__all__ = ["cover_crop", "describe_file", "load_image", "load_video", "read_mp4_metadata", "read_mp4_tags",
           "save_mp4", "save_png_frames", "to_model_image", "to_model_video", "to_uint8_frames"]
