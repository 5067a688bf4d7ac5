"""Is a WAV file cut short? A recording interrupted mid-write or an incomplete copy keeps a header that declares
more audio than the file holds, and libsndfile then reads what is there without complaint. This reads the RIFF
chunk headers (not the audio) and compares the data chunk's declared size with the bytes that follow it.
"""
from __future__ import annotations

import os
import struct
from typing import NamedTuple

# A data size a recorder writes when it does not know the length yet (streaming to a pipe, or never finished).
_OPEN_LENGTHS = (0, 0xFFFFFFFF)


class CutShort(NamedTuple):
    declared_s: float  # audio the header declares
    present_s: float  # audio the file holds


def wav_cut_short(path: str | os.PathLike) -> CutShort | None:
    """The declared and present seconds when `path` is a RIFF/WAVE file whose data chunk runs past the end of the
    file; None for a whole WAV file, one whose length was left open, or any other format."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = 0
        while True:
            chunk = file.read(8)
            if len(chunk) < 8:
                return None
            kind, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"data":
                present = size - file.tell()
                if length in _OPEN_LENGTHS or length <= present or byte_rate == 0:
                    return None
                return CutShort(length / byte_rate, present / byte_rate)
            skip = length + (length & 1)  # chunks are padded to an even length
            if kind == b"fmt " and length >= 12:
                byte_rate = struct.unpack("<I", file.read(12)[8:12])[0]  # average bytes per second
                skip -= 12
            file.seek(skip, os.SEEK_CUR)
