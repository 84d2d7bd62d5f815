"""The speech encoder: official normalisation, official last hidden state under any transformers,
refusals, and strict loading of the released folder layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.audio._sound import tiny_ctc, tone
from wanflow.audio.errors import AudioSampleRateError, EmptyAudioError
from wanflow.audio.wav2vec import (
    load_speech_encoder,
    normalise_waveform,
    speech_hidden_states,
)
from wanflow.errors import ModelLoadError

WAVE = (tone(180.0, 0.6, 16000) + 0.05 * np.random.default_rng(3).standard_normal(9600)).astype(np.float32)


def test_normalisation_equals_the_official_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    expected = extractor(3.0 * WAVE + 0.2, sampling_rate=16000, return_tensors="pt").input_values[0]
    ours = normalise_waveform(3.0 * WAVE + 0.2)
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)
    assert abs(float(ours.mean())) < 1e-6 and float(ours.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)


def test_states_are_the_layer_inputs_then_the_final_layer_norm_of_the_last_output():
    """Captured with hooks, independently of how transformers fills ``hidden_states``."""
    model = tiny_ctc().wav2vec2
    inputs, outputs = [], []
    handles = [layer.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(args[0]), with_kwargs=True)
               for layer in model.encoder.layers]
    handles.append(model.encoder.layers[-1].register_forward_hook(
        lambda m, args, out: outputs.append(out[0] if isinstance(out, tuple) else out)))
    try:
        states = speech_hidden_states(model, WAVE, 16000)
    finally:
        for handle in handles:
            handle.remove()
    assert states.shape == (3, 29, 16)  # 9600 samples: (9600 - 400) // 320 + 1 frames
    torch.testing.assert_close(states[:2], torch.cat(inputs), atol=0, rtol=0)
    with torch.no_grad():
        normed = model.encoder.layer_norm(outputs[0][0])
    torch.testing.assert_close(states[2], normed, atol=0, rtol=0)
    assert (states[2] - outputs[0][0]).abs().max() > 0.5  # raw and normed are far apart


def test_the_last_state_does_not_depend_on_what_transformers_puts_last(monkeypatch):
    """transformers <= 4.51 put the normed state last in ``hidden_states``; 5.x the raw one."""
    model = tiny_ctc().wav2vec2
    today = speech_hidden_states(model, WAVE, 16000)
    forward = type(model).forward

    def as_in_4_51(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.hidden_states = (*out.hidden_states[:-1], self.encoder.layer_norm(out.hidden_states[-1]))
        return out

    monkeypatch.setattr(type(model), "forward", as_in_4_51)
    torch.testing.assert_close(speech_hidden_states(model, WAVE, 16000), today, atol=0, rtol=0)


def test_another_sample_rate_is_refused():
    with pytest.raises(AudioSampleRateError, match="audio_sample_rate = 22050: .* takes 16000 Hz audio only"):
        speech_hidden_states(tiny_ctc().wav2vec2, WAVE, 22050)


def test_too_short_a_recording_is_refused():
    model = tiny_ctc().wav2vec2
    with pytest.raises(EmptyAudioError, match=r"lasts 44\.9 ms, shorter than the 45 ms \(720 samples"):
        speech_hidden_states(model, WAVE[:719], 16000)
    assert speech_hidden_states(model, WAVE[:720], 16000).shape == (3, 2, 16)


def test_an_encoder_in_training_mode_is_refused():
    model = tiny_ctc().wav2vec2.train()
    with pytest.raises(ValueError, match="training mode"):
        speech_hidden_states(model, WAVE, 16000)


def _release_layout(model, folder, drop: str | None = None):
    """A folder as the S2V repository ships wav2vec2: config.json and a Wav2Vec2ForCTC safetensors
    file with the old weight-norm names (``weight_g``/``weight_v``)."""
    from safetensors.torch import save_file

    folder.mkdir()
    state = {key.replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v"): value.contiguous()
             for key, value in model.state_dict().items() if key != drop}
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in state
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    return folder


def test_the_released_layout_loads_strictly_in_eval_mode(tmp_path):
    source = tiny_ctc(seed=5)
    encoder = load_speech_encoder(_release_layout(source, tmp_path / "wav2vec2"))
    assert not encoder.training and next(encoder.parameters()).dtype == torch.float32
    expected = source.wav2vec2.state_dict()
    assert encoder.state_dict().keys() == expected.keys()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in expected.items())
    torch.testing.assert_close(speech_hidden_states(encoder, WAVE, 16000),
                               speech_hidden_states(source.wav2vec2, WAVE, 16000), atol=0, rtol=0)


def test_a_missing_tensor_is_named(tmp_path):
    folder = _release_layout(tiny_ctc(), tmp_path / "w", drop="wav2vec2.encoder.layers.1.final_layer_norm.weight")
    with pytest.raises(ModelLoadError, match=r"w: the weights do not fit .*missing: encoder\.layers\.1\.final_layer_norm"):
        load_speech_encoder(folder)


def test_a_folder_without_a_config_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty: not a wav2vec2 folder"):
        load_speech_encoder(tmp_path / "empty")
