"""The job's VAE on its device and dtype, with the recipe's tiling, for steps that encode and
decode inside their own loop (the clip loops of S2V and Animate): fp32 tensors on the CPU in and
out, so the loop's bookkeeping never depends on where the VAE runs."""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.conditioning import tile_spec


@attrs.frozen
class VaeOnDevice:
    """A loaded VAE with its tiling, device and dtype."""

    vae: Any
    tile: Any
    device: str
    dtype: Any

    def encode(self, pixels: Any) -> Any:
        return self.vae.encode(pixels.to(device=self.device, dtype=self.dtype), tile=self.tile).float().cpu()

    def decode(self, latents: Any) -> Any:
        return self.vae.decode(latents.to(device=self.device, dtype=self.dtype), tile=self.tile).float().cpu()


def vae_on_device(ctx: Any, version: str, dtype: str, device: str, residency: Any) -> VaeOnDevice:
    """The step's ``vae`` weight through the model pool, at the component's dtype and device
    (``"auto"``: the run's ``[runtime]``)."""
    run_device, run_dtype = component_runtime(ctx.params, dtype, device)
    vae = model_pool.vae(ctx.weight("vae"), version, run_dtype, run_device, residency)
    return VaeOnDevice(vae, tile_spec(ctx.params), run_device, run_dtype)
