"""What a file is, from its first bytes, never from its name: one table for every error message
that says "it looks like …" (a wrong image, video, recording or checkpoint path).

The formats named are those a user points a wanflow key at by mistake: images, videos, audio,
archives, documents and Git LFS pointers. Readers with more to say about their own kind (the
checkpoint sniffer tells a PyTorch zip from a safetensors header) check their kind first and
fall back on :func:`binary_kind`.
"""

from __future__ import annotations

from pathlib import Path

#: Leading bytes → what the file is.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"), (b"ID3", "an MP3 file (ID3 tag)"), (b"fLaC", "a FLAC file"),
    (b"OggS", "an Ogg file"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file (run `git lfs pull`)"),
)
#: RIFF containers by their form type (bytes 8-12).
_RIFF = {b"WAVE": "a WAV file", b"WEBP": "a WebP image", b"AVI ": "an AVI video"}


def binary_kind(head: bytes) -> str | None:
    """The binary format ``head`` (a file's first 16 or more bytes) starts, or None if not one of
    the table's (zip archives and text are left to the caller, which may know more about them)."""
    found = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if found:
        return found
    if head.startswith(b"RIFF"):
        return _RIFF.get(head[8:12], "a RIFF file")
    if head[4:8] == b"ftyp":
        return "an MP4/M4A/MOV file"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "an MPEG audio stream (MP3/AAC frames)"
    return None


def describe_file(path: Path) -> str:
    """``"a PNG image, 60 bytes"``, ``"text, 12 bytes"``, ``"an empty file (0 bytes)"`` or the first
    bytes in hex: what an error message says a file that failed to read looks like."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size == 0:
        return "an empty file (0 bytes)"
    return f"{_kind(head)}, {size} bytes"


def _kind(head: bytes) -> str:
    found = binary_kind(head)
    if found:
        return found
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch checkpoint?)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON or text"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:16]):
        return "text"
    return f"unknown binary data starting {head[:8].hex(' ')}"
