"""What blocks beside a DiT's stack keep in its train step (``train_estimate.TrainSetup.side_blocks``).

Wan2.2-S2V's audio injectors and Wan2.2-Animate's face blocks each run on a block's output, and
checkpointing never recomputes them: what they keep for backward is held from the forward to
backward's start, as a trained part's is (``train_estimate.Parts.side_blocks``). Counted on tiny
models (``tests/memory/test_train_sides.py``). No torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import attrs

from wanflow.memory.estimates import FP32, dit_tokens
from wanflow.models.dit_config import DitConfig

if TYPE_CHECKING:
    from wanflow.memory.train_estimate import Adapters, TrainSetup


@attrs.frozen
class SideBlocks:
    """Blocks beside the stack that each run after a block of it, on its output, and that
    checkpointing never recomputes: what they keep for backward is held from the forward to
    backward's start, as a trained part's is (``Parts.side_blocks``).

    ``"audio"``: Wan2.2-S2V's audio injectors, over the video tokens after the reference (latent
    frame 0 of a training clip, which the bucket's grid counts; a training sample has no motion
    tokens). ``"face"``: Wan2.2-Animate's face blocks, frozen under a LoRA (full fine-tuning
    trains them as ``Parts``), over every token. ``adapters``: a LoRA's in one of them, the
    layers that read those tokens (``token_inputs``, ``token_layers``)."""

    kind: Literal["audio", "face"]
    count: int
    adapters: Adapters | None = None


#: Halves of the D-wide values at the compute itemsize an S2V audio injector keeps per video token
#: (counted): frozen, as a LoRA's gradient passes through it, 7 (its adaptive norm's input and
#: output, the normed queries, attention's output); trained, 11 (its q and o projections' inputs
#: besides).
AUDIO_INJECTOR_HALVES = {"lora": 7, "full": 11}
#: D-wide values at the compute itemsize a frozen face block keeps per token (counted): its norm's
#: input and output and attention's output; its query norm's fp32 view adds ``4 D``.
FACE_CARRIED = 3


def side_block_bytes(cfg: DitConfig, setup: TrainSetup) -> int:
    """Held through one forward by the blocks beside the stack (``TrainSetup.side_blocks``)."""
    s, d = setup.itemsize, cfg.dim
    frames, height, width = setup.grid
    total = 0
    for side in setup.side_blocks:
        if side.kind == "audio":
            tokens = setup.batch * dit_tokens(cfg, (frames - 1, height, width))
            held = AUDIO_INJECTOR_HALVES[setup.method] * s * d // 2
        else:
            tokens = setup.batch * dit_tokens(cfg, setup.grid)
            held = FACE_CARRIED * s * d + FP32 * d
        a = side.adapters
        if a is not None:  # at fp32 an adapter's input is a tensor the block keeps anyway
            held += FP32 * (a.token_inputs if s < FP32 else 0) + FP32 * a.rank * a.token_layers
        total += side.count * tokens * held
    return total
