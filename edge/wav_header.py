"""WAV (RIFF/WAVE) headers: walking to the audio, for a file and for a stream on standard input alike.

Why a file needs it: a recording interrupted mid-write or an incomplete copy keeps a header that declares more
audio than the file holds, and libsndfile then reads what is there without complaint (`wav_cut_short`).
Why a stream needs it: arecord and `sox ... -t wav -` put a header before the samples (edge/sources.py).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import NamedTuple

# A data size a recorder writes when it does not know the length yet (streaming to a pipe, or never finished).
_OPEN_LENGTHS = (0, 0xFFFFFFFF)


def starts_wav(head: bytes) -> bool:
    """Whether the first 12 bytes of a file or stream are a RIFF/WAVE header's."""
    return len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def read_to_data(read: Callable[[int], bytes]) -> tuple[bytes | None, int]:
    """After the 12 bytes `starts_wav` checked, read chunks up to the start of the audio; returns the format
    chunk's body (None when none came first) and the data chunk's declared size. `read(n)` returns n bytes, fewer
    only at the end of input; EOFError when the input ends inside the header."""
    fmt = None
    while True:
        chunk = read(8)
        if len(chunk) < 8:
            raise EOFError
        kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
        if kind == b"data":
            return fmt, length
        padded = length + (length & 1)  # chunks are padded to an even length
        if kind == b"fmt ":
            body = read(padded)
            if len(body) < length:
                raise EOFError
            fmt = body[:length]
            continue
        while padded > 0:  # another chunk (LIST, fact, ...): skipped a piece at a time
            piece = read(min(padded, 1 << 16))
            if not piece:
                raise EOFError
            padded -= len(piece)


class WavFormat(NamedTuple):
    tag: int  # 1 PCM, 3 float, ... (the sub-format's tag for WAVE_FORMAT_EXTENSIBLE)
    channels: int
    rate: int  # samples per second
    byte_rate: int  # bytes per second
    bits: int  # per sample


_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def parse_format(fmt: bytes) -> WavFormat | None:
    """The fields of a format chunk's body; None when it is too short to hold them."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, byte_rate, _block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack_from("<H", fmt, 24)  # the sub-format GUID starts with the plain tag
    return WavFormat(tag, channels, rate, byte_rate, bits)


class CutShort(NamedTuple):
    declared_s: float  # audio the header declares
    present_s: float  # audio the file holds


def wav_cut_short(path: str | os.PathLike) -> CutShort | None:
    """The declared and present seconds when `path` is a WAV file whose data chunk runs past the end of the
    file; None for a whole WAV file, one whose length was left open, or any other format."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if not starts_wav(file.read(12)):
            return None
        try:
            fmt, length = read_to_data(file.read)
        except EOFError:
            return None
        present = size - file.tell()
        layout = parse_format(fmt) if fmt else None
        if layout is None or layout.byte_rate == 0 or length in _OPEN_LENGTHS or length <= present:
            return None
        return CutShort(length / layout.byte_rate, present / layout.byte_rate)
