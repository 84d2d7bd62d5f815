"""What a file looks like, from its first bytes: one table for images, videos, audio and checkpoints."""

from __future__ import annotations

import json
import struct

import pytest

from wanflow.file_kinds import describe_file
from wanflow.models.signature import sniff_file


@pytest.mark.parametrize("head, looks", [
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "a WAV file"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "a WebP image"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", "an AVI video"), (b"ID3\x04", "an MP3 file (ID3 tag)"),
    (b"\xff\xfb\x90\x00", "an MPEG audio stream (MP3/AAC frames)"), (b"fLaC\x00", "a FLAC file"),
    (b"\x00\x00\x00\x20ftypM4A ", "an MP4/M4A/MOV file"), (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff\xe0", "a JPEG image"), (b"PK\x03\x04rest", "a zip archive (a torch checkpoint?)"),
    (b'{"a": 1}', "JSON or text"), (b"hello world\n", "text"),
    (b"version https://git-lfs.github.com/spec/v1\n", "a Git LFS pointer, not the file (run `git lfs pull`)"),
    (b"\x00\x01\x02\x03", "unknown binary data starting 00 01 02 03"),
])
def test_a_file_is_described_by_its_first_bytes(tmp_path, head, looks):
    path = tmp_path / "x.mp4"  # the name says nothing
    path.write_bytes(head)
    assert describe_file(path) == f"{looks}, {len(head)} bytes"


def test_empty_and_missing_files_are_said_to_be_so(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    assert describe_file(tmp_path / "e") == "an empty file (0 bytes)"
    assert describe_file(tmp_path / "gone").startswith("unreadable (")


def test_a_safetensors_header_whose_length_looks_like_mpeg_sync_is_still_a_checkpoint(tmp_path):
    """The checkpoint sniffer checks its own formats before the shared table: a header of
    0xE0FF bytes starts FF E0, the MPEG audio frame sync."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (0xE0FF - len(header))
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    assert sniff_file(path) == ("safetensors", "a safetensors file")
    png = tmp_path / "frame.safetensors"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert sniff_file(png) == ("other", "a PNG image")
