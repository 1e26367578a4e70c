"""What an audio container declares about its own length, read from its bytes.

The decoders (libsndfile, ffmpeg) are forgiving: given a file cut short they decode what is
there and say nothing, and for WAV/AIFF libsndfile even reports the shortened length as the
file's length. To tell a truncated file from a short one, `mertkit.audio` compares the decoded
length with what the container *declares*; this module reads the declarations libsndfile
hides:

* WAV / RF64: the `data` chunk's declared byte count against the bytes present;
* AIFF / AIFC: `numSampleFrames` of the COMM chunk;
* Ogg (Vorbis, Opus): whether the last page is complete and carries the end-of-stream flag,
  and its granule position (the stream's total length; for Opus at 48 kHz after pre-skip);
* MP3: whether a Xing/Info/VBRI header is present (only then is ffmpeg's duration a
  declaration rather than a guess from the bit rate).

Every reader takes a `ByteSource` (random access to the raw bytes) and returns None when the
container says nothing usable; it never raises for malformed input (the decoders judge that).
This module must not import torch.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

__all__ = [
    "ByteSource",
    "OggEnd",
    "aiff_declared_frames",
    "mp3_has_length_header",
    "ogg_end",
    "opus_preskip",
    "wav_declared_fraction",
]

# A WAV data size that means "unknown" (written by streaming encoders before the end is known).
_WAV_UNKNOWN_SIZES = frozenset({0, 0xFFFFFFFF})
_CHUNK_WALK_LIMIT = 64  # chunks examined before a header is called unusable
_OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header + segment table + largest body
_OGG_EOS = 0x04
_MP3_HEADER_SCAN = 1 << 16  # bytes after the ID3v2 tag searched for the first frame's tag


class ByteSource:
    """Random access to an input's bytes: an open file (by descriptor, position untouched)
    or an in-memory buffer."""

    def __init__(self, *, fd: int | None = None, data: bytes | None = None) -> None:
        self._fd, self._data = fd, data
        self.size = os.fstat(fd).st_size if fd is not None else len(data or b"")

    def read_at(self, offset: int, count: int) -> bytes:
        if offset < 0 or offset >= self.size or count <= 0:
            return b""
        if self._data is not None:
            return bytes(self._data[offset : offset + count])
        return os.pread(self._fd, count, offset)


# --------------------------------------------------------------------------------------------
# WAV / RF64
# --------------------------------------------------------------------------------------------


def wav_declared_fraction(src: ByteSource) -> float | None:
    """Declared data bytes / data bytes present, for a RIFF/RIFX/RF64 WAVE file.

    Above 1.0 means the file was cut short. None when the header declares no usable size.
    """
    magic = src.read_at(0, 12)
    if len(magic) < 12 or magic[8:12] != b"WAVE" or magic[:4] not in (b"RIFF", b"RIFX", b"RF64"):
        return None
    endian = ">" if magic[:4] == b"RIFX" else "<"
    rf64_size = None
    offset = 12
    for _ in range(_CHUNK_WALK_LIMIT):
        head = src.read_at(offset, 8)
        if len(head) < 8:
            return None
        chunk, size = head[:4], struct.unpack(endian + "I", head[4:])[0]
        if chunk == b"ds64":
            body = src.read_at(offset + 8, 16)
            rf64_size = struct.unpack("<Q", body[8:16])[0] if len(body) == 16 else None
        if chunk == b"data":
            if magic[:4] == b"RF64" and size == 0xFFFFFFFF:
                size = rf64_size
            present = src.size - (offset + 8)
            if size is None or size in _WAV_UNKNOWN_SIZES or present <= 0:
                return None
            return size / present
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


# --------------------------------------------------------------------------------------------
# AIFF / AIFC
# --------------------------------------------------------------------------------------------


def aiff_declared_frames(src: ByteSource) -> int | None:
    """numSampleFrames from the COMM chunk of an AIFF/AIFC file."""
    magic = src.read_at(0, 12)
    if len(magic) < 12 or magic[:4] != b"FORM" or magic[8:12] not in (b"AIFF", b"AIFC"):
        return None
    offset = 12
    for _ in range(_CHUNK_WALK_LIMIT):
        head = src.read_at(offset, 8)
        if len(head) < 8:
            return None
        chunk, size = head[:4], struct.unpack(">I", head[4:])[0]
        if chunk == b"COMM":
            body = src.read_at(offset + 8, 6)
            return struct.unpack(">I", body[2:6])[0] if len(body) == 6 else None
        offset += 8 + size + (size & 1)
    return None


# --------------------------------------------------------------------------------------------
# Ogg
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OggEnd:
    """The last page of an Ogg file: `complete` False when the file ends inside a page."""

    complete: bool
    end_of_stream: bool
    granule: int


def ogg_end(src: ByteSource) -> OggEnd | None:
    """The file's last page, found in its tail. None when the input is not Ogg."""
    if src.read_at(0, 4) != b"OggS":
        return None
    start = max(0, src.size - _OGG_MAX_PAGE)
    tail = src.read_at(start, src.size - start)
    position = tail.rfind(b"OggS")
    while position >= 0:
        page = _ogg_page(tail, position)
        if page is not None:
            length, flags, granule = page
            # Shorter than the rest: junk follows; longer: the file ends inside this page.
            complete = position + length == len(tail)
            return OggEnd(complete, bool(flags & _OGG_EOS), granule)
        position = tail.rfind(b"OggS", 0, position)
    return OggEnd(False, False, 0)


def _ogg_page(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(page length, header flags, granule position) of a page header at `at`, if one fits."""
    if len(data) - at < 27 or data[at + 4] != 0:  # version 0 is the only Ogg version
        return None
    flags = data[at + 5]
    granule = struct.unpack("<q", data[at + 6 : at + 14])[0]
    segments = data[at + 26]
    table = data[at + 27 : at + 27 + segments]
    if len(table) < segments:
        return None
    return 27 + segments + sum(table), flags, granule


def opus_preskip(src: ByteSource) -> int | None:
    """The pre-skip of an Ogg Opus stream (samples at 48 kHz), None for other Ogg streams."""
    head = src.read_at(0, 27 + 255 + 19)
    at = head.find(b"OpusHead")
    if at < 0 or len(head) < at + 12:
        return None
    return struct.unpack("<H", head[at + 10 : at + 12])[0]


# --------------------------------------------------------------------------------------------
# MP3
# --------------------------------------------------------------------------------------------


def mp3_has_length_header(src: ByteSource) -> bool:
    """Whether the first MPEG frame carries a Xing, Info or VBRI header (a declared frame count)."""
    start = 0
    head = src.read_at(0, 10)
    if head[:3] == b"ID3" and len(head) == 10:
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        start = 10 + size + (10 if head[5] & 0x10 else 0)  # the footer flag adds 10 bytes
    window = src.read_at(start, _MP3_HEADER_SCAN)
    sync = _first_frame(window)
    if sync < 0:
        return False
    # The tag sits after the side information, at most 36 bytes into the frame.
    first = window[sync : sync + 64]
    return any(tag in first for tag in (b"Xing", b"Info", b"VBRI"))


def _first_frame(window: bytes) -> int:
    """Offset of the first MPEG frame sync (11 set bits), or -1."""
    at = window.find(b"\xff")
    while 0 <= at < len(window) - 1:
        if window[at + 1] & 0xE0 == 0xE0:
            return at
        at = window.find(b"\xff", at + 1)
    return -1
