"""What a Video-As-Prompt DiT reads per forward besides the Wan inputs: the reference stream's inputs.

The reference video's latents and its first frame's CLIP tokens are the same in every guidance
pass; its caption is not: the authors pair the negative main prompt with the *negative*
reference caption in the unconditional pass. So the record holds both captions and
``for_prompt`` picks the one of a pass ("pos", "neg", or "pair": cfg_merge's [pos; neg] rows),
the way the sampler already picks the main prompt's context. Kept apart from ``vap`` (the
model) so that the model file stays the model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import torch
import torch.nn.functional as F

from wanflow.errors import ModelInputError
from wanflow.models.dit import KeyValues
from wanflow.models.dit_extras import DitExtras


class PreparedReference(NamedTuple):
    """The reference stream's cross-attention keys/values, one per joined block, for every step."""

    kv: tuple[KeyValues, ...]
    batch: int


@attrs.frozen
class VapExtras(DitExtras):
    """``DitExtras`` plus the reference video's inputs (all required by a Video-As-Prompt DiT)."""

    #: (B, 36, F, H, W): the reference video's VAE latent (16), then its first frame's I2V
    #: condition (mask 4, latent 16), on x's latent grid.
    vap_latents: Any = None
    #: umT5 features of the reference caption (B, <=512, 4096), or ``prepare_reference`` of them.
    vap_context: Any = None
    #: CLIP tokens of the reference's first frame (B, 257, 1280); None with a prepared context.
    vap_clip: Any = None
    #: The negative reference caption's features (as ``vap_context``), read by the unconditional
    #: pass through ``for_prompt("neg")``; None when guidance never runs one (cfg = 1).
    vap_negative_context: Any = None

    @classmethod
    def joined(cls, extras: DitExtras | None, **fields: Any) -> VapExtras:
        """``extras`` (another conditioner's, or None) with the reference-stream ``fields`` set;
        a field already set is refused, as ``ModelCall.with_extras`` refuses its own."""
        current = extras if isinstance(extras, VapExtras) else cls(**_fields_of(extras or DitExtras()))
        for name in fields:
            if getattr(current, name) is not None:
                raise ValueError(f"two conditioners set the DiT extra {name!r}; a family declares one")
        return attrs.evolve(current, **fields)

    def base(self) -> DitExtras:
        """The fields every Wan DiT reads, as a plain ``DitExtras``."""
        return DitExtras(**_fields_of(self))

    def for_prompt(self, prompt: str) -> VapExtras:
        """These extras for the pass of ``prompt``: the reference caption "pos" reads is
        ``vap_context``, "neg" the negative one, "pair" both joined along the batch."""
        if prompt == "pos":
            return self
        negative = self.vap_negative_context
        if negative is None:
            raise ModelInputError(
                "vap_negative_context: guidance runs an unconditional pass, which reads the negative reference "
                "caption, and none was encoded; encode [inputs].negative_vap_prompt (or use cfg = 1)."
            )
        if prompt == "neg":
            return attrs.evolve(self, vap_context=negative)
        if prompt == "pair":
            return attrs.evolve(self, vap_context=_joined(self.vap_context, negative))
        raise ValueError(f"for_prompt: {prompt!r}; expected 'pos', 'neg' or 'pair'")

    def frames(self, window: slice) -> VapExtras:
        """The whole clip only: the reference's RoPE frames -F..-1 count from the clip's length."""
        covers = self.vap_latents is None or window.stop is None or window.stop >= self.vap_latents.shape[2]
        if window.start not in (None, 0) or not covers:
            raise ModelInputError(
                f"vap_latents: the reference video covers a whole clip; latent frames {window.start}..{window.stop} "
                "cannot be run apart. Generate the clip whole, not in sliding windows."
            )
        return self

    def expand(self, rows: int) -> VapExtras:
        return attrs.evolve(DitExtras.expand(self, rows), vap_latents=grown(self.vap_latents, rows),
                            vap_context=grown(self.vap_context, rows), vap_clip=grown(self.vap_clip, rows),
                            vap_negative_context=grown(self.vap_negative_context, rows))

    def to(self, device: Any) -> VapExtras:
        return attrs.evolve(DitExtras.to(self, device), vap_latents=_moved(self.vap_latents, device),
                            vap_context=_moved(self.vap_context, device), vap_clip=_moved(self.vap_clip, device),
                            vap_negative_context=_moved(self.vap_negative_context, device))

    @property
    def empty(self) -> bool:
        return self.base().empty and self.vap_latents is None and self.vap_context is None


def _fields_of(extras: DitExtras) -> dict[str, Any]:
    return {f.name: getattr(extras, f.name) for f in attrs.fields(DitExtras)}


def _joined(pos: Any, neg: Any) -> Any:
    """[pos; neg] along the batch: features zero-padded to one length first (the model pads
    them with zeros to ``text_len`` anyway), or prepared keys/values concatenated."""
    if isinstance(pos, PreparedReference):
        kv = tuple(tuple(torch.cat([a, b]) for a, b in zip(p, n, strict=True))
                   for p, n in zip(pos.kv, neg.kv, strict=True))
        return PreparedReference(kv, pos.batch + neg.batch)
    length = max(pos.shape[1], neg.shape[1])
    return torch.cat([F.pad(t, (0, 0, 0, length - t.shape[1])) for t in (pos, neg)])  # (2B, L, C)


def grown(value: Any, rows: int) -> Any:
    """A batch-1 tensor expanded to ``rows``; a prepared context is expanded by the model."""
    if value is None or isinstance(value, PreparedReference) or value.shape[0] == rows:
        return value
    return value.expand(rows, *value.shape[1:])


def _moved(value: Any, device: Any) -> Any:
    if isinstance(value, PreparedReference):
        return PreparedReference(tuple(tuple(t.to(device) for t in kv) for kv in value.kv), value.batch)
    return None if value is None else value.to(device)
