"""Animate's DiT extras as guidance passes them: the face video's tokens in the conditional pass,
black crops' tokens in the unconditional one (as the official code and diffusers do)."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from wanflow.models.animate import AnimateExtras, PreparedFace


@attrs.frozen
class GuidedAnimateExtras(AnimateExtras):
    """``AnimateExtras`` whose face follows the pass: ``face`` for "pos", ``uncond_face`` for "neg",
    both (in that order) for "pair" (cfg_merge's [cond; uncond] rows); the pose is the same."""

    uncond_face: Any = None  # PreparedFace of unconditional_face crops

    def for_prompt(self, prompt: str) -> GuidedAnimateExtras:
        if prompt == "neg":
            return attrs.evolve(self, face=self.uncond_face)
        if prompt == "pair":
            return attrs.evolve(self, face=PreparedFace(torch.cat([self.face.tokens, self.uncond_face.tokens])))
        return self

    def to(self, device: Any) -> GuidedAnimateExtras:
        moved = AnimateExtras.to(self, device)
        return attrs.evolve(moved, uncond_face=None if self.uncond_face is None else self.uncond_face.to(device))
