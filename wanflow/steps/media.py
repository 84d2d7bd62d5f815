"""Conditioning media as model tensors: images and videos resized and centre-cropped to the video size."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def image_tensor(path: Path, width: int, height: int) -> Any:
    """An input image as a one-frame video: (3, 1, H, W) fp32 in [-1, 1]."""
    import torch

    from wanflow.output import load_image, to_model_image

    return torch.from_numpy(to_model_image(load_image(path, width, height)))


def video_tensor(path: Path, frames: int, width: int, height: int) -> Any:
    """The first ``frames`` frames of an input video: (3, T, H, W) fp32 in [-1, 1]."""
    import torch

    from wanflow.output import load_video, to_model_video

    return torch.from_numpy(to_model_video(load_video(path, frames, width, height)))


def padded_clip(images: list[Any], frames: int) -> Any:
    """[start, zeros…(, end)] (3, F, H, W): the images at the first (and last) frame, mid-grey
    (0 in [-1, 1]) between, as the I2V models were trained to see a clip with given frames."""
    import torch

    _, _, h, w = images[0].shape
    gap = torch.zeros(3, frames - len(images), h, w)
    return torch.cat([images[0], gap, *images[1:]], dim=1)
