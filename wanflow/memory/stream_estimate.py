"""A Video-As-Prompt DiT's forward: the video's tokens and its reference stream's.

The reference video sits on the clip's latent grid and travels through the block stack beside
the video as one (B, L + L_ref, D) tensor, so every token-sized tensor of a Wan DiT's forward is
there twice; each block the stream joins also holds the stream's keys and values of the
reference caption and image (prepared once per prompt, like the main context's), and both
streams have their RoPE tables (fp32 cos and sin). Sized as a Wan DiT's forward, the released
model's would be planned at less than half of what it holds (``tests/memory/test_stream_estimate.py``
counts it on tiny models, within 20 % like every forward estimate).
"""

from __future__ import annotations

from collections.abc import Iterable

from wanflow.memory.estimates import FP32, dit_forward_bytes, dit_tokens
from wanflow.models.dit_config import DitConfig
from wanflow.models.full_training import stream_name
from wanflow.models.vap_config import mot_layers_in


def joined_blocks(names: Iterable[str]) -> int:
    """Blocks a reference stream joins, from a checkpoint's tensor names (released or wanflow's):
    0 for a DiT without one."""
    return len(mot_layers_in({stream_name(n) for n in names}))


def reference_forward_bytes(cfg: DitConfig, grid: tuple[int, int, int], itemsize: int, joined: int, *,
                            batch: int = 1, prepared_contexts: int = 0, per_token_time: bool = False) -> int:
    """Peak activation bytes of one forward of a DiT whose reference stream joins ``joined`` blocks
    (``dit_forward_bytes``'s arguments otherwise)."""
    video = dit_forward_bytes(cfg, grid, itemsize, batch=batch, prepared_contexts=prepared_contexts,
                              per_token_time=per_token_time, streams=2)
    contexts = max(1, prepared_contexts) * joined * 2 * itemsize * batch * (cfg.text_len + cfg.image_len) * cfg.dim
    rope = 2 * 2 * FP32 * cfg.head_dim * batch * dit_tokens(cfg, grid)
    return video + contexts + rope
