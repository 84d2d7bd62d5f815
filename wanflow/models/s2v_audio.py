"""S2V's audio side inside the DiT: wav2vec2 states to audio tokens, and the injectors that read them.

The audio encoder (``casual_audio_encoder``, the release's spelling) takes the per-frame buckets
(B, 25 layers, 1024, T) of ``wanflow.audio``:
1. mixes the 25 layers with learned weights: ``silu(w_l) / sum_l silu(w_l)``;
2. a causal conv (replicate-padded in front, so frame n sees frames <= n) widens each frame into
   4 token streams ("local" branch) and, separately, 1 stream ("global" branch);
3. two stride-2 causal convs shared by both branches fold 4 audio frames into each latent frame;
   after every conv: a non-affine LayerNorm and SiLU;
4. the local branch gains one learned padding token: 5 tokens per latent frame; the global branch
   goes through ``final_linear``: 1 vector per latent frame.

After each block in the config's ``inject_layers`` an injector lets each latent frame's video
tokens attend to that frame's 5 audio tokens, after an adaptive LayerNorm whose shift and scale
come from the frame's global vector; the result is added to the video tokens, ungated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wanflow.models.dit import CrossAttention, layer_norm
from wanflow.models.precision import Linear
from wanflow.models.s2v_config import AUDIO_FRAMES_PER_LATENT, S2VConfig

#: eps of the encoder's non-affine LayerNorms, and of the injectors' adaptive LayerNorm (the
#: release keeps torch's default there).
ENCODER_NORM_EPS = 1e-6
ADAPTIVE_NORM_EPS = 1e-5
#: Causal convolution kernel; the frames padded in front of each conv.
KERNEL = 3


def latent_frames(audio_frames: int) -> int:
    """Frames left after the two stride-2 causal convs: floor(T / 4) + 1 for T >= 1."""
    for _ in range(2):
        audio_frames = (audio_frames - 1) // 2 + 1  # (T + 2 pad - 3) // 2 + 1
    return audio_frames


class CausalConv(nn.Module):
    """A 1-D convolution that sees only the past: the first frame repeated twice in front."""

    def __init__(self, dim_in: int, dim_out: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(dim_in, dim_out, KERNEL, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C', T // stride rounded up)."""
        return self.conv(F.pad(x, (KERNEL - 1, 0), mode="replicate"))


def _norm_act(x: Tensor) -> Tensor:
    """Channel-wise non-affine LayerNorm then SiLU of (B, C, T)."""
    return F.silu(layer_norm(x.transpose(1, 2), ENCODER_NORM_EPS)).transpose(1, 2)


class AudioConvEncoder(nn.Module):
    """``casual_audio_encoder.encoder``: mixed states (B, C, T) -> local and global audio tokens."""

    def __init__(self, audio_dim: int, dim: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.conv1_local = CausalConv(audio_dim, tokens * dim // 4)
        self.conv1_global = CausalConv(audio_dim, dim // 4)
        self.conv2 = CausalConv(dim // 4, dim // 2, stride=2)
        self.conv3 = CausalConv(dim // 2, dim, stride=2)
        self.final_linear = nn.Linear(dim, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, T) -> local (B, T', tokens + 1, D) and global (B, T', D) with T' = latent_frames(T)."""
        batch = x.shape[0]
        local = self.conv1_local(x).unflatten(1, (self.tokens, -1)).flatten(0, 1)  # (B * tokens, D/4, T)
        local = self._fold(local)  # (B * tokens, D, T')
        local = local.unflatten(0, (batch, self.tokens)).permute(0, 3, 1, 2)  # (B, T', tokens, D)
        padding = self.padding_tokens.expand(batch, local.shape[1], 1, -1).to(local.dtype)
        local = torch.cat([local, padding], dim=2)  # (B, T', tokens + 1, D)
        glob = self.final_linear(self._fold(self.conv1_global(x)).transpose(1, 2))  # (B, T', D)
        return local, glob

    def _fold(self, x: Tensor) -> Tensor:
        """The shared trunk: norm-act, conv2 (stride 2), norm-act, conv3 (stride 2), norm-act."""
        x = self.conv2(_norm_act(x))
        return _norm_act(self.conv3(_norm_act(x)))


class CausalAudioEncoder(nn.Module):
    """``casual_audio_encoder``: the learned layer mix, then ``AudioConvEncoder``."""

    def __init__(self, cfg: S2VConfig):
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, cfg.audio_layers, 1, 1), 0.01))
        self.encoder = AudioConvEncoder(cfg.audio_dim, cfg.dit.dim, cfg.audio_tokens)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, layers, C, T) -> local (B, T', tokens + 1, D), global (B, T', D), in fp32."""
        features = features.to(self.weights.dtype)
        weights = F.silu(self.weights)  # (1, layers, 1, 1)
        mixed = (features * weights / weights.sum(dim=1, keepdim=True)).sum(dim=1)  # (B, C, T)
        return self.encoder(mixed)


# ----------------------------------------------------------------------------- injection


class AdaptiveNorm(nn.Module):
    """``injector_adain_layers.N``: LayerNorm(x) * (1 + scale) + shift, [shift, scale] from a vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = Linear(dim, 2 * dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (N, L, D), cond (N, D) -> (N, L, D)."""
        shift, scale = self.linear(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)  # (N, 1, D) each
        return torch.addcmul(shift, layer_norm(x, ADAPTIVE_NORM_EPS), 1 + scale).to(x.dtype)


class AudioInjector(nn.Module):
    """``audio_injector``: one cross-attention and one adaptive norm per injected block."""

    def __init__(self, cfg: S2VConfig):
        super().__init__()
        d = cfg.dit
        self.injector = nn.ModuleList(CrossAttention(d.dim, d.num_heads, d.eps, image=False)
                                      for _ in range(cfg.injectors))
        self.injector_adain_layers = nn.ModuleList(AdaptiveNorm(d.dim) for _ in range(cfg.injectors))


class AudioInjection:
    """The audio injectors of one forward, applied after their blocks as the block stack runs.

    An explicit per-forward object (built by ``S2VDiT.embed_inputs``, dropped with it): the
    video tokens are the first ``frames * frame_tokens`` of the sequence; the reference and
    motion tokens after them take no audio."""

    def __init__(self, injector: AudioInjector, layers: Sequence[int], local: Tensor, glob: Tensor,
                 frame_tokens: int, kernel: str):
        self.injector, self.kernel = injector, kernel
        self.index = {layer: i for i, layer in enumerate(layers)}  # block -> injector
        self.local, self.glob = local.flatten(0, 1), glob.flatten(0, 1)  # (B * F, 5, D), (B * F, D)
        self.frames, self.frame_tokens = local.shape[1], frame_tokens

    def after_block(self, layer: int, tokens: Tensor) -> Tensor:
        """``tokens`` (B, L, D) after DiT block ``layer``, its injector's output added to the video's."""
        if layer not in self.index:
            return tokens
        i, video = self.index[layer], self.frames * self.frame_tokens
        x = tokens[:, :video].unflatten(1, (self.frames, -1)).flatten(0, 1)  # (B * F, h * w, D)
        attn = self.injector.injector[i]
        x = self.injector.injector_adain_layers[i](x, self.glob)
        out = attn(x, attn.project(self.local, 0), self.kernel)  # (B * F, h * w, D)
        out = out.unflatten(0, (tokens.shape[0], self.frames)).flatten(1, 2)  # (B, F * h * w, D)
        return torch.cat([tokens[:, :video] + out, tokens[:, video:]], dim=1)


def lead_in(audio: Tensor, frames: int) -> Tensor:
    """(B, layers, C, T) with ``frames`` copies of its first frame in front: the audio of the
    motion frames, which the release takes to be the clip's first sound held."""
    return torch.cat([audio[..., :1].expand(*audio.shape[:-1], frames), audio], dim=-1)


def audio_frames_for(latent: int) -> int:
    """Audio frames (video frames) a clip of ``latent`` latent frames takes: 4 per latent frame."""
    return AUDIO_FRAMES_PER_LATENT * latent
