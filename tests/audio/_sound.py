"""Test recordings written with the standard library, and a tiny random wav2vec2."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, channels: list[np.ndarray] | np.ndarray, rate: int) -> Path:
    """A 16-bit PCM wav of one or more channels (each a float array in [-1, 1])."""
    data = np.stack(channels, axis=1) if isinstance(channels, list) else np.asarray(channels)[:, None]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(data.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.round(data * 32767).astype("<i2").tobytes())
    return path


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine at ``freq`` Hz."""
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    """The frequency of the strongest FFT bin (Hann window)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary wanflow uses (to make test media)."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *args],
                   check=True, timeout=120)


def tiny_wav2vec2_config(**changes):
    """The released front end (kernels, strides) with tiny widths: 2 layers of 16."""
    from transformers import Wav2Vec2Config

    settings = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
                "conv_dim": (8,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2),
                "num_feat_extract_layers": 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
                "do_stable_layer_norm": True, "feat_extract_norm": "layer", "vocab_size": 12, "mask_time_prob": 0.05}
    return Wav2Vec2Config(**{**settings, **changes})


def tiny_ctc(seed: int = 0):
    """A random ``Wav2Vec2ForCTC`` (the released folder's class), in eval mode.

    The encoder's final layer norm gets a random affine, so that normed and raw states differ clearly."""
    import torch
    from transformers import Wav2Vec2ForCTC

    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(tiny_wav2vec2_config()).eval()
    with torch.no_grad():
        model.wav2vec2.encoder.layer_norm.weight.uniform_(0.5, 2.0)
        model.wav2vec2.encoder.layer_norm.bias.normal_()
    return model
