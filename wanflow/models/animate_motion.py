"""The LIA motion encoder of Wan2.2-Animate: a face crop -> one motion vector.

From LIA (Wang et al. 2022, "Latent Image Animator"), StyleGAN2 building blocks: convolutions
and linear layers whose weights are scaled by 1/sqrt(fan_in) at run time (equalised learning
rate), a leaky ReLU with a per-channel bias and a sqrt(2) gain, and a fixed [1, 3, 3, 1] blur
before every stride-2 convolution (anti-aliasing). Each face crop (size x size, in [-1, 1])
goes through a 1x1 conv, ResBlocks that halve it down to 4 px, a 4x4 conv and five linear
layers (no activations between them) to ``motion_dim`` coefficients alpha; the motion vector is
``sum_i alpha_i q_i`` over the orthonormalised columns q_i of a learned direction matrix (QR,
in fp32).

Module names equal the released keys (``motion_encoder.enc.net_app.convs.1.conv2.0.kernel``),
the blur kernels included: they are stored in the released file, so they are buffers here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wanflow.models.animate_config import MotionEncoderConfig

#: The blur's separable taps (StyleGAN2); the 2-D kernel is their outer product, summing to 1.
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)

#: FusedLeakyReLU's slope and gain (sqrt(2) keeps the activations' variance).
LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)


def blur_kernel() -> Tensor:
    """outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64: the fixed FIR filter every Blur holds (4, 4) fp32."""
    taps = torch.tensor(BLUR_TAPS)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


class Blur(nn.Module):
    """Depthwise FIR filtering with zero padding (StyleGAN2's upfirdn2d at up = down = 1)."""

    def __init__(self, pad: tuple[int, int]):
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", blur_kernel())

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        kernel = self.kernel.flip(0, 1).to(x.dtype)  # a convolution, not a correlation
        kernel = kernel.expand(channels, 1, *kernel.shape)  # (C, 1, 4, 4): one filter per channel
        before, after = self.pad
        return F.conv2d(F.pad(x, (before, after, before, after)), kernel, groups=channels)


class EqualConv2d(nn.Module):
    """Conv2d without bias whose weight is scaled by 1/sqrt(in_channels * k * k) at run time."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2), the bias per channel (stored (1, C, 1, 1))."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.bias, LEAKY_SLOPE) * LEAKY_GAIN


class EqualLinear(nn.Module):
    """Linear layer whose weight is scaled by 1/sqrt(in_features) at run time."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1 / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def conv_layer(in_channels: int, out_channels: int, kernel_size: int, *, downsample: bool = False,
               activate: bool = True) -> nn.Sequential:
    """[Blur,] EqualConv2d[, FusedLeakyReLU]: keys ``N.0``, ``N.1``... as released.

    A stride-2 conv is blurred first, padded so the output is exactly half the input."""
    layers: list[nn.Module] = []
    if downsample:
        pad = len(BLUR_TAPS) - 2 + kernel_size - 1  # 4 for a 3x3 conv, 2 for the 1x1 skip
        layers.append(Blur(((pad + 1) // 2, pad // 2)))
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=2))
    else:
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))
    if activate:
        layers.append(FusedLeakyReLU(out_channels))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """(conv 3x3, blurred conv 3x3 stride 2) plus a blurred 1x1 stride-2 skip, over sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv_layer(in_channels, in_channels, 3)
        self.conv2 = conv_layer(in_channels, out_channels, 3, downsample=True)
        self.skip = conv_layer(in_channels, out_channels, 1, downsample=True, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class AppearanceEncoder(nn.Module):
    """``net_app``: 1x1 conv, ResBlocks down to 4 px, a 4x4 conv to one style vector."""

    def __init__(self, cfg: MotionEncoderConfig):
        super().__init__()
        widths = cfg.widths
        self.convs = nn.ModuleList([conv_layer(3, widths[0], 1)])
        self.convs.extend(ResBlock(widths[i], widths[i + 1]) for i in range(cfg.res_blocks))
        self.convs.append(EqualConv2d(widths[-1], cfg.style_dim, 4))

    def forward(self, faces: Tensor) -> Tensor:
        """(N, 3, size, size) -> (N, style_dim)."""
        for conv in self.convs:
            faces = conv(faces)
        return faces.flatten(1)  # (N, style_dim, 1, 1) -> (N, style_dim)


class Encoder(nn.Module):
    """``enc``: the appearance convs, then ``fc`` (linear layers, no activations) to alpha."""

    def __init__(self, cfg: MotionEncoderConfig):
        super().__init__()
        self.net_app = AppearanceEncoder(cfg)
        widths = [cfg.style_dim] * cfg.fc_layers + [cfg.motion_dim]
        self.fc = nn.Sequential(*(EqualLinear(widths[i], widths[i + 1]) for i in range(cfg.fc_layers)))

    def forward(self, faces: Tensor) -> Tensor:
        """(N, 3, size, size) -> alpha (N, motion_dim)."""
        return self.fc(self.net_app(faces))


class Direction(nn.Module):
    """The motion basis: a learned (direction_dim, motion_dim) matrix, orthonormalised by QR."""

    def __init__(self, cfg: MotionEncoderConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cfg.direction_dim, cfg.motion_dim))

    def forward(self, alpha: Tensor) -> Tensor:
        """alpha (N, motion_dim) -> sum_i alpha_i q_i (N, direction_dim), computed in fp32."""
        basis = torch.linalg.qr(self.weight.float() + 1e-8).Q  # (direction_dim, motion_dim)
        return (alpha.float() @ basis.T).to(alpha.dtype)


class Synthesis(nn.Module):
    """``dec``: of LIA's generator, Animate keeps only the direction basis."""

    def __init__(self, cfg: MotionEncoderConfig):
        super().__init__()
        self.direction = Direction(cfg)


class MotionEncoder(nn.Module):
    """Face crops (N, 3, size, size) in [-1, 1] -> motion vectors (N, direction_dim)."""

    def __init__(self, cfg: MotionEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.enc = Encoder(cfg)
        self.dec = Synthesis(cfg)

    def forward(self, faces: Tensor) -> Tensor:
        alpha = self.enc(faces.to(self.enc.fc[0].weight.dtype))  # (N, motion_dim)
        return self.dec.direction(alpha)
