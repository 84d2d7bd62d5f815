"""What a file that failed to decode looks like, from its first bytes: for error messages.

Audio formats are named (a WAV header, an MP3's ID3 tag or frame sync, FLAC, Ogg, an MP4/M4A
box), so that "it looks like an MP3 file" tells a broken recording from a wrong path.
"""

from __future__ import annotations

from pathlib import Path

_MAGIC = ((b"ID3", "an MP3 file (ID3 tag)"), (b"fLaC", "a FLAC file"), (b"OggS", "an Ogg file"),
          (b"\x1aE\xdf\xa3", "a Matroska/WebM file"), (b"\x89PNG", "a PNG image"),
          (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a zip archive"), (b"{", "JSON or text"))


def describe_audio_file(path: Path) -> str:
    """``"a WAV file, 44 bytes"``, ``"text, 12 bytes"`` or the first bytes in hex."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size == 0:
        return "an empty file (0 bytes)"
    return f"{_kind(head)}, {size} bytes"


def _kind(head: bytes) -> str:
    if head.startswith(b"RIFF"):
        return "a WAV file" if head[8:12] == b"WAVE" else "a RIFF file (not WAVE)"
    if head[4:8] == b"ftyp":
        return "an MP4/M4A/MOV file"
    found = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if found:
        return found
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "an MPEG audio stream (MP3/AAC frames)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return f"unknown binary data starting {head[:8].hex(' ')}"
