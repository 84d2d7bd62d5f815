"""denoise (block-causal): Krea Realtime's latents, generated block by block as its authors do.

The loop is ``wanflow.sampling.krea.sample_blocks`` over the DiT run block-causally
(``CausalWan``): each block of 3 latent frames starts from the run's seeded noise, sees a KV cache
recomputed from the clean context frames, and takes a few predict-x0-then-re-noise steps without
guidance. Once the video outgrows the cache, the context's first frame is re-anchored: the
history is decoded with the VAE and the pixel frame just before the recent context frames is
encoded again as a one-frame latent (``VaeReanchor``), so this step reads the VAE too and its file
is part of the step's key (the pipeline adds it: ``pipeline_krea``). Video-to-video
(``denoising_strength < 1``) starts from the kept source latent that ``source-latent`` hands over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.errors import ModelInputError
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.dit_on_device import step_dit
from wanflow.steps.conditioning import VAE_READS, tile_spec
from wanflow.steps.denoise import DENOISE_READS


@attrs.frozen
class CausalDenoise:
    """Latents (1, z, T, h, w) of a block-causal DiT from noise (or a kept source) and the prompt."""

    dit_files: int  # files of the one DiT ("dit.0" …)
    z_dim: int  # latent channels of the family's VAE
    latent_stride: int  # pixels per latent along height and width
    vae_version: str  # the re-anchor's VAE: "wan2.1"
    #: The denoise input roles of the job's conditioners (the kept source, when there is one).
    conditions: tuple[str, ...] = ()
    dit_dtype: str = "auto"  # [models.dit].dtype; "auto" follows [runtime].dtype
    #: (LoRA weight role, DiT role, scale) in recipe order; the files' digests are weights.
    loras: tuple[tuple[str, str, float], ...] = ()
    #: "fp8": block weights stored in fp8 ([memory].fp8); "fp8-matmul": also multiplied in fp8
    #: ([runtime].fp8_matmul). Both change the numbers (``wanflow.models.fp8.STORAGES``).
    storage: str = "compute"
    vae_dtype: str = "auto"  # [models.vae].dtype
    vae_device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: A plugin's attention backend (keyed through the node's ``uses``); None for wanflow's own.
    attention: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The memory plan's block tiers of the DiT (placement: not keyed; streaming is refused).
    tiers: tuple[str, ...] = attrs.field(default=(), metadata=NOT_KEYED)
    peak: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "denoise-causal"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*DENOISE_READS, *VAE_READS)

    @classmethod
    def replacing(cls, denoise: Any, decode: Any) -> CausalDenoise:
        """The block-causal step for the job a Wan ``Denoise`` step was planned for, with the VAE
        of its ``Decode`` step."""
        if len(denoise.experts) != 1:
            raise ModelInputError("the block-causal sampler runs one DiT; this family has "
                                  f"{len(denoise.experts)} experts")
        (role, files), = denoise.experts
        tiers = dict(denoise.tiers).get(role, ())
        return cls(files, denoise.z_dim, denoise.latent_stride, decode.vae_version, denoise.conditions,
                   dict(denoise.dtypes).get(role, "auto"), denoise.loras, denoise.storage, decode.dtype,
                   decode.device, denoise.residency, denoise.attention, tiers, denoise.peak)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.oom import reported_oom

        with reported_oom(self.kind, self.peak):
            return self._compute(ctx)

    def _compute(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.models.causal_stream import CausalWan
        from wanflow.sampling.krea import KreaSampling, sample_blocks
        from wanflow.steps.cond_call import tensor
        from wanflow.steps.cond_kinds import model_call

        p = ctx.params
        device, _ = component_runtime(p, self.dit_dtype)
        call = model_call(self.conditions, {r: ctx.input(r) for r in self.conditions})
        strength = 1.0 if call.start is None else float(p["sampler.denoising_strength"])
        settings = KreaSampling(steps=p["sampler.steps"], shift=float(p["sampler.shift"]), strength=strength)
        shape = self.latent_shape(p)
        bar = ctx.progress(shape[2] // settings.frames_per_block, desc="denoise", unit="block")
        with torch.no_grad():
            model = CausalWan(self._dit(ctx), tensor(ctx.input("pos"), "context", "pos").to(device))
            latents = sample_blocks(model, shape, p["sampler.seed"], settings, video=call.start,
                                    reanchor=self._reanchor(ctx), device=device,
                                    noise_device=p["sampler.noise_device"], callback=lambda *_: bar.update(1))
        bar.close()
        return {"latents": latents.float().cpu().contiguous()}

    def latent_shape(self, p: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
        """(1, z, T, h, w) of the clip: T = (frames − 1)/4 + 1 latent frames."""
        s = self.latent_stride
        return (1, self.z_dim, (p["video.frames"] - 1) // 4 + 1, p["video.height"] // s, p["video.width"] // s)

    def _dit(self, ctx: Any) -> Any:
        """The DiT from the pool, every block resident (the causal forward runs its modules itself)."""
        if any(tier != "device" for tier in self.tiers):
            raise ModelInputError("the block-causal sampler needs every DiT block on the device, but the memory "
                                  "plan streams some; raise [memory].limit_gb or use a larger device")
        return step_dit(ctx, self.dit_files, self.dit_dtype, self.residency, loras=self.loras, storage=self.storage,
                        attention=self.attention)

    def _reanchor(self, ctx: Any) -> VaeReanchor:
        device, dtype = component_runtime(ctx.params, self.vae_dtype, self.vae_device)
        vae = model_pool.vae(ctx.weight("vae"), self.vae_version, dtype, device, self.residency)
        return VaeReanchor(vae, tile_spec(ctx.params), device, dtype)


@attrs.frozen
class VaeReanchor:
    """Krea's anchor frame: the decoded pixel frame just before the recent context frames, encoded
    again as a one-frame latent (it then reads as the first frame of a video).

    The authors keep the last 1 + 4·recent decoded frames and encode the oldest; that is the last
    pixel frame of latent frame s − recent − 1 of s, which the causal VAE decodes from the latents
    up to it alone."""

    vae: Any
    tile: Any  # the recipe's VAE tiling, or None
    device: str
    dtype: Any

    def __call__(self, history: Any, recent: int) -> Any:
        """(B, z, 1, h, w) fp32 on history's device, from clean latents history (B, z, s, h, w)."""
        kept = history[:, :, :history.shape[2] - recent].to(device=self.device, dtype=self.dtype)
        pixels = self.vae.decode(kept, tile=self.tile)  # (B, 3, 1 + 4(s − recent − 1), H, W)
        latent = self.vae.encode(pixels[:, :, -1:].to(self.dtype), tile=self.tile)  # (B, z, 1, h, w)
        return latent.float().to(history.device)
