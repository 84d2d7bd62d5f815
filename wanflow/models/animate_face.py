"""Wan2.2-Animate's face path after the motion encoder: the face encoder and the face blocks.

- ``face_encoder``: the per-frame motion vectors (B, T, 512) pass a causal conv1d that splits
  them into 4 heads, two stride-2 causal convs (T -> ceil(T/2) -> ceil(ceil(T/2)/2): 77 pixel
  frames -> 20, one per latent frame after the reference's), non-affine LayerNorms with SiLU,
  and ``out_proj`` to the DiT width; a learned padding token joins the 4 head tokens, so each
  frame has 5 face tokens. A zero frame is prepended for latent frame 0 (the reference image).
- ``face_adapter.fuser_blocks.N`` (after DiT block 5N): the tokens of latent frame f attend to
  the 5 face tokens of frame f only (non-affine LayerNorms in front, per-head RMSNorm on q and
  k), and the projected result is added to the tokens, with no gate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wanflow.models.attention import attention
from wanflow.models.precision import Linear

#: Epsilon of every norm of the face path.
EPS = 1e-6


def layer_norm(x: Tensor) -> Tensor:
    """Non-affine LayerNorm over the last axis."""
    return F.layer_norm(x, x.shape[-1:], eps=EPS)


class CausalConv1d(nn.Module):
    """Conv1d over frames that sees only the past: the first frame repeated k - 1 times in front."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C', ceil(T / stride))."""
        return self.conv(F.pad(x, (self.conv.kernel_size[0] - 1, 0), mode="replicate"))


class FaceEncoder(nn.Module):
    """Motion vectors (B, T, in_dim) -> face tokens (B, ceil(ceil(T/2)/2), heads + 1, dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, heads: int, dim: int):
        super().__init__()
        self.heads = heads
        self.conv1_local = CausalConv1d(in_dim, hidden_dim * heads)
        self.conv2 = CausalConv1d(hidden_dim, hidden_dim, stride=2)
        self.conv3 = CausalConv1d(hidden_dim, hidden_dim, stride=2)
        self.out_proj = Linear(hidden_dim, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, motion: Tensor) -> Tensor:
        batch = motion.shape[0]
        x = self.conv1_local(motion.transpose(1, 2))  # (B, heads * hidden, T)
        x = x.unflatten(1, (self.heads, -1)).flatten(0, 1)  # (B * heads, hidden, T): heads apart
        for conv in (self.conv2, self.conv3):
            x = conv(F.silu(layer_norm(x.transpose(1, 2))).transpose(1, 2))  # (B * heads, hidden, T')
        x = self.out_proj(F.silu(layer_norm(x.transpose(1, 2))))  # (B * heads, T', dim)
        x = x.unflatten(0, (batch, self.heads)).transpose(1, 2)  # (B, T', heads, dim)
        padding = self.padding_tokens.to(x.dtype).expand(batch, x.shape[1], 1, -1)
        return torch.cat([x, padding], dim=2)  # (B, T', heads + 1, dim)


class HeadRMSNorm(nn.Module):
    """RMSNorm of each head's vector (the DiT's own q/k norms span all heads at once)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], eps=EPS).to(x.dtype) * self.weight.to(x.dtype)


class FaceBlock(nn.Module):
    """Attention of each latent frame's tokens to that frame's face tokens; returns the residual."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.linear1_kv = Linear(dim, 2 * dim)  # keys then values along the output axis
        self.linear1_q = Linear(dim, dim)
        self.linear2 = Linear(dim, dim)
        self.q_norm = HeadRMSNorm(dim // num_heads)
        self.k_norm = HeadRMSNorm(dim // num_heads)

    def forward(self, x: Tensor, face: Tensor, kernel: str) -> Tensor:
        """x (B, F * h * w, D) video tokens; face (B, F, N, D) face tokens -> (B, F * h * w, D)."""
        batch, frames = face.shape[:2]
        q = self.q_norm(self.linear1_q(layer_norm(x)).unflatten(-1, (self.num_heads, -1)))  # (B, L, H, d)
        kv = self.linear1_kv(layer_norm(face)).unflatten(-1, (2, self.num_heads, -1))  # (B, F, N, 2, H, d)
        k, v = self.k_norm(kv[..., 0, :, :]), kv[..., 1, :, :]  # (B, F, N, H, d) each
        q = q.unflatten(1, (frames, -1)).flatten(0, 1)  # (B * F, h * w, H, d): one frame per row
        out = attention(q, k.flatten(0, 1), v.flatten(0, 1), kernel)  # (B * F, h * w, H, d)
        return self.linear2(out.flatten(2).unflatten(0, (batch, frames)).flatten(1, 2))  # (B, L, D)


class FaceAdapter(nn.Module):
    """``face_adapter``: the face blocks, ``fuser_blocks.N`` following DiT block ``every * N``."""

    def __init__(self, dim: int, num_heads: int, count: int):
        super().__init__()
        self.fuser_blocks = nn.ModuleList(FaceBlock(dim, num_heads) for _ in range(count))


class FaceInjection:
    """The face blocks of one forward, added after their DiT blocks as the block stack runs.

    An explicit per-forward object (built by ``AnimateDiT.embed_inputs``, dropped with it), run
    by ``WanDiT.run_blocks`` after every block like a VACE branch's hints, so a step cache that
    skips the block stack skips the face blocks with it.
    """

    def __init__(self, blocks: Sequence[FaceBlock], every: int, face: Tensor, kernel: str):
        self.blocks, self.every, self.face, self.kernel = blocks, every, face, kernel

    def after_block(self, layer: int, tokens: Tensor) -> Tensor:
        """``tokens`` after DiT block ``layer``, with its face block's output added when it has one."""
        if layer % self.every:
            return tokens
        return tokens + self.blocks[layer // self.every](tokens, self.face, self.kernel)
