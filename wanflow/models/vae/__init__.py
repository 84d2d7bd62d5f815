"""The Wan2.1 and Wan2.2 video VAEs: causal encode/decode with an explicit frame cache and tiling."""

from wanflow.models.vae.autoencoder import VideoVAE
from wanflow.models.vae.config import CONFIGS, WAN21, WAN22, VAEConfig
from wanflow.models.vae.frame_cache import FrameCache
from wanflow.models.vae.tiling import Progress, TileSpec

__all__ = ["CONFIGS", "FrameCache", "Progress", "TileSpec", "VAEConfig", "VideoVAE", "WAN21", "WAN22"]
