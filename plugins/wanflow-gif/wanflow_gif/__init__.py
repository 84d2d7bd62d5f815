"""wanflow-gif: animated GIF output for wanflow, registered through the public plugin hooks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from wanflow.plugins import SaverEntry, hookimpl

if TYPE_CHECKING:  # loaded on every wanflow command: numpy and Pillow only when saving
    import numpy as np

__version__ = "0.1.0"


def save_gif(frames: np.ndarray, path: Path, fps: float, metadata: Mapping[str, object]) -> list[Path]:
    """Write frames (T, H, W, 3) uint8 as a looping GIF; the metadata goes in the GIF comment."""
    import numpy as np
    from PIL import Image

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    images = [Image.fromarray(frame) for frame in frames]
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], loop=0, optimize=False,
                   duration=max(1, round(1000 / fps)), comment=json.dumps(dict(metadata), sort_keys=True))
    return [path]


@hookimpl
def wanflow_savers() -> list[SaverEntry]:
    return [SaverEntry("gif", ".gif", lambda: save_gif, "animated GIF (Pillow), for previews and chats")]
