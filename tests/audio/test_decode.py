"""Decoding audio files with ffmpeg: rate, duration, pitch, downmix, video tracks, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tests.audio._sound import ffmpeg, peak_frequency, tone, write_wav
from wanflow.audio.decode import decode_audio
from wanflow.audio.errors import (
    EmptyAudioError,
    SilentAudioError,
    UndecodableAudioError,
)
from wanflow.errors import ModelInputError


def test_a_wav_is_resampled_keeping_its_duration_and_pitch(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(440.0, 1.5, 22050), 22050)
    audio = decode_audio(path, 16000)
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32
    assert len(audio.samples) == 24000 and audio.duration_s == pytest.approx(1.5)
    assert peak_frequency(audio.samples, 16000) == pytest.approx(440.0, abs=1.0)
    middle = audio.samples[2000:-2000]
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.01)  # the level survives resampling


def test_a_wav_at_the_target_rate_comes_back_sample_for_sample(tmp_path):
    signal = tone(1000.0, 0.25, 16000, amplitude=0.3)
    audio = decode_audio(write_wav(tmp_path / "a.wav", signal, 16000), 16000)
    assert np.abs(audio.samples - signal).max() < 2 / 32767  # 16-bit quantisation only


def test_stereo_becomes_the_mean_of_its_channels(tmp_path):
    left, right = tone(300.0, 0.5, 16000, 0.6), tone(300.0, 0.5, 16000, 0.2)
    audio = decode_audio(write_wav(tmp_path / "s.wav", [left, right], 16000), 16000)
    assert np.abs(audio.samples - (left + right) / 2).max() < 2 / 32767  # librosa's to_mono


def test_the_audio_track_of_a_video_is_decoded(tmp_path):
    wav = write_wav(tmp_path / "speech.wav", tone(660.0, 1.0, 44100), 44100)
    video = tmp_path / "talk.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1", "-i", str(wav), "-c:a", "aac", "-shortest", str(video))
    audio = decode_audio(video, 16000)
    assert audio.duration_s == pytest.approx(1.0, abs=0.05)
    assert peak_frequency(audio.samples, 16000) == pytest.approx(660.0, abs=2.0)


def test_text_is_refused_naming_the_file_and_what_it_looks_like(tmp_path):
    path = tmp_path / "speech.wav"
    path.write_text("not audio at all\n")
    with pytest.raises(UndecodableAudioError) as caught:
        decode_audio(path, 16000)
    message = str(caught.value)
    assert "speech.wav: not a readable audio file (" in message and "Invalid data" in message
    assert "it looks like text, 17 bytes" in message and "use a wav, mp3" in message


def test_a_truncated_mp3_is_named_as_an_mp3(tmp_path):
    path = tmp_path / "cut.mp3"
    path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00")
    with pytest.raises(UndecodableAudioError, match=r"cut\.mp3: .*it looks like an MP3 file \(ID3 tag\), 10 bytes"):
        decode_audio(path, 16000)


def test_a_video_without_sound_is_refused(tmp_path):
    video = tmp_path / "mute.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=0.2", str(video))
    with pytest.raises(UndecodableAudioError, match=r"mute\.mp4: holds no audio track \(it looks like an MP4"):
        decode_audio(video, 16000)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(UndecodableAudioError, match="gone.wav: no such audio file"):
        decode_audio(tmp_path / "gone.wav", 16000)


def test_zero_length_audio_is_refused(tmp_path):
    path = write_wav(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(EmptyAudioError, match=r"empty\.wav: the audio track is empty \(0 samples decoded from a WAV"):
        decode_audio(path, 16000)


def test_silence_is_refused_and_quiet_speech_is_not(tmp_path):
    hiss = np.random.default_rng(0).uniform(-2, 2, 16000) / 32767  # two 16-bit steps: -84 dBFS
    with pytest.raises(SilentAudioError, match=r"hiss\.wav: the audio is silent: its loudest sample is -84"):
        decode_audio(write_wav(tmp_path / "hiss.wav", hiss, 16000), 16000)
    with pytest.raises(SilentAudioError, match="-inf dBFS"):
        decode_audio(write_wav(tmp_path / "zeros.wav", np.zeros(16000), 16000), 16000)
    quiet = decode_audio(write_wav(tmp_path / "quiet.wav", tone(200.0, 0.5, 16000, 0.001), 16000), 16000)
    assert len(quiet.samples) == 8000  # -60 dBFS is sound


def test_every_refusal_is_a_user_error():
    for cls in (UndecodableAudioError, EmptyAudioError, SilentAudioError):
        assert issubclass(cls, ModelInputError)
