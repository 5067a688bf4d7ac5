"""WAV (RIFF/WAVE) headers: walking to the audio, for a file and for a stream on standard input alike.

Why a file needs it: a recording interrupted mid-write or an incomplete copy keeps a header that declares more
audio than the file holds, and libsndfile then reads what is there without complaint (`WavData.cut_short`); a
writer that cannot go back to fix its header (Python's wave module into a pipe) leaves one that declares less, and
libsndfile then plays only that (`WavData.overlong`).
Why a stream needs it: arecord and `sox ... -t wav -` put a header before the samples (edge/sources.py).
"""
from __future__ import annotations

import io
import os
import shlex
import struct
from collections.abc import Callable, Container
from typing import BinaryIO, NamedTuple

from edge.ogg_end import ogg_cut_short

# Data sizes a recorder writes when it does not know the length yet (streaming to a pipe, or never finished): 0, or
# a huge one: sox writes 0x7FFFF000, arecord 0x80000000, others 0xFFFFFFFF. libsndfile reads the huge ones to the
# end of the file, but 0 as no audio at all (`TrueSizeWav`).
_OPEN_FROM = 0x7FFFF000
RIFF_LIMIT = 0xFFFFFFFF  # the most bytes a RIFF size field holds: libsndfile stops there (`TrueSizeWav`)


def is_open_length(size: int) -> bool:
    """Whether a data chunk's declared size stands for "to the end" rather than for a length."""
    return size == 0 or size >= _OPEN_FROM


def is_chunk_id(kind: bytes) -> bool:
    """Whether 4 bytes can name a chunk (LIST, id3 , ...): printable ASCII, which audio samples seldom are."""
    return len(kind) == 4 and all(0x20 <= c <= 0x7E for c in kind)


# Chunks that WAV writers put after the audio: tags, cue points, broadcast, sampler and loop metadata, padding. On a
# stream, where a chunk cannot be checked against the end of the file, only these are taken for one: 4 printable
# bytes are too often just audio (a 300 Hz tone at 0.8 full scale holds them).
KNOWN_CHUNKS = frozenset({b"LIST", b"id3 ", b"ID3 ", b"JUNK", b"PAD ", b"bext", b"cue ", b"fact", b"smpl", b"inst",
                          b"acid", b"iXML", b"axml", b"_PMX", b"DISP", b"plst", b"labl", b"note", b"ltxt", b"slnt",
                          b"wavl"})
ID3V2_HEAD = 10  # bytes of an ID3v2 tag's header, which ends with the tag's size
MAX_FORMAT = 1024  # bytes a format chunk may declare: the largest real one (WAVE_FORMAT_EXTENSIBLE) holds 40


class MalformedWavHeader(ValueError):
    """A WAV header that no writer makes (a damaged size): reading it as it says could take gigabytes."""


def tag_span(head: bytes, ids: Container[bytes] | None = None) -> int | None:
    """The bytes that a chunk or an ID3 tag starting with `head` spans (a chunk's pad byte not counted); None when
    neither starts there. `head`: its first 8 bytes, ID3V2_HEAD for an ID3v2 tag; `ids`: the chunk ids taken, None
    for any printable one. Some taggers append a bare ID3 tag (cover art and all) where a chunk could start."""
    if len(head) >= ID3V2_HEAD and head[:3] == b"ID3" and head[3] in (2, 3, 4) and max(head[6:10]) < 0x80:
        size = head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]  # ID3v2.2 to 2.4: 7 bits a byte ("syncsafe")
        return ID3V2_HEAD + size + (ID3V2_HEAD if head[5] & 0x10 else 0)  # flag 0x10: a footer repeats the header
    if head[:3] == b"TAG":
        return 128  # ID3v1: a fixed size
    kind = head[:4]
    if len(head) >= 8 and (is_chunk_id(kind) if ids is None else kind in ids):
        return 8 + int.from_bytes(head[4:8], "little")
    return None


def starts_wav(head: bytes) -> bool:
    """Whether the first 12 bytes of a file or stream are a RIFF/WAVE header's."""
    return len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"


def read_to_data(read: Callable[[int], bytes]) -> tuple[bytes | None, int]:
    """After the 12 bytes `starts_wav` checked, read chunks up to the start of the audio; returns the format
    chunk's body (None when none came first) and the data chunk's declared size. `read(n)` returns n bytes, fewer
    only at the end of input; EOFError when the input ends inside the header, MalformedWavHeader when the format
    chunk's size is damaged."""
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
            if length > MAX_FORMAT:  # read as it says, it would take up to 4 GiB of memory
                raise MalformedWavHeader(f"its format chunk declares {length} bytes, where a real one holds 16 to 40")
            body = read(padded)
            if len(body) < length:
                raise EOFError
            fmt = body[:length]
            continue
        if skip(read, padded):  # another chunk (LIST, fact, ...)
            raise EOFError


def skip(read: Callable[[int], bytes], size: int) -> int:
    """Read past `size` bytes a piece at a time (a chunk may be large); returns how many the input ended short of."""
    while size > 0 and (piece := read(min(size, 1 << 16))):
        size -= len(piece)
    return max(size, 0)


class WavFormat(NamedTuple):
    tag: int  # 1 PCM, 3 float, ... (the sub-format's tag for WAVE_FORMAT_EXTENSIBLE)
    channels: int
    rate: int  # samples per second
    byte_rate: int  # bytes per second
    bits: int  # per sample
    block_align: int  # bytes per frame


_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def parse_format(fmt: bytes) -> WavFormat | None:
    """The fields of a format chunk's body; None when it is too short to hold them."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        (tag,) = struct.unpack_from("<H", fmt, 24)  # the sub-format GUID starts with the plain tag
    return WavFormat(tag, channels, rate, byte_rate, bits, block_align)


class Lengths(NamedTuple):
    declared_s: float  # audio the header declares
    present_s: float  # audio the file holds after the header


class WavData(NamedTuple):
    """Where a WAV file's audio is, and how long it is by its header and by the file's size."""
    size_at: int  # where the data chunk's size field is in the file
    declared: int  # bytes of audio the header declares
    present: int  # bytes from the start of the audio to the end of the file
    byte_rate: int  # 0 when the format chunk is missing or unreadable
    chunks_follow: bool  # whether what follows the declared audio is chunks (LIST, id3 , ...) or ID3 tags
    layout: WavFormat | None = None  # None when the format chunk is missing or unreadable
    cut_tag: bytes | None = None  # the id of a chunk after the audio that the end of the file cuts off (LIST, ...)

    @property
    def open_length(self) -> bool:
        """Whether the header left the length open; a declared 0 followed by whole chunks is an empty recording."""
        return is_open_length(self.declared) and not self.chunks_follow

    @property
    def frame_bytes(self) -> int:
        """Bytes a frame of audio takes, by the format chunk (1 when it is missing or gives none)."""
        if not self.layout:
            return 1
        return self.layout.block_align or max(1, self.layout.channels * self.layout.bits // 8)

    def cut_short(self) -> Lengths | None:
        """When the audio runs past the end of the file (an interrupted recording or copy) by a frame or more: a
        size a byte or two too large (a writer's slip) leaves every frame there."""
        frame = self.frame_bytes
        if self.byte_rate and not self.open_length and self.declared // frame > self.present // frame:
            return Lengths(self.declared / self.byte_rate, self.present / self.byte_rate)
        return None

    def overlong(self) -> Lengths | None:
        """When 10 ms or more of something other than chunks, ID3 tags or zeros (padding) follows the declared audio:
        audio the header does not count, which libsndfile would leave out without a word. Less is no word's worth,
        and more likely a writer's stray metadata (a chunk cut off at the end) than audio."""
        tail = self.present - self.declared
        if self.byte_rate and not self.open_length and tail >= self.byte_rate / 100 and not self.chunks_follow:
            return Lengths(self.declared / self.byte_rate, self.present / self.byte_rate)
        return None


def inspect_wav(path: str | os.PathLike) -> WavData | None:
    """The layout of `path` when it is a WAV file; None for any other format, or a WAV header cut off."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if not starts_wav(file.read(12)):
            return None
        try:
            fmt, length = read_to_data(file.read)
        except (EOFError, MalformedWavHeader):
            return None
        start = file.tell()
        layout = parse_format(fmt) if fmt else None
        # zeros after audio of a given length are padding; after an open length (0) they are silence it holds
        chunks, cut_tag = (_chunks_to_end(file, start + length, size, pad=bool(length & 1),
                                          zeros=not is_open_length(length)) if start + length < size else (False, None))
        # some writers leave the byte rate 0; the rate and frame size give it too
        byte_rate = (layout.byte_rate or layout.rate * layout.block_align) if layout else 0
        return WavData(start - 4, length, size - start, byte_rate, chunks, layout, cut_tag)


def wav_header_broken(path: str | os.PathLike, wav: WavData | None) -> bool:
    """Whether `path` starts as a WAV file but its header cannot be walked to a readable format chunk and then the
    audio: cut off, or out of order (the audio before the format chunk, or no format chunk). `wav`: what
    inspect_wav found in it (None for a header cut off, or for another format)."""
    if wav is not None:
        return wav.layout is None
    with open(path, "rb") as file:
        return starts_wav(file.read(12))


def _chunks_to_end(file: BinaryIO, at: int, end: int, pad: bool = False,
                   zeros: bool = True) -> tuple[bool, bytes | None]:
    """Whether the bytes of `file` from `at` to `end` are whole chunks or ID3 tags (then, with `zeros`, perhaps zeros:
    padding), not more audio; and the id of a known chunk (KNOWN_CHUNKS) that the end cuts off, which counts as
    chunks too: a tag an interrupted copy cut, not audio (`sox --ignore-length` would play it as noise). `pad`: what
    came before is of odd length, so a pad byte comes first, unless its writer left it out: both are tried, here and
    after each odd chunk (each place once, so many odd chunks cost no more)."""
    todo, tried, cut = [at, at + 1] if pad else [at], set(), None
    while todo:
        at = todo.pop()  # the place after a pad byte first
        if at in tried:
            continue
        tried.add(at)
        if end - at < 8 or (zeros and _zeros_to_end(file, at, end)):  # stray bytes (a pad byte too many), padding
            return True, None
        file.seek(at)
        head = file.read(ID3V2_HEAD)
        span = tag_span(head)
        if span is not None and at + span <= end:
            todo += [at + span, at + span + 1] if span & 1 else [at + span]
        elif span is not None and head[:4] in KNOWN_CHUNKS:
            cut = head[:4]  # taken only if no way through to the end is found
    return cut is not None, cut


def _zeros_to_end(file: BinaryIO, at: int, end: int) -> bool:
    """Whether the bytes from `at` to `end` are all zero (some writers fill a file up to a block); stops at the first
    byte that is not, which in audio comes at once."""
    file.seek(at)
    while at < end:
        block = file.read(min(end - at, 1 << 16))
        if not block or block.count(0) != len(block):
            return False
        at += len(block)
    return True


def wav_cut_short(path: str | os.PathLike) -> Lengths | None:
    """The declared and present seconds when `path` is a WAV file whose data chunk runs past the end of the
    file; None for a whole WAV file, one whose length was left open, or any other format."""
    wav = inspect_wav(path)
    return wav.cut_short() if wav else None


class TrueSizeWav(io.FileIO):
    """A WAV file whose length was left open, read with the bytes that follow its header as its data size: what
    libsndfile needs to play it to its end. Opened by descriptor, so that soundfile does not go by the name (`.raw`)."""

    def __init__(self, path: str | os.PathLike, wav: WavData):
        super().__init__(os.open(path, os.O_RDONLY), "rb")
        # past RIFF_LIMIT libsndfile would stop: edge/sources.py reads such a file's samples itself
        self._at, self._size = wav.size_at, min(wav.present, RIFF_LIMIT).to_bytes(4, "little")

    def readinto(self, buffer) -> int:
        start = self.tell()
        count = super().readinto(buffer)
        low, high = max(start, self._at), min(start + count, self._at + 4)
        if low < high:  # this read covers the size field
            memoryview(buffer).cast("B")[low - start:high - start] = self._size[low - self._at:high - self._at]
        return count


def libsndfile_input(path: str | os.PathLike) -> tuple[str | TrueSizeWav, WavData | None]:
    """What libsndfile should open for `path`, and the file's layout when it is a WAV file. That is the path, or
    for a WAV file whose length was left open a `TrueSizeWav` (libsndfile plays an open length of 0 as no audio),
    which the caller closes once done with it."""
    wav = inspect_wav(path)
    return (TrueSizeWav(path, wav) if wav and wav.open_length else str(path)), wav


def empty_problem(path: str | os.PathLike) -> str | None:
    """What is wrong, for an error message, with a file of no bytes at all (libsndfile: "Format not recognised")."""
    if os.stat(path).st_size:
        return None
    return f"{path} is empty (0 bytes): an interrupted recording or copy; record or copy it again"


def shortfall(declared: int, got: int, rate: float) -> tuple[str, str, str]:
    """Declared and got frames at rate as seconds with two decimals, or as many more as tell them apart (a file a
    frame short said it declares 10.00 s of audio but 10.00 s could be read), and the frames missing, in words."""
    for places in range(2, 10):
        declared_s, got_s = f"{declared / rate:.{places}f}", f"{got / rate:.{places}f}"
        if declared_s != got_s:
            break
    missing = declared - got
    return declared_s, got_s, f"{missing} sample frame{'' if missing == 1 else 's'} missing"


def length_problem(path: str | os.PathLike, wav: WavData | None) -> str | None:
    """What is wrong, for an error message, when a WAV file's audio does not fit its header: the header declares
    less than follows (`WavData.overlong`: to be refused before it is played) or more than the file holds
    (`WavData.cut_short`: what is there can be played first); or when an Ogg file is cut short (edge.ogg_end: what
    is there can be played first). None when it fits, or for any other format."""
    if wav is None:
        return ogg_cut_short(path)
    too_long = wav and wav.overlong()
    if too_long:
        return (f"{path}'s WAV header declares {too_long.declared_s:.3f} s of audio but {too_long.present_s:.3f} s "
                "follow it (its writer never went back to fix the header); fix it with "
                f"`sox --ignore-length {shlex.quote(str(path))} fixed.wav`")
    cut = wav and wav.cut_short()
    if cut:
        frame = wav.frame_bytes
        declared, held, missing = shortfall(wav.declared // frame, wav.present // frame, wav.byte_rate / frame)
        return (f"{path} is cut short: its header declares {declared} s of audio but the file holds {held} s "
                f"({missing}: an interrupted recording or an incomplete copy); copy the file again, or "
                f"give it a header that fits: `sox {shlex.quote(str(path))} fixed.wav`")
    return None
