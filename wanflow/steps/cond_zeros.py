"""zero-conditioning: a conditioner's tensor when its optional input is absent.

The Wan-Fun models were trained with and without a start image: without one they see zero
image channels and zero CLIP tokens, which still fill the DiT's input channels and image
tokens. The shape is fixed at planning (it follows the clip's size), so the key says it all.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Zeros:
    """{name: zeros(shape)} in fp32."""

    name: str  # the tensor's name, as the kind's hand-off reads it ("y", "clip", "latents")
    shape: tuple[int, ...]
    kind: str = "zero-conditioning"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ()

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        return {self.name: torch.zeros(self.shape)}
