"""The speech encoder: wav2vec2 (transformers' ``Wav2Vec2Model``) giving every layer's features.

Speech-to-video mixes all 25 hidden states of wav2vec2-large-xlsr-53 with learned weights, so
which tensor is "the last one" matters. The official code was trained with transformers <= 4.51,
whose stable-layer-norm encoder put the **final layer norm's output** last; transformers 5 puts the
raw output of the last layer there instead (and keeps the normed one as ``last_hidden_state``).
wanflow builds the list itself, the same under every version:

    states[i] = the input of encoder layer i            (i = 0 .. L-1; state 0 is the projected
                                                           features plus the positional convolution)
    states[L] = encoder.layer_norm(output of layer L-1)  (= ``last_hidden_state``)

The waveform is first normalised over the whole clip, as the official ``Wav2Vec2Processor`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wanflow.audio.clips import min_samples
from wanflow.audio.errors import AudioSampleRateError, EmptyAudioError
from wanflow.audio.probe import sample_rate_problem, too_short_reason
from wanflow.errors import ModelLoadError, display_path

#: The feature extractor's variance floor: (x - mean) / sqrt(var + 1e-7).
NORM_EPS = 1e-7
#: Checkpoint tensors the encoder does not use: the speech-recognition head of ``Wav2Vec2ForCTC``.
UNUSED_PREFIXES = ("lm_head.",)


def normalise_waveform(samples: np.ndarray | Tensor) -> Tensor:
    """Zero mean, unit variance over the whole recording (float64 statistics, float32 result)."""
    x = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    return ((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + NORM_EPS)).to(torch.float32)


def speech_hidden_states(model, samples: np.ndarray | Tensor, sample_rate: int) -> Tensor:
    """All ``L + 1`` hidden states of a mono recording, official order and norm: (L+1, T50, D).

    ``model`` is an eval-mode ``transformers.Wav2Vec2Model``; ``T50`` is one frame per 20 ms.
    """
    if (why := sample_rate_problem(sample_rate)) is not None:
        raise AudioSampleRateError(why)
    config = model.config
    needed = min_samples(config.conv_kernel, config.conv_stride)
    if len(samples) < needed:
        raise EmptyAudioError(too_short_reason(len(samples), sample_rate, needed))
    if model.training:
        raise ValueError("the speech encoder is in training mode (dropout, masking); call .eval() on it first")
    weight = next(model.parameters())
    values = normalise_waveform(samples)[None].to(device=weight.device, dtype=weight.dtype)  # (1, N)
    with torch.no_grad():
        out = model(values, output_hidden_states=True)
    layers = config.num_hidden_layers
    if len(out.hidden_states) != layers + 1:
        raise RuntimeError(f"wav2vec2 returned {len(out.hidden_states)} hidden states for {layers} layers; "
                           "this transformers version orders them differently")
    return torch.cat([*out.hidden_states[:layers], out.last_hidden_state])  # (L+1, T50, D)


def load_speech_encoder(folder: str | os.PathLike):
    """The wav2vec2 encoder of a Hugging Face folder (``config.json`` + weights), strictly, in eval mode.

    The released folder holds a ``Wav2Vec2ForCTC``; its speech-recognition head is not used, and
    every other tensor must be there with the configured shape. It runs in float32, as the
    official code runs it.
    """
    import transformers
    from packaging.version import Version
    from transformers import Wav2Vec2Model

    folder = Path(folder)
    fp32 = {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": torch.float32}
    try:
        model, info = Wav2Vec2Model.from_pretrained(folder, output_loading_info=True, **fp32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{display_path(folder)}: not a wav2vec2 folder ({str(exc).splitlines()[0][:200]}); "
                             "point it at the wav2vec2-large-xlsr-53-english folder of the S2V repository "
                             "(config.json and model.safetensors)") from None
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(UNUSED_PREFIXES))
    problems = [f"missing: {', '.join(sorted(info['missing_keys']))}" if info["missing_keys"] else "",
                f"unexpected: {', '.join(unexpected)}" if unexpected else "",
                f"wrong shape: {', '.join(sorted(map(str, info['mismatched_keys'])))}" if info["mismatched_keys"] else ""]
    if any(problems):
        raise ModelLoadError(f"{display_path(folder)}: the weights do not fit its config.json ("
                             + "; ".join(p for p in problems if p) + "); download the folder again")
    return model.eval()
