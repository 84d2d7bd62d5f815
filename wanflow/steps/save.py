"""save: the video through the saver that ``output.format`` names, plus its metadata and PNG frames.

These steps read every resolved value (policy fields excepted) so that the recipe digest in the
video's metadata is exactly the digest of what made it.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED


def metadata(params: Mapping[str, Any]) -> dict[str, Any]:
    """What the video carries: the recipe digest and the seed (enough to find and re-run it)."""
    canonical = json.dumps(dict(params), sort_keys=True, ensure_ascii=True, default=str)
    return {"recipe_digest": hashlib.sha256(canonical.encode()).hexdigest(),
            "seed": params["sampler.seed"], "model": params["model"]}


@attrs.frozen
class SaveVideo:
    """The encoded video file's bytes (mp4 by default; any registered saver).

    The saver comes from the plugin registry at planning (a plugin's is keyed by its
    name@version through the node's ``uses``), so this step never consults the registry."""

    saver: Any = attrs.field(metadata=NOT_KEYED)  # a SaverEntry: suffix and how to load save()
    kind: str = "save"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = ("*",)

    def run(self, ctx: Any) -> bytes:
        p = ctx.params
        save = self.saver.load()
        frames = ctx.input("frames")["frames"].numpy()
        extra = {"quality": p["output.quality"]} if "quality" in inspect.signature(save).parameters else {}
        with tempfile.TemporaryDirectory(prefix="wanflow-save-") as tmp:
            path = Path(tmp) / f"video{self.saver.suffix}"
            save(frames, path, self.fps(p), metadata(p), **extra)
            self.finish(path, ctx)
            return path.read_bytes()

    def fps(self, p: Mapping[str, Any]) -> float:
        """The frame rate the video is written at (a subclass's frames may be more)."""
        return p["video.fps"]

    def finish(self, path: Path, ctx: Any) -> None:
        """Change the written file before it is stored (a subclass muxes a sound track in)."""


@attrs.frozen
class SaveMetadata:
    """The sidecar JSON of the video: the same metadata, readable without ffmpeg."""

    kind: str = "save-metadata"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = ("*",)

    def run(self, ctx: Any) -> bytes:
        return (json.dumps(metadata(ctx.params), sort_keys=True, indent=2) + "\n").encode()


@attrs.frozen
class SaveFrames:
    """Every frame as a PNG, in one zip (the archive keeps one file per output)."""

    kind: str = "save-frames"
    version: int = 1
    output: str = "bytes"
    reads: tuple[str, ...] = ("output.png_frames",)

    def run(self, ctx: Any) -> bytes:
        from wanflow.output import save_png_frames

        frames = ctx.input("frames")["frames"].numpy()
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="wanflow-png-") as tmp, \
                zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for path in save_png_frames(frames, tmp):
                zf.writestr(zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0)), path.read_bytes())
        return buf.getvalue()
