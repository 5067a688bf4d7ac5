"""Audio sources: each yields int16 mono chunks at the bundle's sample rate, whatever the input looks like.

- `FileSource`: any file libsndfile reads (WAV, FLAC, OGG, ...), any rate, width and channel count; downmixed to
  mono and resampled with soxr. `realtime=True` paces it like a live source. A WAV file cut short (edge/wav_header.py)
  is played to its end, then reported; one whose header declares less audio than follows it is refused.
- `PcmSource`: raw little-endian PCM on a byte stream (standard input), e.g. `arecord -f S16_LE -r 16000 -c 1`.
- `MicSource`: a live input through PortAudio (the optional `sounddevice` package). PortAudio calls back on its
  own thread; a bounded queue hands the blocks to the processing thread. When the queue is full a block is
  dropped and counted as an overrun, so falling behind is always visible.

`open_source(spec, ...)` picks one from the command line's AUDIO argument: a path, `-`, or `mic[:DEVICE]`.
Every problem is a `SourceError` whose message names the input, what is wrong and what to do.
"""
from __future__ import annotations

import atexit
import os
import queue
import re
import select
import shlex
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from edge.wav_header import (ID3V2_HEAD, KNOWN_CHUNKS, RIFF_LIMIT, MalformedWavHeader, TrueSizeWav, WavData, WavFormat,
                             empty_problem, is_open_length, length_problem, libsndfile_input, parse_format,
                             read_to_data, shortfall, skip, starts_wav, tag_span, wav_header_broken)

DEFAULT_CHUNK_MS = 100
IDLE_TICK_S = 1.0  # a live source that delivers nothing for this long yields an empty chunk
CLOSE_WAIT_S = 2.0  # how long closing a microphone may wait for PortAudio
MAX_MEASURED_GAP_S = 3600.0  # a longer jump of PortAudio's clock across an overrun is no measure of a gap
RATES = (1000, 384000)  # the input sample rates read, Hz (as --rate takes): a header saying 1 Hz is damaged
# Little-endian sample encodings: (numpy type, full scale, bytes a sample); S24_3LE is read into the top of an int32,
# S24_LE (24 bits in the low three bytes of four) into its low three
SAMPLES = {"S16_LE": ("<i2", 2.0**15, 2), "S32_LE": ("<i4", 2.0**31, 4), "FLOAT_LE": ("<f4", 1.0, 4),
           "U8": ("u1", 2.0**7, 1), "S24_3LE": ("<i4", 2.0**31, 3), "FLOAT64_LE": ("<f8", 1.0, 8),
           "S24_LE": ("<i4", 2.0**23, 4)}
PCM_FORMATS = {name: SAMPLES[name] for name in ("S16_LE", "S32_LE", "FLOAT_LE")}  # what --format takes


class SourceError(Exception):
    """The audio input cannot be read; the message says which input, what is wrong and how to fix it."""


class StopFlag:
    """Set from a signal handler to end a stream between chunks.

    A signal handler may only flip a flag (it must not take locks), so waits poll it in short slices.
    """

    def __init__(self):
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early once the flag is set."""
        end = time.monotonic() + seconds
        while not self._set:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))


def decode(data: bytes, fmt: str, channels: int) -> np.ndarray:
    """Whole frames of PCM in a `SAMPLES` encoding as float32 (frames, channels), full scale 1.0."""
    dtype, scale, width = SAMPLES[fmt]
    if width == 3:
        wide = np.zeros((len(data) // 3, 4), np.uint8)
        wide[:, 1:] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        samples = wide.view(dtype)[:, 0]
    elif fmt == "S24_LE":  # ALSA's: the top byte is no part of the sample; the low three are sign-extended
        samples = (np.frombuffer(data, dtype) << 8) >> 8
    else:
        samples = np.frombuffer(data, dtype)
    floats = samples.astype(np.float32)
    if fmt == "U8":
        floats -= 128  # unsigned: silence is 128
    if scale != 1.0:  # float samples stay as they are, NaN too (`finite_frames` finds them)
        floats /= np.float32(scale)
    return floats.reshape(-1, channels)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples (full scale 1.0) to int16, rounded and clipped (first to +-1: a float32 of 1e35, say from
    integer audio read as float, would overflow when scaled)."""
    return np.clip(np.rint(np.clip(samples, -1.0, 1.0) * 32768.0), -32768, 32767).astype(np.int16)


def finite_frames(block: np.ndarray) -> int:
    """How many frames of float audio come before the first that is not a number (all of them: len(block))."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return len(block)
    return int(np.argmax(bad.any(axis=1) if bad.ndim > 1 else bad))


def not_finite_error(name: str, at_s: float, advice: str | None = None) -> SourceError:
    """Float audio can hold NaN or infinities (a damaged file or a broken producer); cast to int16 they would
    become silence or full scale without a word, so they are refused where they are, once the audio before them
    has been yielded. advice: what to do, when not the usual."""
    return SourceError(f"{name} holds samples that are not numbers (NaN or infinite) at {at_s:.2f} s: "
                       + (advice or "the audio is damaged; the audio before that point was processed. "
                                    "Re-record or re-encode it"))


class MonoResampler:
    """Downmix float blocks (frames, channels) to mono and resample them, carrying filter state between blocks."""

    def __init__(self, in_rate: int, out_rate: int):
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32") if in_rate != out_rate else None

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono, last=last)
        return to_int16(mono)


class Pacer:
    """Holds chunks back until their audio would have been recorded, so a file plays like a live source."""

    def __init__(self, sample_rate: int, stop: StopFlag, clock: Callable[[], float] = time.monotonic):
        self._rate, self._stop, self._clock = sample_rate, stop, clock
        self._start: float | None = None
        self._samples = 0

    def wait_for(self, samples: int) -> None:
        if self._start is None:
            self._start = self._clock()
        self._samples += samples
        due = self._start + self._samples / self._rate
        delay = due - self._clock()
        if delay > 0:
            self._stop.sleep(delay)


class AudioSource:
    """Base: `chunks()` yields int16 mono arrays at `sample_rate` until the input ends or `stop` is set."""

    live = False  # live sources get wall-clock timestamps on their detections
    overruns = 0  # audio blocks lost because processing fell behind (live sources)
    # a warning about the input, given once it plays: the options a WAV stream's header overrode, a file's metadata
    # cut off
    layout_note: str | None = None

    def __init__(self, name: str, sample_rate: int, stop: StopFlag | None):
        self.name = name
        self.sample_rate = sample_rate
        self.stop = stop or StopFlag()

    @property
    def input_rate(self) -> int | None:
        """The input's own sample rate, before resampling (a WAV stream's: once its header is read)."""
        return None

    def chunks(self) -> Iterator[np.ndarray]:
        """int16 mono chunks at `sample_rate`. A live source may yield an empty one while its producer is quiet
        (standard input: every IDLE_TICK_S), so that whoever consumes them keeps its own clock."""
        raise NotImplementedError

    def take_gap(self) -> int:
        """Samples (at `sample_rate`) lost just before the chunk last yielded, so that stream time stays true."""
        return 0

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileSource(AudioSource):
    def __init__(self, path: str | os.PathLike, sample_rate: int, *, chunk_ms: float = DEFAULT_CHUNK_MS,
                 realtime: bool = False, stop: StopFlag | None = None,
                 clock: Callable[[], float] = time.monotonic):
        path = Path(path)
        super().__init__(str(path), sample_rate, stop)
        try:
            if not path.exists():
                raise SourceError(f"audio file not found: {path}; check the path")
            if path.is_fifo() or path.is_char_device():  # a recorder's pipe: read as a stream, header and all
                raise SourceError(f"{path} is a pipe or a device, not a file; stream it through standard input: "
                                  f"`basilar run - < {shlex.quote(str(path))}` (a WAV stream, or raw PCM with "
                                  "--format, --rate and --channels)")
            if not path.is_file():
                raise SourceError(f"{path} is not a file; give an audio file such as a WAV or FLAC")
            if empty := empty_problem(path):
                raise SourceError(empty)
            # soundfile takes a `.raw` name's word for it and wants the layout given; a WAV so named is a WAV
            named_raw = path.suffix.lower() == ".raw"
            if named_raw and not _starts_riff(path):
                quoted = shlex.quote(str(path))
                raise SourceError(f"{path} is headerless raw PCM; play it with `basilar run - --format S16_LE --rate "
                                  f"RATE --channels N < {quoted}`, or give it a header: `sox -t raw -e signed -b 16 -r "
                                  f"RATE -c N {quoted} OUT.wav`")
            audio, wav = libsndfile_input(path)
        except PermissionError as err:  # libsndfile would call it a "System error"
            raise SourceError(f"{path} cannot be read: permission denied; make it (and the folders above it) readable "
                              "by the user running basilar (the systemd service runs as user basilar), e.g. "
                              f"`chmod a+r {shlex.quote(str(path))}`") from err
        except OSError as err:  # a name too long, an I/O error
            raise SourceError(f"{path} cannot be read: {err.strerror or err}; check the path") from err
        problem = length_problem(path, wav)
        if wav and wav.overlong():  # never of open length: `audio` is the path, nothing to close
            raise SourceError(problem)
        self._cut_short = problem  # the only problem left: reported once the audio that is there has played
        self._opened = audio if isinstance(audio, TrueSizeWav) else None  # to close with the source
        # libsndfile refuses such a header as "SF_INFO struct incomplete", which says nothing of what is wrong
        if wav and wav.layout and (damaged := layout_problem(path, wav.layout.rate, wav.layout.channels)):
            if self._opened:
                self._opened.close()
            raise SourceError(damaged)
        if wav and wav.cut_tag:
            self.layout_note = (f"{path} ends inside the '{wav.cut_tag.decode('ascii')}' chunk after its audio "
                                "(metadata, cut off: an interrupted copy?); its audio is whole and is played")
        if named_raw and not self._opened:  # opened by descriptor, so that soundfile does not see the name
            audio = self._opened = open(os.open(path, os.O_RDONLY), "rb")
        try:
            # libsndfile would stop at 4 GiB; and it guesses at arecord's 24-in-32 from the samples (reading them
            # 48 dB low as 32-bit, or as 3-byte ones), where standard input reads them as ALSA does
            if wav and (wav.open_length and wav.present > RIFF_LIMIT or _alsa_s24(wav.layout)):
                self._file = _WavSamples(path, wav)
            else:
                self._file = soundfile.SoundFile(audio)
        except (soundfile.SoundFileError, RuntimeError, OSError, SourceError) as err:
            if self._opened:
                self._opened.close()
            if isinstance(err, SourceError):
                raise
            if wav_header_broken(path, wav):
                raise SourceError(f"cannot read {path} as audio: its WAV header is cut short or malformed "
                                  f"({_libsndfile_reason(err)}); copy the file again, or re-record or re-export "
                                  "it") from err
            raise SourceError(f"cannot read {path} as audio ({_libsndfile_reason(err)}); use a WAV, FLAC or OGG "
                              f"file, or convert it first, e.g. `sox INPUT -r {sample_rate} -c 1 -b 16 OUT.wav`"
                              ) from err
        self.file_rate = self._file.samplerate
        if damaged := layout_problem(path, self.file_rate, self._file.channels):
            self.close()
            raise SourceError(damaged)
        self.file_channels = self._file.channels
        self.file_format = f"{self._file.format}/{self._file.subtype}"
        self._float = self._file.subtype in ("FLOAT", "DOUBLE")  # the encodings that can hold NaN
        self._block = max(1, round(self.file_rate * chunk_ms / 1000))
        self._pacer = Pacer(sample_rate, self.stop, clock) if realtime else None
        self._declared = declared_frames(self._file)
        self._end = frames_to_play(self._file, self._declared)
        # a FLAC written into a pipe (_UNKNOWN_FRAMES would take a long recording, 93 min at 48 kHz, for one)
        self._unknown_length = self._file.frames == _COUNT_UNKNOWN
        self.frames_read = 0  # at the file's own rate

    @property
    def input_rate(self) -> int:
        return self.file_rate

    def chunks(self) -> Iterator[np.ndarray]:
        resample = MonoResampler(self.file_rate, self.sample_rate)
        frames = 0
        while not self.stop.is_set():
            want = self._block if self._end is None else min(self._block, self._end - frames)
            # NaN where nothing is read: when reading fails part-way, the frames it read are the finite ones
            block = np.full((want, self.file_channels), np.nan, np.float32)
            failed = None
            try:
                block = self._file.read(want, out=block)
            except (soundfile.SoundFileError, RuntimeError) as err:
                block, failed = block[:finite_frames(block)], err
            # The last block of a FLAC of unknown length (written into a pipe) is read whole, then soundfile's
            # seek past it fails: that is its end, not damage
            ended = failed is not None and self._unknown_length and "psf_fseek" in str(failed)
            good = finite_frames(block) if self._float else len(block)
            damaged = good < len(block)
            frames += good
            self.frames_read = frames
            last = damaged or failed is not None or len(block) < self._block
            chunk = resample(block[:good], last=last)
            if len(chunk):
                if self._pacer:
                    self._pacer.wait_for(len(chunk))
                yield chunk
            if damaged:
                raise not_finite_error(self.name, frames / self.file_rate)
            if failed is not None and not ended:
                # what was read, not tell(): after some failures libsndfile's position is -1
                raise SourceError(f"{self.name} is corrupt: reading failed after about {frames / self.file_rate:.2f} "
                                  f"s ({_libsndfile_reason(failed)}); the audio before that point was processed. "
                                  "Re-record or re-encode the file") from failed
            if last:
                if self._cut_short:
                    raise SourceError(f"{self._cut_short}; the audio that is there was processed")
                # libsndfile ends a cut or damaged file without an error (an unknown length declares nothing)
                if frames < self._declared and not self._unknown_length:
                    declared, read, missing = shortfall(self._declared, frames, self.file_rate)
                    raise SourceError(f"{self.name} ends early: its header declares {declared} s of audio but "
                                      f"{read} s could be read ({missing}: cut short or "
                                      "damaged; after damage the times of detections may be early); the audio that "
                                      "could be read was processed. Copy the file again, or re-record or re-encode it")
                return

    def close(self) -> None:
        self._file.close()
        if self._opened:
            self._opened.close()


def layout_problem(path, rate: int, channels: int) -> str | None:
    """What is wrong, for an error message, with a header that gives a rate outside RATES or no channels."""
    if channels < 1:
        what = f"{channels} channels"
    elif not RATES[0] <= rate <= RATES[1]:
        what = f"a sample rate of {rate} Hz, outside the {RATES[0]} to {RATES[1]} Hz basilar reads"
    else:
        return None
    return f"{path}'s header gives {what}: a damaged header, or a file that is not audio; export or record it again"


def _starts_riff(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) in (b"RIFF", b"RF64")


# libsndfile counts a cut file's frames from what it holds, and its log notes what the header declared: frames, or
# for some formats a size in bytes beside the size the file holds. By format, as libsndfile names them.
_NOTED_LENGTH = {name: re.compile(pattern) for name, pattern in {
    "AIFF": r"'COMM' chunk \((?P<frames>\d+)\) not equal",
    "RF64": r"from 'ds64' chunk of (?P<frames>\d+)",
    "AVR": r"Frames\s*: (?P<frames>\d+)",
    "MPC2K": r"Frames\s*: (?P<frames>\d+)",
    "AU": r"Data Size\s*: (?P<bytes>\d+) \(should be (?P<held>\d+)\)",
    "W64": r"riff : (?P<bytes>\d+) \(should be (?P<held>\d+)\)",
    "SVX": r"(?:FORM|BODY) : (?P<bytes>\d+) \(should be (?P<held>\d+)\)",
    "WVE": r"Data length (?P<bytes>\d+) should be (?P<held>\d+)",
    "MAT4": r"truncated\. (?P<held>\d+) <--> (?P<bytes>\d+)",
}.items()}
_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "ALAW": 1, "ULAW": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
                 "DOUBLE": 8}
_UNKNOWN_FRAMES = 1 << 28  # counts this large are placeholders (sox into a pipe writes 0x3F800000), not lengths
_COUNT_UNKNOWN = 2**63 - 1  # libsndfile's frame count for a FLAC whose header gives none (SF_COUNT_MAX)


def declared_frames(file) -> int:
    """The frames `file`'s header declares: libsndfile's count, or another its log (or a NIST header) notes.

    More than libsndfile's count: the file was cut short. Fewer: bytes follow the audio, which libsndfile would play
    as more of it (W64, 8SVX, AVR, MPC2000 and NIST files; for the others it stops where the header says).
    """
    if file.format == "NIST":
        declared = _nist_sample_count(file.name)
    elif not (pattern := _NOTED_LENGTH.get(file.format)):
        return file.frames
    elif not (noted := pattern.search(getattr(file, "extra_info", ""))):
        return file.frames
    elif "frames" in pattern.groupindex:
        declared = int(noted["frames"])
    elif file.subtype in _SAMPLE_BYTES:  # the bytes the file lacks (or holds past the audio), in whole frames
        lacks = int(noted["bytes"]) - int(noted["held"])
        declared = file.frames + int(lacks / (_SAMPLE_BYTES[file.subtype] * file.channels))  # toward 0, as libsndfile
    else:  # a compressed encoding, whose bytes do not count frames
        return file.frames
    return declared if 0 < declared < _UNKNOWN_FRAMES else file.frames  # 0 or a placeholder: the length is open


def frames_to_play(file, declared: int) -> int | None:
    """How many frames of `file` to read, given `declared_frames(file)`: that where bytes follow it, None for all."""
    return declared if declared < file.frames else None


def _nist_sample_count(path) -> int:
    """The frames a NIST SPHERE file's text header declares (`sample_count -i N`), which libsndfile does not log."""
    try:
        with open(path, "rb") as file:
            header = file.read(4096).split(b"end_head")[0]
    except (OSError, TypeError):  # not opened by its name
        return 0
    found = re.search(rb"\nsample_count -i (\d+)", header)
    count = int(found[1]) if found else 0
    return count if count < _UNKNOWN_FRAMES else 0


class _WavSamples:
    """The samples of a WAV file past 4 GiB whose length was left open, read here since libsndfile stops at 4 GiB,
    or of arecord's 24-in-32 (`_alsa_s24`), which libsndfile guesses at; as much of soundfile.SoundFile as FileSource
    uses."""

    format = "WAV"
    _SUBTYPES = {"S16_LE": "PCM_16", "S32_LE": "PCM_32", "FLOAT_LE": "FLOAT", "U8": "PCM_U8", "S24_3LE": "PCM_24",
                 "FLOAT64_LE": "DOUBLE", "S24_LE": "PCM_24"}

    def __init__(self, path: Path, wav: WavData):
        self._pcm = _pcm_format(wav.layout) if wav.layout else None
        if self._pcm is None:
            raise SourceError(f"{path} is a WAV file over 4 GiB whose header leaves its length open, in an encoding "
                              "basilar reads only up to 4 GiB; convert it to FLAC or RF64 first: `sox --ignore-length "
                              f"{shlex.quote(str(path))} OUT.flac`")
        self.samplerate, self.channels = wav.layout.rate, wav.layout.channels
        self.subtype = self._SUBTYPES[self._pcm]
        self._frame_bytes = SAMPLES[self._pcm][2] * self.channels
        self.frames = (wav.present if wav.open_length else min(wav.declared, wav.present)) // self._frame_bytes
        self._read = 0
        self._file = open(path, "rb")
        self._file.seek(wav.size_at + 4)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def tell(self) -> int:
        return self._read

    def read(self, frames: int, out: np.ndarray) -> np.ndarray:
        count = min(frames, self.frames - self._read)
        samples = decode(self._file.read(count * self._frame_bytes), self._pcm, self.channels)
        self._read += len(samples)
        out[:len(samples)] = samples
        return out[:len(samples)]

    def close(self) -> None:
        self._file.close()


class PcmSource(AudioSource):
    """Raw interleaved little-endian PCM from a byte stream (standard input by default).

    A stream that starts with a WAV header (arecord writes one unless told `-t raw`; so does `sox ... -t wav -`)
    is read by its header: its format, rate and channels replace the options, and the header is not played. Tags
    after the audio the header declares are not played either; the next file's audio follows when files were joined
    (`cat a.wav b.wav`), and anything else is more audio the header did not count."""

    live = True

    def __init__(self, sample_rate: int, *, pcm_format: str = "S16_LE", rate: int | None = None,
                 channels: int = 1, stream: BinaryIO | None = None, chunk_ms: float = DEFAULT_CHUNK_MS,
                 stop: StopFlag | None = None, stated: tuple[str, ...] = ()):
        """`stated`: which of "format", "rate" and "channels" the user gave, to be told if a WAV header differs."""
        super().__init__("standard input", sample_rate, stop)
        self._stated = stated
        fmt = pcm_format.upper()
        if fmt not in PCM_FORMATS:
            raise SourceError(f"PCM format {pcm_format!r} is not supported; use one of {', '.join(PCM_FORMATS)}")
        if channels < 1:
            raise SourceError(f"--channels {channels}: must be 1 or more")
        self.rate = rate or sample_rate
        if not RATES[0] <= self.rate <= RATES[1]:
            raise SourceError(f"--rate {self.rate}: must be the input's sample rate in Hz (e.g. 16000)")
        self._chunk_ms = chunk_ms
        self._from_header = False
        self._data_left: int | None = None  # audio bytes a WAV header declares, still to come; None: to the end
        self._declared = 0  # audio bytes the WAV header last read declares
        self._set_layout(fmt, self.rate, channels)
        self._stream = stream if stream is not None else sys.stdin.buffer

    @property
    def input_rate(self) -> int:
        return self.rate

    def _set_layout(self, fmt: str, rate: int, channels: int) -> None:
        self.pcm_format, self.rate, self.channels = fmt, rate, channels
        self._frames_read = 0
        self._frame_bytes = SAMPLES[fmt][2] * channels
        self._chunk_bytes = max(1, round(rate * self._chunk_ms / 1000)) * self._frame_bytes

    def _read_exactly(self, size: int) -> bytes:
        """`size` bytes, or fewer only at the end of input (or on a stop request)."""
        data = b""
        while len(data) < size:
            more = self._read(size - len(data))
            if not more:
                break
            data += more
        return data

    def _skip_wav_header(self, first: bytes) -> bytes:
        """Read a WAV header if the stream starts with one (its first bytes: `first`) and take its layout; returns
        the bytes read past it that are audio (all of them when there is no header)."""
        head = first + self._read_exactly(12 - len(first)) if first else first
        if not starts_wav(head):
            _refuse_other_containers(head)
            return head
        header = self._read_header()
        if header is None:
            return b""
        layout, self._data_left = header  # when that is counted down, `_after_declared_audio`
        self._declared = self._data_left or 0
        self._note_overridden_options(layout)
        self._set_layout(*layout)
        self._from_header = True
        self.name = (f"standard input (WAV: {self.pcm_format}, {self.rate} Hz, {self.channels} "
                     f"channel{'s' if self.channels > 1 else ''})")
        return b""

    def _note_overridden_options(self, layout: tuple[str, int, int]) -> None:
        """The options given that the header's layout replaces, named in `layout_note` (the header is right: it is
        what the program writing the stream sends)."""
        names = ("format", "rate", "channels")
        given, header = dict(zip(names, (self.pcm_format, self.rate, self.channels))), dict(zip(names, layout))
        differ = [name for name in names if name in self._stated and given[name] != header[name]]
        if differ:
            self.layout_note = (f"standard input starts with a WAV header, and its layout is used: "
                                f"{', '.join(f'{name} {header[name]}' for name in differ)}, not "
                                f"{' '.join(f'--{name} {given[name]}' for name in differ)} as given; leave those "
                                "options out for a WAV stream")

    def _read_header(self) -> tuple[tuple[str, int, int], int | None] | None:
        """The rest of a WAV header, after the 12 bytes `starts_wav` checked: its audio's (format, rate, channels)
        and declared size (None for an open length: audio to the end). None when a stop request came while it was
        awaited."""
        try:
            fmt, length = read_to_data(self._read_exactly)
        except EOFError:
            if self.stop.is_set():  # nothing to play, no error
                return None
            raise SourceError("standard input ended inside its WAV header; check the program that writes it") from None
        except MalformedWavHeader as err:
            raise SourceError(f"standard input's WAV header is malformed ({err}); check the program that writes it, "
                              "or send raw PCM instead (arecord -t raw, sox ... -t raw -)") from None
        if fmt is None:
            raise SourceError("standard input's WAV header has no format chunk before its audio; send raw PCM "
                              "instead (arecord -t raw, sox ... -t raw -)")
        return _wav_layout(fmt), None if is_open_length(length) else length

    def _after_declared_audio(self) -> bytes:
        """Once a WAV header's declared audio has come, what follows decides: tags (known chunks, ID3) are skipped;
        a next WAV file (`cat a.wav b.wav | basilar run -`) carries on with its audio; anything else is more audio,
        played to the end (a writer that could not fix its header, such as Python's wave module into a pipe).
        Returns the first bytes of the audio that follows, b"" at the end of input, None while the producer is quiet
        (so the run loop can report health, as it does while audio is awaited)."""
        carry = b""  # the first byte of what follows an odd tag, read to see whether it was the tag's pad byte
        while True:
            first = carry or self._read(8, idle_s=IDLE_TICK_S)
            if first is None:
                return None
            head = first + self._read_exactly(8 - len(first))
            carry = b""
            if head.startswith((b"ID3", b"RIFF")):  # their sizes and form come later than a chunk's
                head += self._read_exactly(ID3V2_HEAD - 8 if head.startswith(b"ID3") else 4)
            if len(head) < 8:  # the end; a few stray bytes (a pad byte too many) are no audio
                return b""
            if starts_wav(head):
                return self._next_file()
            span = tag_span(head, _STREAM_CHUNKS)
            if span is None:
                self._data_left = None
                return head
            skip(self._read_exactly, span - len(head))
            if span & 1:  # its pad byte comes with it, unless its writer left it out (no chunk id starts with 0)
                carry = self._read_exactly(1).lstrip(b"\0")

    def _next_file(self) -> bytes:
        """The header of a WAV file that follows another's audio (files joined by `cat`) is read, and the first
        bytes of its audio returned; the files must share one layout, which the first header set."""
        header = self._read_header()
        if header is None:
            return b""
        (fmt, rate, channels), self._data_left = header
        self._declared = self._data_left or 0
        if (fmt, rate, channels) != (self.pcm_format, self.rate, self.channels):  # its samples would be misread
            raise SourceError(f"standard input holds WAV files one after another, and a later one is {fmt}, {rate} Hz, "
                              f"{channels} channel(s) where the first is {self.pcm_format}, {self.rate} Hz, "
                              f"{self.channels} channel(s); give them one at a time, or convert them to one layout "
                              f"first, e.g. `sox IN.wav -e signed -b 16 -r {self.rate} -c {self.channels} OUT.wav`")
        first = self._frame_bytes if self._data_left is None else min(self._frame_bytes, self._data_left)
        return self._read_exactly(first)  # the rest is read as the header declares

    def _nan_fix(self) -> str | None:
        """What to do about samples that are not numbers: raw PCM said to be float is most often not float at all."""
        if self._from_header:
            return None  # the header says float: the audio is damaged
        if self._frames_read == 0:
            return (f"is it really {self.pcm_format}? Check --format against what the program writing the stream "
                    "sends (e.g. `arecord -f S16_LE` sends S16_LE)")
        return (f"the stream is damaged, or not {self.pcm_format}; the audio before that point was processed. "
                "Check --format against the program writing the stream")

    def _read(self, size: int, idle_s: float | None = None) -> bytes | None:
        """Up to `size` bytes; b"" at end of input. Waits in short slices so a stop request is seen; None when
        nothing came for `idle_s` seconds (so the caller can do its periodic work while the producer is quiet)."""
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self._stream.read(size)
        waited = 0.0
        while not self.stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                return os.read(fd, size)
            waited += 0.1
            if idle_s is not None and waited >= idle_s:
                return None
        return b""

    def _waiting(self, read: Callable[[], object]) -> Generator[np.ndarray, None, object]:
        """read()'s result, yielding an empty chunk every IDLE_TICK_S until it comes, so that health stays on time
        while a WAV header (or what follows a file's audio) trickles in: the header parser waits inside for each
        piece, so it reads on a helper thread, the stream's only reader meanwhile (a stop request ends its wait)."""
        outcome: list = []

        def work() -> None:
            try:
                outcome.append((True, read()))
            except BaseException as err:  # raised again by the caller's thread
                outcome.append((False, err))

        helper = threading.Thread(target=work, name="basilar-stdin-header", daemon=True)
        helper.start()
        while True:
            helper.join(IDLE_TICK_S)
            if not helper.is_alive():
                break
            yield np.zeros(0, np.int16)
        done, value = outcome[0]
        if not done:
            raise value
        return value

    def chunks(self) -> Iterator[np.ndarray]:
        while (first := self._read(12, idle_s=IDLE_TICK_S)) is None:  # nothing yet: tick until the stream starts
            yield np.zeros(0, np.int16)
        pending = yield from self._waiting(lambda: self._skip_wav_header(first))  # without a header: audio
        resample = MonoResampler(self.rate, self.sample_rate)
        ended = False
        tick_at = time.monotonic() + IDLE_TICK_S  # when an empty chunk is due, if no chunk came before
        while not self.stop.is_set():
            if len(pending) < self._chunk_bytes:
                want = self._chunk_bytes - len(pending)
                if self._data_left is not None:
                    want = min(want, self._data_left)
                if want:
                    data = self._read(want, idle_s=max(0.0, tick_at - time.monotonic()))
                else:
                    data = yield from self._waiting(self._after_declared_audio)
                if data is None:  # the producer is quiet: an empty chunk lets the run loop report health
                    yield np.zeros(0, np.int16)
                    tick_at = time.monotonic() + IDLE_TICK_S
                    continue
                if self._data_left:
                    self._data_left -= len(data)
                pending += data
                ended = not data
                if not ended and len(pending) < self._chunk_bytes:  # a pipe hands over less than asked for
                    if time.monotonic() >= tick_at:  # trickling in: the chunk is long in filling, health is not
                        yield np.zeros(0, np.int16)
                        tick_at = time.monotonic() + IDLE_TICK_S
                    continue
            whole = len(pending) - len(pending) % self._frame_bytes
            samples = decode(pending[:whole], self.pcm_format, self.channels)
            good = finite_frames(samples) if self.pcm_format.startswith("FLOAT") else len(samples)
            damaged = good < len(samples)
            advice = self._nan_fix() if damaged else None  # asked before the count moves: none read yet, or some
            self._frames_read += good
            chunk = resample(samples[:good], last=ended or damaged)
            pending = pending[whole:]
            if len(chunk):
                yield chunk
                tick_at = time.monotonic() + IDLE_TICK_S
            if damaged:
                raise not_finite_error(self.name, self._frames_read / self.rate, advice)
            if ended:
                came = self._declared - (self._data_left or 0)  # an open length is None: it ends where it ends
                # only whole frames missing count: a size a byte too large (a writer's slip) leaves every frame there
                if came // self._frame_bytes < self._declared // self._frame_bytes and not self.stop.is_set():
                    declared, came_s, missing = shortfall(self._declared // self._frame_bytes,
                                                          came // self._frame_bytes, self.rate)
                    raise SourceError(f"standard input ended early: its WAV header declares {declared} s of audio "
                                      f"but {came_s} s came, {missing} (the program writing it stopped or was "
                                      "stopped); the audio that came was processed")
                # a WAV stream's layout is its header's: a part of a frame at its end is where its writer was
                # stopped (arecord, killed), dropped as libsndfile drops a file's
                if pending and not self.stop.is_set() and not self._from_header:
                    raise SourceError(f"standard input ended in the middle of a sample frame ({len(pending)} "
                                      f"stray bytes; one frame is {self._frame_bytes} bytes); check --format "
                                      "and --channels against the producer")
                return


# Files that are not raw PCM, by their first bytes (a raw stream starts so by chance once in 2^24 or less): played as
# samples they would be noise, or an AIFF's silence. An MP3 without an ID3 tag starts with a frame header, which a
# live stream's first samples match about once in 16,000 starts: refusing that would fail a service's start at
# random, so such an MP3 plays as noise.
_CONTAINERS = {b"fLaC": "a FLAC", b"OggS": "an Ogg", b"FORM": "an AIFF", b"RIFX": "a big-endian WAV",
               b"RF64": "an RF64 WAV", b".snd": "a Sun/NeXT audio", b"ID3": "an MP3", b"riff": "a Sony Wave64",
               b"caff": "a Core Audio (CAF)", b"NIST_1A": "a NIST SPHERE"}


def _refuse_other_containers(head: bytes) -> None:
    kind = next((kind for magic, kind in _CONTAINERS.items() if head.startswith(magic)), None)
    if kind:
        raise SourceError(f"standard input is {kind} file, not raw PCM or a WAV stream; give the file's path "
                          "instead of piping it (`basilar run FILE`), or convert it on the way: "
                          "`sox FILE -t wav - | basilar run -`")


# What a stream takes for a tag after a WAV file's audio: known chunks, and a whole RIFF file that is not WAVE (a WAVE
# one is the next file). Anything else there is more audio.
_STREAM_CHUNKS = KNOWN_CHUNKS | {b"RIFF"}

# WAV format tags and sample widths that map onto a `SAMPLES` encoding
_WAV_FORMATS = {(1, 8): "U8", (1, 16): "S16_LE", (1, 24): "S24_3LE", (1, 32): "S32_LE", (3, 32): "FLOAT_LE",
                (3, 64): "FLOAT64_LE"}


def _encoding(layout: WavFormat) -> str | None:
    """The `SAMPLES` encoding a WAV format chunk's tag, sample width and frame size name; None for one not read here.
    24-bit samples in 4-byte slots are what `arecord -f S24_LE` writes: ALSA's S24_LE, "Signed 24 bit Little Endian
    using low three bytes in 32-bit word" (alsa-lib, pcm.h), as aplay reads such a file back. (A container that puts
    them in the top three says 32 bits, WAVE_FORMAT_EXTENSIBLE's 24 valid of 32, and is read as S32_LE.)"""
    pcm_format = _WAV_FORMATS.get((layout.tag, layout.bits))
    if pcm_format == "S24_3LE" and layout.channels and layout.block_align == 4 * layout.channels:
        return "S24_LE"
    return pcm_format


def _alsa_s24(layout: WavFormat | None) -> bool:
    """Whether a WAV file holds arecord's 24-bit samples in 4-byte slots (S24_LE), in a layout read here."""
    return layout is not None and _pcm_format(layout) == "S24_LE"


def _frame_fits(layout: WavFormat, pcm_format: str) -> bool:
    return layout.block_align in (0, layout.channels * SAMPLES[pcm_format][2])


def _pcm_format(layout: WavFormat) -> str | None:
    """The `SAMPLES` encoding of a WAV format chunk's audio; None when it is not plain PCM or float that is read here,
    or the layout makes no sense (no channels, a frame size that does not fit, a rate out of RATES)."""
    pcm_format = _encoding(layout)
    if pcm_format and layout.channels >= 1 and _frame_fits(layout, pcm_format) and RATES[0] <= layout.rate <= RATES[1]:
        return pcm_format
    return None


def _wav_layout(fmt: bytes) -> tuple[str, int, int]:
    """(PCM format, rate, channels) from a WAV fmt chunk, or a SourceError naming what cannot be read raw."""
    parsed = parse_format(fmt)
    if parsed is None:
        raise SourceError("standard input's WAV header has a format chunk too short to read; send raw PCM instead")
    if damaged := layout_problem("standard input", parsed.rate, parsed.channels):  # worded as a file's is
        raise SourceError(damaged)
    pcm_format = _encoding(parsed)
    if pcm_format is None:
        raise SourceError(f"standard input is a WAV stream of {parsed.bits}-bit samples (format tag {parsed.tag}), "
                          f"{parsed.channels} channel(s) at {parsed.rate} Hz, which basilar does not read from a pipe; "
                          "send 8-, 16-, 24- or 32-bit integer PCM or 32- or 64-bit float, e.g. `arecord -f S16_LE -r "
                          "16000 -c 1` or `sox IN -t wav -e signed -b 16 -`")
    if not _frame_fits(parsed, pcm_format):
        raise SourceError(f"standard input's WAV header gives {parsed.block_align} bytes a frame for {parsed.channels} "
                          f"channel(s) of {parsed.bits}-bit samples: a damaged header; check the program that writes "
                          "it, or send raw PCM instead (arecord -t raw, sox ... -t raw -)")
    return pcm_format, parsed.rate, parsed.channels


class MicSource(AudioSource):
    """A live input through PortAudio. `device` is an index, a (part of a) name, or None for the default; it is
    opened with `channels` channels, which are averaged (a stereo-only input, or a microphone on its second)."""

    live = True

    def __init__(self, device: str | int | None, sample_rate: int, *, channels: int = 1,
                 chunk_ms: float = DEFAULT_CHUNK_MS, queue_ms: float = 5000, stop: StopFlag | None = None,
                 silence_timeout_s: float = 2.0, stream_factory: Callable | None = None):
        super().__init__(f"microphone {device!r}" if device is not None else "the default microphone",
                         sample_rate, stop)
        self.overruns = 0
        self.dropped_samples = 0
        self._lost_since_put = 0  # input samples dropped since the last block that made it into the queue
        self._next_adc = 0.0  # when the next block's first frame is due, on PortAudio's clock (0: unknown)
        self._gap = 0  # input samples lost before the block chunks() yielded last
        self._timeout = silence_timeout_s
        self._finished = False
        sd = None if stream_factory else import_sounddevice()
        if sd is not None:
            info = _find_input(sd, device)
            self.name = f"microphone {info['name']!r}"
            if channels > info["channels"]:
                raise SourceError(f"{self.name} has {info['channels']} input channel(s); --channels {channels} asks "
                                  f"for more: give --channels {info['channels']} or fewer")
            device, self.rate = info["index"], _pick_rate(sd, info["index"], sample_rate, info, channels)
            stream_factory = sd.InputStream
        else:
            self.rate = sample_rate
        self._block = max(1, round(self.rate * chunk_ms / 1000))
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, round(queue_ms / chunk_ms)))
        try:
            self._stream = stream_factory(device=device, samplerate=self.rate, channels=channels, dtype="int16",
                                          blocksize=self._block, callback=self._on_audio,
                                          finished_callback=self._on_finished)
        except Exception as err:  # PortAudio reports every failure as its own error type
            layout = f" with {channels} channels" if channels > 1 else ""
            raise SourceError(f"cannot open {self.name}{layout} at {self.rate} Hz ({err}); list inputs and their "
                              "channels with `basilar devices`") from err

    def _on_audio(self, indata, frames, time_info, status) -> None:
        """PortAudio's thread: hand a copy of the block over; never block here."""
        adc = getattr(time_info, "inputBufferAdcTime", 0.0) or 0.0  # when the block's first frame was sampled
        if status and getattr(status, "input_overflow", False):
            self.overruns += 1  # PortAudio itself lost input (the process was stopped or starved)
            # As much as the ADC clock moved past where this block should have begun: the detections after the
            # gap then keep their times (0 where the host API gives no times; the loss is counted, not measured)
            missing = round((adc - self._next_adc) * self.rate) if self._next_adc and adc else 0
            if 0 < missing <= MAX_MEASURED_GAP_S * self.rate:
                self.dropped_samples += missing
                self._lost_since_put += missing
        self._next_adc = adc + frames / self.rate if adc else 0.0
        try:
            # Each block carries the audio lost just before it: the gap sits there in the stream, not where the
            # processing thread happens to be when the loss is counted.
            self._queue.put_nowait((indata.copy(), self._lost_since_put))
            self._lost_since_put = 0
        except queue.Full:
            self.overruns += 1
            self.dropped_samples += frames
            self._lost_since_put += frames

    def _on_finished(self) -> None:
        self._finished = True

    @property
    def input_rate(self) -> int:
        return self.rate

    def chunks(self) -> Iterator[np.ndarray]:
        resample = MonoResampler(self.rate, self.sample_rate)
        self._stream.start()
        waited = 0.0
        while not self.stop.is_set():
            try:
                block, lost = self._queue.get(timeout=0.05)
            except queue.Empty:
                waited += 0.05
                if self._finished or not self._stream.active:
                    raise SourceError(f"{self.name} stopped delivering audio (unplugged, or taken by another "
                                      "program?); check `basilar devices` and restart") from None
                if waited >= self._timeout:
                    raise SourceError(f"no audio from {self.name} for {self._timeout:g} s (device gone or "
                                      "stalled?); check `basilar devices` and restart") from None
                continue
            waited = 0.0
            self._gap += lost
            yield resample(block.astype(np.float32) / np.float32(32768.0))

    def take_gap(self) -> int:
        gap, self._gap = self._gap, 0
        return round(gap * self.sample_rate / self.rate)

    def close(self) -> None:
        """Stop the stream, waiting CLOSE_WAIT_S at most: a device stuck in a read holds PortAudio's stop until it
        returns, perhaps never, and the run must still end and say why (a service is then restarted)."""
        def shut():
            try:
                self._stream.abort()  # what is still buffered is not wanted: the run is ending
                self._stream.close()
            except Exception:  # the device may already be gone; nothing more to release
                pass

        closer = threading.Thread(target=shut, name="microphone-close", daemon=True)
        closer.start()
        closer.join(CLOSE_WAIT_S)
        sd = sys.modules.get("sounddevice")
        if closer.is_alive() and sd is not None:
            # sounddevice terminates PortAudio at exit, which would wait on this stream for good as well; the
            # system releases the device when the process ends
            atexit.unregister(getattr(sd, "_exit_handler", lambda: None))


def import_sounddevice():
    """The optional PortAudio binding, or a SourceError saying how to install it."""
    try:
        import sounddevice
    except ImportError as err:
        raise SourceError("microphone input needs the sounddevice package, which this Python lacks: install it "
                          f"with `{shlex.quote(sys.executable)} -m pip install sounddevice` (or `pip install '.[mic]'` "
                          "in basilar's checkout), and the PortAudio library: `sudo apt install libportaudio2`") \
            from err
    except OSError as err:
        raise SourceError(f"microphone input needs the PortAudio library ({err}): "
                          "sudo apt install libportaudio2") from err
    return sounddevice


def list_inputs(sd) -> list[dict]:
    """Every device with input channels: index, name, channels, default rate, whether it is the default."""
    try:
        default = sd.default.device[0]
        devices = sd.query_devices()
    except Exception as err:
        raise SourceError(f"cannot list audio devices ({err})") from err
    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_samplerate": d["default_samplerate"], "default": i == default}
            for i, d in enumerate(devices) if d["max_input_channels"] > 0]


def _find_input(sd, device: str | int | None) -> dict:
    inputs = list_inputs(sd)
    if not inputs:
        raise SourceError("no audio input devices found; plug in a microphone (and check the user is in the "
                          "'audio' group)")
    if device is None:
        matches = [d for d in inputs if d["default"]] or inputs[:1]
    elif isinstance(device, int) or str(device).isdigit():
        matches = [d for d in inputs if d["index"] == int(device)]
    else:
        exact = [d for d in inputs if d["name"] == device]
        matches = exact or [d for d in inputs if str(device).lower() in d["name"].lower()]
    if len(matches) != 1:
        names = "; ".join(f"{d['index']}: {d['name']}" for d in inputs)
        problem = "no input device matches" if not matches else "more than one input device matches"
        raise SourceError(f"{problem} {device!r}; inputs are: {names} (give the index, e.g. mic:{inputs[0]['index']})")
    return matches[0]


def _pick_rate(sd, index: int, wanted: int, info: dict, channels: int) -> int:
    """The bundle's rate when the device supports it, else the device's own rate (we resample)."""
    try:
        sd.check_input_settings(device=index, samplerate=wanted, channels=channels, dtype="int16")
        return wanted
    except Exception:
        return int(info["default_samplerate"])


def _libsndfile_reason(err: Exception) -> str:
    text = str(err)
    reason = text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text
    return reason.strip().rstrip(".")


def parse_mic_spec(spec: str) -> tuple[bool, str | int | None]:
    """`mic` -> (True, None); `mic:2` -> (True, 2); `mic:USB` -> (True, "USB"); anything else -> (False, None)."""
    if spec != "mic" and not spec.startswith("mic:"):
        return False, None
    device = spec[4:] or None
    return True, int(device) if device and device.isascii() and device.isdigit() else device  # "²" is a name


def open_source(spec: str, sample_rate: int, *, chunk_ms: float = DEFAULT_CHUNK_MS, realtime: bool = False,
                pcm_format: str = "S16_LE", pcm_rate: int | None = None, channels: int = 1,
                stop: StopFlag | None = None, stated: tuple[str, ...] = ()) -> AudioSource:
    """The source named by the AUDIO argument: a file path, `-` (raw PCM on stdin) or `mic[:DEVICE]`. `channels`
    is the raw PCM's channel count, or how many a microphone is opened with; a file's own count is used.
    `stated`: which raw PCM options the user gave (PcmSource)."""
    if spec == "-":
        return PcmSource(sample_rate, pcm_format=pcm_format, rate=pcm_rate, channels=channels, chunk_ms=chunk_ms,
                         stop=stop, stated=stated)
    is_mic, device = parse_mic_spec(spec)
    if is_mic:
        return MicSource(device, sample_rate, channels=channels, chunk_ms=chunk_ms, stop=stop)
    try:
        missing = not Path(spec).exists()
    except OSError:  # a folder on the way that may not be read, a name too long: FileSource says so
        missing = False
    if missing:  # here, unlike where only files are read, the other kinds of AUDIO are an option
        raise SourceError(f"audio file not found: {spec}; check the path (use '-' for raw PCM on standard input or "
                          "'mic' for the microphone)")
    return FileSource(spec, sample_rate, chunk_ms=chunk_ms, realtime=realtime, stop=stop)
