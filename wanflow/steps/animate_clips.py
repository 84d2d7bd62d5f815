"""How Wan2.2-Animate cuts a video into clips: the official clip loop's arithmetic, torch-free.

A clip is 77 frames (20 latent frames, plus the reference image's). Clips advance by
``clip - overlap`` frames, so each clip after the first starts with the last ``overlap`` frames of
the one before. The driving videos (pose, face, background, mask) are lengthened by ping-pong
repetition (forth, back, forth…) until they fill whole clips; the output is cut back to the asked
length. Every step that reads a driving video, and the loop itself, plans with this one module.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ClipPlan:
    """The clips of a video of ``frames`` output frames."""

    frames: int  # the asked length ([video].frames)
    overlap: int  # frames each clip after the first takes from the previous one ([inputs].overlap_frames)
    clip: int = 77  # frames per clip

    @property
    def advance(self) -> int:
        return self.clip - self.overlap

    @property
    def padded(self) -> int:
        """Frames the driving videos are lengthened to: the asked length, or more, so that after
        the first ``overlap`` frames they fill whole advances (the official ``get_valid_len``)."""
        rest = (self.frames - self.overlap) % self.advance
        return self.frames + (self.advance - rest if rest else 0)

    @property
    def count(self) -> int:
        """Clips to generate; at least one (a short video is one clip, padded)."""
        return (self.padded - self.overlap) // self.advance

    def starts(self) -> list[int]:
        """The first padded frame of each clip."""
        return [i * self.advance for i in range(self.count)]

    def indices(self) -> list[list[int]]:
        """For each clip, the frame of the asked-length video each of its ``clip`` frames shows."""
        order = pingpong(self.frames, self.count * self.advance + self.overlap)
        return [order[s:s + self.clip] for s in self.starts()]


def pingpong(frames: int, length: int) -> list[int]:
    """``length`` indices into ``frames`` frames going forth and back: 0 1 2 3 2 1 0 1 … (the
    official ``inputs_padding``; one frame repeats)."""
    if frames == 1:
        return [0] * length
    out, i, step = [], 0, 1
    while len(out) < length:
        out.append(i)
        if i + step < 0 or i + step >= frames:
            step = -step
        i += step
    return out
