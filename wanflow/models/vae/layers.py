"""Building blocks of both Wan VAEs: causal convolution, RMS norm, residual block, mid-block
attention, resampling with the time convolution, and the encoder/decoder skeletons.

Every layer that looks at earlier frames takes the clip's `FrameCache` (or None for a single
uncached pass over the whole clip); modules themselves keep no state between calls.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wanflow.models.precision import compute_dtype, conv3d, triple
from wanflow.models.vae.frame_cache import FrameCache, number_slots

ResampleMode = Literal["upsample2d", "upsample3d", "downsample2d", "downsample3d"]


def _prepend(x: Tensor, past: Tensor | None, frames: int) -> Tensor:
    """`x` with `frames` frames of history in front: the cached ones, zeros for the rest."""
    have = 0 if past is None else past.shape[2]
    parts = [x.new_zeros(x.shape[0], x.shape[1], frames - have, *x.shape[3:])] if have < frames else []
    parts += [past[:, :, -frames:]] if have else []
    return torch.cat([*parts, x], dim=2)  # (B, C, frames + T, H, W)


def _as(dtype: torch.dtype, *tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(t.to(dtype) for t in tensors)


class CausalConv3d(nn.Conv3d):
    """A 3-D convolution whose output frame t sees input frames <= t (time padded in front only)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple, stride: int | tuple = 1,
                 padding: int | tuple = 0):
        pad = triple(padding)
        super().__init__(cin, cout, triple(kernel), stride=stride, padding=(0, pad[1], pad[2]))
        self.history = 2 * pad[0]  # frames before a chunk that its first outputs need
        self.cached = self.history > 0
        self.slot = -1

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        if not self.cached:
            return conv3d(x, self.weight, self.bias, self.stride, self.padding)
        past = cache.read(self.slot) if cache is not None else None
        if x.shape[2] == 1 and (past is None or past.shape[2] == 0):
            return self._lone_frame(x, cache)
        seq = _prepend(x, past, self.history)  # (B, C, history + T, H, W)
        if cache is not None:
            cache.write(self.slot, seq[:, :, -self.history:].clone())
        return conv3d(seq, self.weight, self.bias, self.stride, self.padding)

    def _lone_frame(self, x: Tensor, cache: FrameCache | None) -> Tensor:
        """A first frame with only zeros before it meets just the kernel's last time tap."""
        if cache is not None:
            cache.write(self.slot, x.clone())  # missing history frames read as zeros
        return conv3d(x, self.weight[:, :, -1:], self.bias, self.stride, self.padding)


class RMSNorm(nn.Module):
    """Scale-invariant channel norm of the Wan VAE: x / ||x||_C * sqrt(C) * gamma."""

    def __init__(self, dim: int, *, images: bool = False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *((1,) * (2 if images else 3))))
        self.scale = dim**0.5

    def forward(self, x: Tensor, dim: int = 1) -> Tensor:
        # Reductions of bf16/fp16 accumulate in fp32 inside torch already; asking for
        # dtype=float32 would first copy all of x to fp32 (146 MB for a 72 MB bf16 chunk at
        # 256 px, and 1.6x the time) for the same rounded norm.
        norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
        gamma = self.gamma if dim == 1 else self.gamma.view(-1)
        return (x / norm.clamp_min(1e-12)).mul_(gamma * self.scale)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a 1x1x1 shortcut where the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.residual = nn.ModuleList([
            RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
            RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1),
        ])  # indices follow the official checkpoint (1, 4: SiLU; 5: dropout, 0 at inference)
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x), inplace=True), cache)
        h = F.silu(norm2(h), inplace=True)  # rebinding frees conv1's output before conv2 runs
        h = conv2(h, cache)
        return h.add_(self.shortcut(x))


class MidAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (frames do not see each other)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        work = compute_dtype(x)  # fp32 on CPUs without bf16 kernels (see models.precision)
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c).to(work)  # (B*T, H*W, C)
        qkv = F.linear(self.norm(tokens, dim=-1), *_as(work, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias))
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # 3 x (B*T, 1, H*W, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B*T, H*W, C)
        out = F.linear(out, *_as(work, self.proj.weight.view(c, c), self.proj.bias)).to(x.dtype)
        return out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3).add_(x)  # (B, C, T, H, W)


class Resample(nn.Module):
    """2x spatial up/down-sampling, and for the 3-D modes 2x in time with a causal time conv."""

    def __init__(self, dim: int, mode: ResampleMode, out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        up = mode.startswith("up")
        conv = nn.Conv2d(dim, out_dim or dim, 3, padding=1) if up else nn.Conv2d(dim, dim, 3, stride=2)
        self.resample = nn.ModuleList([nn.Identity(), conv])  # [0]: the parameter-free up/pad step
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        self.cached = mode == "downsample3d"  # the up time conv caches in its own slot
        self.slot = -1

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, cache)
        x = self._spatial(x)
        if self.mode == "downsample3d":
            x = self._time_down(x, cache)
        return x

    def first_chunk(self, cache: FrameCache | None) -> bool:
        """Whether the next chunk starts the clip (its frame 0 bypasses the time conv)."""
        return cache is None or self.mode != "upsample3d" or cache.read(self.time_conv.slot) is None

    def _spatial(self, x: Tensor) -> Tensor:
        """The per-frame 2-D conv, run as a (1, 3, 3) 3-D conv so that no frame reshuffle is needed."""
        conv = self.resample[1]
        weight = conv.weight.unsqueeze(2)  # (Cout, Cin, 1, 3, 3)
        if self.mode.startswith("up"):
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T, 2H, 2W)
            return conv3d(x, weight, conv.bias, padding=(0, 1, 1))
        return conv3d(F.pad(x, (0, 1, 0, 1)), weight, conv.bias, stride=(1, 2, 2))

    def _time_up(self, x: Tensor, cache: FrameCache | None) -> Tensor:
        """Frame 0 passes through; every later frame becomes two, from a causal time conv."""
        parts = []
        if self.first_chunk(cache):
            parts, x = [x[:, :, :1]], x[:, :, 1:]
            if cache is not None:  # an empty history: frames after 0 see zeros before them
                cache.write(self.time_conv.slot, x[:, :, :0].clone())
        if x.shape[2]:
            y = self.time_conv(x, cache)  # (B, 2C, T, H, W)
            b, c2, t, h, w = y.shape
            y = y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5)  # (B, C, T, 2, H, W)
            parts.append(y.reshape(b, c2 // 2, 2 * t, h, w))  # (B, C, 2T, H, W)
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]

    def _time_down(self, x: Tensor, cache: FrameCache | None) -> Tensor:
        """Frame 0 passes through; then a stride-2 time conv over windows (2i, 2i+1, 2i+2)."""
        past = cache.read(self.slot) if cache is not None else None
        if cache is not None:
            cache.write(self.slot, x[:, :, -1:].clone())
        parts, seq = ([x[:, :, :1]], x) if past is None else ([], torch.cat([past, x], dim=2))
        if seq.shape[2] >= 3:
            parts.append(self.time_conv(seq))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def middle(dim: int) -> nn.ModuleList:
    """The mid block: residual, attention, residual (official keys `middle.{0,1,2}`)."""
    return nn.ModuleList([ResidualBlock(dim, dim), MidAttention(dim), ResidualBlock(dim, dim)])


def head(dim: int, cout: int) -> nn.ModuleList:
    """The output head: norm -> SiLU -> causal conv (official keys `head.{0,2}`)."""
    return nn.ModuleList([RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, cout, 3, padding=1)])


class CausalCoder(nn.Module):
    """Encoder or decoder skeleton: conv1 -> resampling stages -> middle -> head (or the mirror)."""

    def __init__(self, conv1: CausalConv3d, stages: tuple[str, nn.ModuleList], mid: nn.ModuleList,
                 out: nn.ModuleList, *, middle_first: bool):
        super().__init__()
        self.conv1 = conv1
        self.stage_name = stages[0]  # `downsamples` or `upsamples`, as the official keys say
        self.add_module(self.stage_name, stages[1])
        self.middle = mid
        self.head = out
        self.middle_first = middle_first
        self.slots = number_slots(self)  # one FrameCache slot per cached layer

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        x = self.conv1(x, cache)
        stages = getattr(self, self.stage_name)
        order = (self.middle, stages) if self.middle_first else (stages, self.middle)
        for group in order:
            for layer in group:
                x = layer(x, cache)
        norm, _, conv = self.head
        x = F.silu(norm(x), inplace=True)  # the stage output is freed before the head conv runs
        return conv(x, cache)
