"""Validation's audio check: the same verdicts as decoding, without bringing samples into Python."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.audio._sound import ffmpeg, tone, write_wav
from wanflow.audio.decode import SILENCE_PEAK, ffmpeg_complaint
from wanflow.audio.probe import check_audio, probe_audio, sample_rate_problem


def test_a_good_recording_has_no_problem_and_its_length_is_measured(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(440.0, 2.0, 44100), 44100)
    assert check_audio(path) == []
    found = probe_audio(path, 16000, *_stamp(path))
    assert found.samples == 32000 and found.duration_s == pytest.approx(2.0)
    assert found.peak == pytest.approx(0.5, abs=0.01) and found.complaint == ""


@pytest.mark.parametrize("name, write, expected", [
    ("notes.wav", lambda p: p.write_text("hello\n"), "not a readable audio file (Error opening input: Invalid data"),
    ("empty.wav", lambda p: write_wav(p, np.zeros(0), 16000), "the audio track is empty (0 samples decoded from a WAV"),
    ("zeros.wav", lambda p: write_wav(p, np.zeros(8000), 16000), "the audio is silent: its loudest sample is -inf"),
    ("blip.wav", lambda p: write_wav(p, tone(500.0, 0.03, 16000), 16000), "the audio lasts 30.0 ms, shorter than the 45 ms"),
])
def test_each_bad_recording_gets_its_reason(tmp_path, name, write, expected):
    path = tmp_path / name
    write(path)
    problems = check_audio(path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_video_without_sound_is_reported(tmp_path):
    video = tmp_path / "mute.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:d=0.2", str(video))
    size = video.stat().st_size
    expected = (f"holds no audio track (it looks like an MP4/M4A/MOV file, {size} bytes); use a wav, "
                "mp3, m4a or flac recording, or a video with an audio track")
    assert check_audio(video) == [expected]


def test_the_silence_threshold_is_the_decoders(tmp_path):
    just_below = write_wav(tmp_path / "below.wav", np.full(8000, SILENCE_PEAK * 0.6), 16000)
    just_above = write_wav(tmp_path / "above.wav", np.full(8000, SILENCE_PEAK * 1.6), 16000)
    assert check_audio(just_below)[0].startswith("the audio is silent: its loudest sample is -84")
    assert check_audio(just_above) == []


def test_a_sample_rate_the_encoder_cannot_take_is_reported_beside_file_problems(tmp_path):
    path = write_wav(tmp_path / "zeros.wav", np.zeros(8000), 16000)
    problems = check_audio(path, sample_rate=22050)
    assert problems[0] == ("audio_sample_rate = 22050: the speech encoder (wav2vec2) takes 16000 Hz audio only, "
                           "the rate it was trained on; set it to 16000 (any file is resampled to it)")
    assert problems[1].startswith("the audio is silent") and len(problems) == 2
    assert sample_rate_problem(16000) is None


def test_a_changed_file_is_probed_again(tmp_path):
    path = write_wav(tmp_path / "a.wav", np.zeros(8000), 16000)
    assert check_audio(path)[0].startswith("the audio is silent")
    write_wav(path, tone(440.0, 0.5, 16000), 16000)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert check_audio(path) == []


def test_a_missing_file_is_left_to_the_recipe_check(tmp_path):
    assert check_audio(tmp_path / "gone.wav") == []


def _stamp(path):
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def test_ffmpegs_complaint_is_its_first_error_line_without_prefixes():
    stderr = ("[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.m4a':\n[info]   Duration: 00:00:01.00\n"
              "[aac @ 0x55d0] [error] Input buffer exhausted before END element found\n"
              "[fatal] Error while decoding stream #0:0: Invalid data found when processing input\n")
    assert ffmpeg_complaint(stderr) == "Input buffer exhausted before END element found"
    assert ffmpeg_complaint("[fatal] Stream map '' matches no streams.\n") == "it holds no audio track"
    assert ffmpeg_complaint("") == "ffmpeg failed"


def test_validation_and_clip_arithmetic_import_no_torch():
    code = ("import sys, wanflow.audio.probe, wanflow.audio.clips, wanflow.audio.decode; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"
