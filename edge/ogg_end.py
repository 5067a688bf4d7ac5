"""Ogg files (Vorbis, Opus, FLAC in Ogg) cut short: an interrupted recording, download or copy.

Why it is needed: libsndfile takes an Ogg file's length from the last page it finds, so a cut file reads without
complaint and simply ends early (half of a 10 s Vorbis file reads as 5.2 s of audio). Every Ogg stream ends with a
page flagged end-of-stream (RFC 3533, section 6), and a page is never longer than OGG_PAGE_MAX bytes, so the last
page of a whole file is found in its tail: it must end where the file ends, and carry that flag.
"""
from __future__ import annotations

import os

CAPTURE = b"OggS"  # every page starts with it
HEADER = 27  # bytes of a page header before its segment table
OGG_PAGE_MAX = HEADER + 255 + 255 * 255  # a header, the longest segment table, and the most body it can describe
END_OF_STREAM = 0x04  # header_type flag of a stream's last page


def ogg_cut_short(path: str | os.PathLike) -> str | None:
    """What is wrong, for an error message, when `path` is an Ogg file that does not end with a whole
    end-of-stream page; None when it does, or when it is not an Ogg file."""
    with open(path, "rb") as file:
        if file.read(len(CAPTURE)) != CAPTURE:
            return None
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - OGG_PAGE_MAX))
        tail = file.read()
    why = _last_page_problem(tail)
    if why is None:
        return None
    return (f"{path} is cut short: {why} (an interrupted recording, download or copy); copy the file again, or "
            "re-record or re-encode it")


def _last_page_problem(tail: bytes) -> str | None:
    """Why the last page in `tail` (the end of an Ogg file) is not a whole end-of-stream page; None when it is."""
    at = tail.rfind(CAPTURE)
    while at >= 0 and len(tail) - at >= HEADER and tail[at + 4] != 0:  # version 0 only: these bytes are no page
        at = tail.rfind(CAPTURE, 0, at)
    if at < 0:
        return "its end holds no Ogg page"
    segments = tail[at + HEADER - 1] if len(tail) - at >= HEADER else 0
    table = tail[at + HEADER:at + HEADER + segments]
    if len(tail) - at < HEADER or len(table) < segments or at + HEADER + segments + sum(table) > len(tail):
        return "it ends inside an Ogg page"
    if not tail[at + 5] & END_OF_STREAM:
        return "its last Ogg page is not the end of its stream"
    return None
