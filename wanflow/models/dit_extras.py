"""What a derivative DiT reads besides x, t, the text context, CLIP tokens and y.

The derivative models (VACE, Wan-Fun Control/Camera, speed control) are the Wan DiT plus a little:
a parallel stack of blocks that emits additive hints, reference tokens prepended by ``ref_conv``,
a camera adapter added to the patch embedding, an offset added to the block modulation. Each of
those reads one tensor per forward; this record carries them, so the model's signature and the
denoise loop stay the same whatever the family. Conditioners (the pipeline side) build it; the DiT
refuses a field its weights cannot use, and a missing field its weights require.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class DitExtras:
    """Per-forward inputs of the DiT's optional parts; None = not given.

    Batch dimensions are 1 or the batch of x (expanded); frame dimensions cover the frames of x
    (a sliding window cuts them with ``frames``).
    """

    #: VACE: (B, 96, F, h, w) = [inactive (16), reactive (16), mask (64)] latents, with the
    #: reference frames prepended along F exactly as x has them.
    vace_context: Any = None
    #: VACE: the hints' weight; one scalar, or one per VACE block (a sequence).
    vace_scale: Any = 1.0
    #: Wan-Fun V1.1 / 2.2 Control: (B, 16, h, w) VAE latent of the reference image; ``ref_conv``
    #: turns it into tokens prepended to the video's (RoPE frame 0), dropped before the head.
    reference: Any = None
    #: Wan-Fun Control-Camera: (B, 24, F, 8h, 8w) packed Plücker embedding at pixel resolution,
    #: through ``control_adapter`` and added to the patch-embedded x.
    camera: Any = None
    #: Speed control: (B, 6, D) added to every block's time modulation (not to the head's).
    modulation: Any = None

    def frames(self, window: slice) -> DitExtras:
        """These extras for the latent frames ``window`` of x (a sliding window); the reference
        and the modulation hold no frames."""
        return attrs.evolve(
            self,
            vace_context=None if self.vace_context is None else self.vace_context[:, :, window],
            camera=None if self.camera is None else self.camera[:, :, window],
        )

    def frame_counts(self) -> dict[str, int]:
        """The latent frames each framed tensor holds (``frames`` cuts them), by field name."""
        framed = (("vace_context", self.vace_context), ("camera", self.camera))
        return {name: int(t.shape[2]) for name, t in framed if t is not None}

    def for_prompt(self, prompt: str) -> DitExtras:
        """These extras for the guidance pass of ``prompt`` ("pos", "neg", or "pair": [pos; neg]
        rows): the same for every pass, unless a model's extras pair an input with the prompt
        (Video-As-Prompt's reference caption)."""
        return self

    def expand(self, rows: int) -> DitExtras:
        """Batch-1 tensors repeated to ``rows`` (guidance batches cond and uncond)."""

        def grown(t: Any) -> Any:
            return t if t is None or t.shape[0] == rows else t.expand(rows, *t.shape[1:])

        return attrs.evolve(self, vace_context=grown(self.vace_context), reference=grown(self.reference),
                            camera=grown(self.camera), modulation=grown(self.modulation))

    def to(self, device: Any) -> DitExtras:
        """Tensors moved to ``device`` (dtypes are the model's business)."""

        def moved(t: Any) -> Any:
            return None if t is None else t.to(device)

        return attrs.evolve(self, vace_context=moved(self.vace_context), reference=moved(self.reference),
                            camera=moved(self.camera), modulation=moved(self.modulation))

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.vace_context, self.reference, self.camera, self.modulation))
