"""save, with the input recording as the video's audio track: for families whose video follows a
recording (speech-to-video).

The frames are written by the recipe's saver as ``SaveVideo`` writes them, then the node's
``audio`` file is muxed in (``wanflow.output.audio_track``). The file is one of the node's files,
so its content is part of the step's key: another recording re-saves the video. A pipeline opts
in with ``with_audio_track(nodes, path)``; only savers that write mp4 take a track.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.errors import ModelInputError
from wanflow.steps.save import SaveVideo

#: The role the recording arrives under at the save step.
AUDIO_ROLE = "audio"


@attrs.frozen
class SaveVideoWithAudio(SaveVideo):
    """``SaveVideo``'s file with the node's audio file as its sound."""

    kind: str = "save-with-audio"
    version: int = 1

    def finish(self, path: Path, ctx: Any) -> None:
        from wanflow.output.audio_track import add_audio_track

        add_audio_track(path, ctx.file(AUDIO_ROLE))


def with_audio_track(nodes: Sequence[StepSpec], audio: Path) -> list[StepSpec]:
    """``nodes`` with the save node muxing ``audio`` in; a saver that does not write mp4 is refused."""
    out = []
    for node in nodes:
        if node.name == "save":
            saver = node.step.saver
            if saver.suffix != ".mp4":
                raise ModelInputError(f"[output].format: this family's video carries its recording as an audio "
                                      f"track, which the {saver.suffix} saver cannot hold; use \"mp4\"")
            node = attrs.evolve(node, step=SaveVideoWithAudio(saver), files={**node.files, AUDIO_ROLE: audio})
        out.append(node)
    return out
