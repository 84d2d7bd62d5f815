"""append-to-input: a continuation's video as the authors' demo writes it, the input video and then the new frames.

``run_demo_video_continuation.py`` saves ``video[::stride] + output[num_cond_frames:]``: every
stride-th frame of the whole input video (the rate the clip plays at, ``longcat_frames``), then
the generated clip without its conditioning frames (they are the input's last frames, which the
input already shows). Its refinement is joined the same way at the refined rate (``video[::stride]``
at 30 fps, then the refined clip after its ``2 · num_cond_frames`` conditioning frames). With
``[inputs].longcat_append_to_input`` wanflow writes that video; without it, the clip alone.

The input's frames are brought to the output's size as the conditioning frames were (resized and
centre-cropped to the frames it is joined to); the authors' demo instead resizes the generated
frames to the input's own size (PIL bicubic), which for an input of the clip's aspect ratio is the
same picture resampled the other way. A long video continuing an input video is joined the same
way: the input, then the joined clips after the first clip's conditioning frames.

The step's key holds the input video's digest, the frame rate, the conditioning frame count and
the refinement's frame factor, and the frames it is joined to. Importing this module does not
import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.steps.longcat_frames import frame_stride, source_rate

#: The node that joins the input video and the generated frames, which the save steps then read.
NODE = "append-to-input"


def input_frames(path: Path, fps: float, width: int, height: int) -> Any:
    """(n, H, W, 3) uint8: every stride-th frame of the whole video from its first (at ``fps``),
    resized and centre-cropped to ``width`` x ``height``."""
    import torch

    from wanflow.output import load_video
    from wanflow.output.probe import video_frames

    st = path.stat()
    count, _ = video_frames(path, 10**7, st.st_size, st.st_mtime_ns)
    stride = frame_stride(source_rate(path), fps)
    return torch.from_numpy(load_video(path, count, width, height)[::stride].copy())


@attrs.frozen
class AppendToInput:
    """"frames" (n + T − held, H, W, 3) uint8: the input video at the output's rate and size, then
    the output's frames after its ``held`` conditioning frames (``longcat_cond_frames · factor``)."""

    factor: int = 1  # the refinement's frame factor (2: twice the frames at twice the rate), else 1
    kind: str = "longcat-append-to-input"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("inputs.longcat_cond_frames", "video.fps")

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        frames = ctx.input("frames")["frames"]  # (T, H, W, 3) uint8
        held = p["inputs.longcat_cond_frames"] * self.factor
        before = input_frames(ctx.file("longcat_video"), p["video.fps"] * self.factor, frames.shape[2],
                              frames.shape[1])
        return {"frames": torch.cat([before, frames[held:]]).contiguous()}


def append_nodes(nodes: Sequence[StepSpec], values: Any, video: Path) -> list[StepSpec]:
    """The plan's nodes with the append step before the saves (which then read it), when
    ``[inputs].longcat_append_to_input`` asks for it; unchanged otherwise."""
    from wanflow.steps.longcat_refine import frame_factor

    if not values["inputs.longcat_append_to_input"]:
        return list(nodes)
    saves = [n for n in nodes if "frames" in n.inputs and n.name.startswith("save")]
    last = saves[0].inputs["frames"]
    factor = frame_factor(values) if values["inputs.longcat_refine"] else 1
    append = StepSpec(NODE, AppendToInput(factor), inputs={"frames": last}, files={"longcat_video": video})
    names = {n.name for n in saves}
    out = []
    for n in nodes:
        if n.name in names:
            n = attrs.evolve(n, inputs={**n.inputs, "frames": NODE})
        out.append(n)
        if n.name == last:
            out.append(append)
    return out
