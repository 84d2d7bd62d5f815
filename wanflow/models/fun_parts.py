"""The two modules Wan-Fun adds to the DiT: ``ref_conv`` reference tokens and the camera adapter.

- ``ref_conv`` (V1.1 Control, Wan2.2 Control): a Conv2d 16 -> D, kernel = stride = 2, turns the
  VAE latent of a reference image into one frame of tokens placed before the video's. RoPE sees
  them as frame 0 (the video moves to frames 1..F); they share the global time modulation (a
  per-token t is padded in front with its last value, as the Fun authors do) and are dropped
  before the head.
- ``control_adapter`` (Control-Camera): per latent frame, PixelUnshuffle(8) of the packed Plücker
  embedding (24 -> 1536 channels at 1/8 the pixel size), a Conv2d to D with kernel = stride = 2
  (the patch grid), then one residual block (conv 3x3, ReLU, conv 3x3, plus its input); the
  result is added to the patch-embedded latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wanflow.errors import ModelInputError

#: The camera input is at pixel resolution: 8 pixels per latent row/column (the Wan2.1 VAE).
CAMERA_DOWNSCALE = 8


class ResidualBlock(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3, plus the input (width kept)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class CameraAdapter(nn.Module):
    """Packed Plücker embedding (B, C, F, 8h·2, 8w·2) -> patch-grid features (B, D, F, h, w)."""

    def __init__(self, in_dim: int, dim: int, patch: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(in_dim * CAMERA_DOWNSCALE**2, dim, kernel_size=patch, stride=patch)
        self.residual_blocks = nn.Sequential(ResidualBlock(dim))

    def forward(self, camera: Tensor) -> Tensor:
        batch, frames = camera.shape[0], camera.shape[2]
        x = camera.transpose(1, 2).flatten(0, 1)  # (B*F, C, H, W): each frame on its own
        x = F.pixel_unshuffle(x, CAMERA_DOWNSCALE)  # (B*F, C*64, H/8, W/8), channel = c*64 + dy*8 + dx
        x = self.residual_blocks(self.conv(x.to(self.conv.weight.dtype)))  # (B*F, D, h, w)
        return x.unflatten(0, (batch, frames)).transpose(1, 2)  # (B, D, F, h, w)


def reference_tokens(ref_conv: nn.Conv2d, reference: Tensor) -> Tensor:
    """``ref_conv`` of the reference latent (B, 16, H, W), as tokens (B, H/2 * W/2, D)."""
    return ref_conv(reference.to(ref_conv.weight.dtype)).flatten(2).transpose(1, 2)


def padded_timesteps(t: Tensor, prefix: int) -> Tensor:
    """Per-token t (B, L) with ``prefix`` leading entries for the reference tokens, each the
    last token's t (the Fun authors' choice); a global t (B,) is left as it is."""
    if t.ndim == 1 or not prefix:
        return t
    return torch.cat([t[:, -1:].expand(-1, prefix), t], dim=1)  # (B, prefix + L)


def check_reference(reference: Tensor, x_shape, in_dim: int) -> None:
    """The reference latent is one frame of x's size; batch 1 or x's."""
    batch, _, _, height, width = x_shape
    if reference.ndim != 4 or reference.shape[0] not in (1, batch) or tuple(reference.shape[1:]) != (
            in_dim, height, width):
        raise ModelInputError(
            f"reference: shape {tuple(reference.shape)}; ref_conv takes the latent of one reference "
            f"image ({batch}, {in_dim}, {height}, {width}), the size of the video's latents."
        )


def check_camera(camera: Tensor, x_shape, in_dim: int) -> None:
    """The camera input has x's frames at pixel resolution (8x the latent's size)."""
    batch, _, frames, height, width = x_shape
    want = (in_dim, frames, height * CAMERA_DOWNSCALE, width * CAMERA_DOWNSCALE)
    if camera.ndim != 5 or camera.shape[0] not in (1, batch) or tuple(camera.shape[1:]) != want:
        raise ModelInputError(
            f"camera: shape {tuple(camera.shape)}; the camera adapter takes the packed Plücker "
            f"embedding ({batch}, {', '.join(map(str, want))}): one entry per latent frame, at pixel size."
        )
