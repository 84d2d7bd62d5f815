"""Why an audio input cannot drive speech-to-video: one class per cause, all ``ModelInputError``.

Each message names the file (or the setting) and says what it holds instead and how to fix it; the
CLI prints them without a traceback. The classes let callers and tests tell the causes apart.
"""

from __future__ import annotations

from wanflow.errors import ModelInputError


class AudioInputError(ModelInputError):
    """An audio input that speech-to-video cannot use."""


class UndecodableAudioError(AudioInputError):
    """ffmpeg cannot decode the file, or it holds no audio track."""


class EmptyAudioError(AudioInputError):
    """The audio decodes to no samples, or to fewer than one speech-encoder frame needs."""


class SilentAudioError(AudioInputError):
    """Every sample is below the level that counts as sound: there is no speech to follow."""


class AudioSampleRateError(AudioInputError):
    """A sample rate the speech encoder cannot take (wav2vec2 was trained on 16 kHz audio)."""
