"""Can an audio file drive speech-to-video: asked at validation, before any model loads. No torch.

ffmpeg runs the same decode as `wanflow.audio.decode` but into its null output, with its
``astats`` filter measuring the loudest sample and counting the samples: the audio is decoded
once inside ffmpeg and nothing is copied into Python. Answers are remembered per
(path, size, mtime, rate), so a sweep probes each file once.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wanflow.audio import decode
from wanflow.audio.clips import ENCODER_SAMPLE_RATE, min_samples

_STATS = "astats=measure_perchannel=none:measure_overall=Peak_level+Number_of_samples"


@dataclass(frozen=True)
class AudioProbe:
    """What ffmpeg found: samples at the probed rate, the loudest one, or why it failed."""

    samples: int
    sample_rate: int
    peak: float  # full scale 1.0
    complaint: str  # ffmpeg's error, "" when it decoded

    @property
    def duration_s(self) -> float:
        """Seconds of audio at the probed rate."""
        return self.samples / self.sample_rate


def check_audio(path: str | Path, sample_rate: int = ENCODER_SAMPLE_RATE,
                encoder_rate: int = ENCODER_SAMPLE_RATE) -> list[str]:
    """Why ``path`` cannot be the speech of a speech-to-video run, decoded at ``sample_rate``.

    Each problem is a phrase to put after the recipe key and file (``[inputs].audio = "a.wav": …``),
    as the other input checks do. A missing file is not reported here (the recipe check names it).
    """
    path = Path(path)
    problems = []
    if (why := sample_rate_problem(sample_rate, encoder_rate)) is not None:
        problems.append(why)
    if not path.is_file():
        return problems
    stat = path.stat()
    found = probe_audio(path, encoder_rate, stat.st_size, stat.st_mtime_ns)
    if found.complaint:
        return problems + [decode.undecodable_reason(path, found.complaint)]
    if found.samples == 0:
        return problems + [decode.empty_reason(path)]
    if found.peak < decode.SILENCE_PEAK:
        return problems + [decode.silent_reason(found.peak)]
    if found.samples < min_samples():
        problems.append(too_short_reason(found.samples, encoder_rate))
    return problems


def sample_rate_problem(rate: int, encoder_rate: int = ENCODER_SAMPLE_RATE) -> str | None:
    """Why the speech encoder cannot take audio at ``rate``, or None."""
    if rate == encoder_rate:
        return None
    return (f"audio_sample_rate = {rate}: the speech encoder (wav2vec2) takes {encoder_rate} Hz audio only, "
            f"the rate it was trained on; set it to {encoder_rate} (any file is resampled to it)")


def too_short_reason(samples: int, rate: int, needed: int | None = None) -> str:
    """The recording is shorter than the speech encoder needs for one video frame's feature."""
    needed = min_samples() if needed is None else needed
    return (f"the audio lasts {samples / rate * 1000:.1f} ms, shorter than the {needed / rate * 1000:.0f} ms "
            f"({needed} samples at {rate} Hz) the speech encoder needs for one frame of features; "
            "use a longer recording")


@functools.lru_cache(maxsize=64)
def probe_audio(path: Path, sample_rate: int, size: int, mtime_ns: int) -> AudioProbe:
    """Decode ``path`` inside ffmpeg at ``sample_rate`` and measure it (``size``/``mtime_ns`` key the cache)."""
    cmd = decode.ffmpeg_command(path, sample_rate, then=_STATS, verbosity="info") + ["-f", "null", "-"]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, errors="replace", timeout=decode.FFMPEG_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return AudioProbe(0, sample_rate, 0.0, f"ffmpeg could not read it: {exc}")
    if done.returncode != 0:
        return AudioProbe(0, sample_rate, 0.0, decode.ffmpeg_complaint(done.stderr))
    samples = re.findall(r"Number of samples: (\d+)", done.stderr)
    peak_db = re.findall(r"Peak level dB: (\S+)", done.stderr)
    peak = 10 ** (float(peak_db[-1]) / 20) if peak_db else 0.0  # "-inf" dB (digital silence) gives 0.0
    return AudioProbe(int(samples[-1]) if samples else 0, sample_rate, peak if math.isfinite(peak) else 0.0, "")
