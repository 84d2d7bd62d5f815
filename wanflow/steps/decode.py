"""decode: latents to uint8 frames through the family's VAE, tiled as the recipe says."""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.conditioning import VAE_READS, tile_spec
from wanflow.steps.text import RUNTIME_READS


@attrs.frozen
class Decode:
    """Frames (T, H, W, 3) uint8, with a progress bar over the VAE tiles."""

    vae_version: str  # "wan2.1" | "wan2.2"
    dtype: str = "auto"  # [models.<component>].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.<component>].device; "cpu" runs it on the CPU
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The memory plan's predicted peak of this step (said if it runs out of memory; not keyed).
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "decode"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.output import to_uint8_frames

        device, dtype = component_runtime(ctx.params, self.dtype, self.device)
        vae = model_pool.vae(ctx.weight("vae"), self.vae_version, dtype, device, self.residency)
        latents = ctx.input("latents")["latents"].to(device=device, dtype=dtype)
        tiles = _TileBar(ctx)
        with torch.no_grad():
            video = vae.decode(latents, tile=tile_spec(ctx.params), progress=tiles)  # (1, 3, F, H, W)
        tiles.close()
        return {"frames": torch.from_numpy(to_uint8_frames(video[0]))}  # (T, H, W, 3)


class _TileBar:
    """Adapts the VAE's (done, total) callback to an engine progress bar made on first call."""

    def __init__(self, ctx: Any):
        self._ctx, self._bar, self._done = ctx, None, 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = self._ctx.progress(total, desc="decode", unit="tile")
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
