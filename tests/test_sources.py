"""Audio sources: real files of many rates/widths/channel counts, corrupt and wrong files, raw PCM, microphones."""
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
import types
import time
import warnings

import numpy as np
import pytest
import soundfile

from edge.sources import (FileSource, MicSource, PcmSource, SourceError, StopFlag, open_source, parse_mic_spec,
                          to_int16)
from edge.wav_header import wav_cut_short
from tests.conftest import REPO, require, require_program

RATE = 16000


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def read_all(source) -> np.ndarray:
    chunks = list(source.chunks())
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def peak_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


def test_a_16k_mono_int16_file_comes_back_sample_for_sample_in_100ms_chunks(tmp_path):
    samples = np.random.default_rng(1).integers(-32768, 32767, size=RATE * 2 + 123, dtype=np.int16)
    path = tmp_path / "same.wav"
    soundfile.write(path, samples, RATE, subtype="PCM_16")
    with FileSource(path, RATE) as source:
        chunks = list(source.chunks())
    assert [len(c) for c in chunks[:-1]] == [1600] * (len(chunks) - 1)
    np.testing.assert_array_equal(np.concatenate(chunks), samples)


@pytest.mark.parametrize("rate, subtype, channels, ext", [
    (8000, "PCM_16", 1, "wav"),
    (44100, "PCM_24", 2, "wav"),
    (48000, "FLOAT", 4, "wav"),
    (22050, "PCM_U8", 1, "wav"),
    (32000, "PCM_32", 3, "wav"),
    (11025, "PCM_16", 2, "flac"),
    (16000, "PCM_24", 1, "flac"),
    (24000, "VORBIS", 2, "ogg"),
])
def test_files_of_any_rate_width_and_channel_count_become_16k_mono(tmp_path, rate, subtype, channels, ext):
    tone = sine(440.0, 1.0, rate, amplitude=0.5)
    path = tmp_path / f"tone.{ext}"
    soundfile.write(path, np.repeat(tone[:, None], channels, axis=1), rate, subtype=subtype)
    source = FileSource(path, RATE)
    assert (source.file_rate, source.file_channels) == (rate, channels)
    out = read_all(source)
    assert abs(len(out) - RATE) <= 2  # one second at 16 kHz, whatever the input rate
    assert abs(peak_freq(out[1000:-1000], RATE) - 440.0) < 2.0
    rms = np.sqrt(np.mean((out[1000:-1000] / 32768.0) ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.03)  # identical channels downmix to the same level


def test_downmix_averages_the_channels(tmp_path):
    tone = sine(300.0, 0.5, RATE)
    path = tmp_path / "opposite.wav"
    soundfile.write(path, np.stack([tone, -tone, 0.5 * tone, -0.5 * tone], axis=1), RATE, subtype="FLOAT")
    assert np.abs(read_all(FileSource(path, RATE))).max() <= 1  # the channels cancel


def test_resampling_keeps_filter_state_across_chunks(tmp_path):
    """A chunked stream must resample like the whole file at once (no clicks at chunk boundaries)."""
    import soxr
    tone = sine(1000.0, 1.0, 8000)
    path = tmp_path / "tone8k.wav"
    soundfile.write(path, tone, 8000, subtype="FLOAT")
    whole = soxr.resample(tone.astype(np.float32), 8000, RATE)
    out = read_all(FileSource(path, RATE, chunk_ms=37)) / 32768.0
    assert len(out) == len(whole)
    assert np.max(np.abs(out - whole)) < 1e-3


def test_a_missing_file_names_the_path_and_where_run_can_also_listen(tmp_path):
    with pytest.raises(SourceError, match=r"audio file not found: .*nope\.wav; check the path$"):
        FileSource(tmp_path / "nope.wav", RATE)  # as eval-stream and bench read files: no other kind of input
    with pytest.raises(SourceError, match=r"audio file not found: .*nope\.wav.*'-'.*'mic'"):
        open_source(str(tmp_path / "nope.wav"), RATE)  # AUDIO of `basilar run`


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(SourceError, match="is not a file"):
        FileSource(tmp_path, RATE)


def test_a_named_pipe_is_sent_to_standard_input(tmp_path):
    pipe = tmp_path / "recorder.wav"
    os.mkfifo(pipe)
    with pytest.raises(SourceError, match=r"is a pipe or a device, not a file; .*`basilar run - < .*recorder\.wav`"):
        FileSource(pipe, RATE)  # without opening it: a pipe no one writes to would block


def test_an_empty_file_is_called_empty(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.wav is empty \(0 bytes\): an interrupted recording or copy"):
        FileSource(path, RATE)


@pytest.mark.parametrize("name, content, reason", [
    ("text.wav", b"this is not audio at all\n" * 40, "Format not recognised"),
    ("image.flac", b"\x89PNG\r\n\x1a\n" + bytes(200), "Format not recognised"),
])
def test_unreadable_and_wrong_format_files_give_a_clear_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError) as err:
        FileSource(path, RATE)
    message = str(err.value)
    assert f"cannot read {path} as audio" in message and reason in message
    assert "sox INPUT -r 16000 -c 1 -b 16 OUT.wav" in message  # and how to fix it


def test_a_wav_with_a_mangled_header_is_refused(tmp_path):
    path = tmp_path / "mangled.wav"
    soundfile.write(path, sine(440, 0.5, RATE), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[20:22] = b"\x63\x00"  # format tag 99: no such codec
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="cannot read .* as audio"):
        FileSource(path, RATE)


def test_a_file_corrupt_mid_way_yields_the_audio_before_the_damage_then_fails(tmp_path):
    samples = (sine(440, 4.0, RATE) * 0.8 * 32767).astype(np.int16)
    path = tmp_path / "damaged.flac"
    soundfile.write(path, samples, RATE)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4000] = bytes(4000)
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(SourceError) as err:
        for chunk in FileSource(path, RATE).chunks():
            got.append(chunk)
    assert "is corrupt" in str(err.value) and "audio before that point was processed" in str(err.value)
    received = np.concatenate(got)
    assert RATE <= len(received) < len(samples)  # at least the first second came through, intact
    np.testing.assert_array_equal(received[:RATE], samples[:RATE])


@pytest.mark.parametrize("file_rate", [RATE, 8000])
def test_a_corrupt_file_says_how_far_it_was_read(tmp_path, file_rate):
    """A stretch of the file repeated: reading fails mid-way (at 8 kHz libsndfile's seek fails, and its position
    reads -1 afterwards). Resampled, what the filter holds is given too: all that was read comes out."""
    samples = (sine(440, 4.0, file_rate) * 0.8 * 32767).astype(np.int16)
    path = tmp_path / "repeated.flac"
    soundfile.write(path, samples, file_rate)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 5] + data[len(data) // 20:])
    got = []
    with pytest.raises(SourceError) as err:
        for chunk in FileSource(path, RATE).chunks():
            got.append(chunk)
    read_s = sum(map(len, got)) / RATE
    assert read_s > 1.0
    assert f"reading failed after about {read_s:.2f} s" in str(err.value)


class FakeClock:
    """Time that moves only when the pacer sleeps: deterministic pacing checks."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now


class ClockedStop(StopFlag):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def sleep(self, seconds):
        self.clock.sleeps.append(seconds)
        self.clock.now += seconds


def cut_wav(tmp_path, seconds: float, keep_s: float, subtype: str = "PCM_16", channels: int = 1):
    """A WAV file of `seconds` cut after `keep_s` seconds of audio, as an interrupted copy leaves it."""
    samples = np.tile(sine(440, seconds, RATE, 0.8)[:, None], (1, channels))
    path = tmp_path / f"cut_{subtype}_{channels}.wav"
    soundfile.write(path, samples, RATE, subtype=subtype)
    whole = soundfile.read(path, dtype="int16", always_2d=True)[0]
    frame_bytes = channels * {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"data") + 8 + int(keep_s * RATE) * frame_bytes])
    return path, whole


@pytest.mark.parametrize("subtype, channels", [("PCM_16", 1), ("PCM_24", 2), ("FLOAT", 1)])
def test_a_wav_cut_short_yields_the_audio_that_is_there_then_fails(tmp_path, subtype, channels):
    path, whole = cut_wav(tmp_path, 3.0, 1.25, subtype, channels)
    assert wav_cut_short(path) == (pytest.approx(3.0), pytest.approx(1.25))
    got = []
    with pytest.raises(SourceError) as err:
        for chunk in FileSource(path, RATE).chunks():
            got.append(chunk)
    message = str(err.value)
    assert f"{path} is cut short: its header declares 3.00 s of audio but the file holds 1.25 s" in message
    assert "the audio that is there was processed" in message and f"sox {path} fixed.wav" in message
    received = np.concatenate(got)
    assert len(received) == int(1.25 * RATE)
    if subtype == "PCM_16":
        np.testing.assert_array_equal(received, whole[:len(received), 0])


def test_not_a_number_in_float_audio_is_an_error_after_the_audio_before_it(tmp_path):
    """A NaN cast to int16 would be silence (an infinity full scale) without a word."""
    tone = sine(440, 2.0, RATE).astype(np.float32)
    tone[int(1.5 * RATE) + 3] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, tone, RATE, subtype="FLOAT")
    got = []
    with pytest.raises(SourceError, match=r"nan.wav holds samples that are not numbers \(NaN or infinite\) at "
                                          r"1.50 s.*before that point was processed"):
        for chunk in FileSource(path, RATE).chunks():
            got.append(chunk)
    # every sample before the damaged one, not only the whole chunks before it
    np.testing.assert_array_equal(np.concatenate(got), to_int16(tone[:int(1.5 * RATE) + 3]))
    raw = tone.copy()
    raw[100] = np.inf
    got = []
    with pytest.raises(SourceError, match="standard input holds samples that are not numbers .* at 0.01 s"):
        for chunk in PcmSource(RATE, pcm_format="FLOAT_LE", stream=io.BytesIO(raw.astype("<f4").tobytes())).chunks():
            got.append(chunk)
    np.testing.assert_array_equal(np.concatenate(got), to_int16(tone[:100]))
    # at another rate, the resampler gives what it holds: the samples up to the damaged one, resampled
    path = tmp_path / "nan_8k.wav"
    soundfile.write(path, np.concatenate([sine(440, 1.0, 8000), [np.nan]]).astype(np.float32), 8000,
                    subtype="FLOAT")
    got = []
    with pytest.raises(SourceError, match="at 1.00 s"):
        for chunk in FileSource(path, RATE).chunks():
            got.append(chunk)
    assert abs(len(np.concatenate(got)) - RATE) <= 1


def test_float_samples_far_out_of_range_are_clipped_without_an_overflow_warning():
    """Integer audio read as float holds values up to 1e38; scaled to int16 first, they overflowed float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = np.array([1e38, -1e38, 0.5, -0.25, 1.0], np.float32)
        assert to_int16(samples).tolist() == [32767, -32768, 16384, -8192, 32767]


def test_whole_wavs_and_wavs_of_open_length_are_not_cut_short(tmp_path):
    path = tmp_path / "whole.wav"
    soundfile.write(path, sine(440, 1.0, RATE), RATE, subtype="PCM_16")
    assert wav_cut_short(path) is None
    assert len(read_all(FileSource(path, RATE))) == RATE
    # A recorder streaming to a pipe (arecord) writes the largest size, or 0, where the length is not known yet.
    data = path.read_bytes()
    at = data.index(b"data") + 4
    for size in (b"\xff\xff\xff\xff", bytes(4)):
        open_length = tmp_path / "open.wav"
        open_length.write_bytes(data[:at] + size + data[at + 4:])
        assert wav_cut_short(open_length) is None
    # A chunk of odd length before the data chunk is padded; the reader must step over the pad byte.
    listed = tmp_path / "listed.wav"
    info = b"LIST" + (5).to_bytes(4, "little") + b"INFOx\0"
    fmt_end = data.index(b"data")
    listed.write_bytes(data[:4] + (len(data) - 8 + len(info)).to_bytes(4, "little") + data[8:fmt_end] + info
                       + data[fmt_end:])
    assert wav_cut_short(listed) is None and len(read_all(FileSource(listed, RATE))) == RATE
    listed.write_bytes(listed.read_bytes()[:-RATE])  # and then cut in half
    assert wav_cut_short(listed) == (pytest.approx(1.0), pytest.approx(0.5))
    flac = tmp_path / "whole.flac"
    soundfile.write(flac, sine(440, 1.0, RATE), RATE)
    assert wav_cut_short(flac) is None  # not a WAV: FLAC's own checks find a damaged file


def test_a_wav_cut_short_in_a_training_folder_is_refused(tmp_path):
    from firmware_tools.dataset import read_clip

    path, _ = cut_wav(tmp_path, 1.0, 0.5)
    with pytest.raises(ValueError, match="is cut short: its header declares 1.00 s of audio but the file holds 0.50"):
        read_clip(path, 8000)


def test_a_cut_file_of_another_format_in_a_training_folder_is_refused(tmp_path):
    """libsndfile read the first half of a cut Wave64 clip as the whole clip."""
    from firmware_tools.dataset import read_clip

    path = tmp_path / "7_erin_0.w64"
    soundfile.write(path, sine(440, 1.0, RATE), RATE, subtype="PCM_16")
    assert len(read_clip(path, RATE)) == RATE
    path.write_bytes(path.read_bytes()[:-RATE])
    with pytest.raises(ValueError, match=f"{path} ends early: its header declares 1.00 s of audio but 0.50 s could be "
                                         r"read \(cut short or damaged\); .* or leave it out"):
        read_clip(path, RATE)


def set_data_size(wav: bytes, size: int) -> bytes:
    """A WAV file's bytes with its data chunk's declared size replaced."""
    at = wav.index(b"data") + 4
    return wav[:at] + size.to_bytes(4, "little") + wav[at + 4:]


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + len(body).to_bytes(4, "little") + body + bytes(len(body) & 1)


def with_chunk_after_audio(wav: bytes, kind: bytes, body: bytes) -> bytes:
    """A WAV file's bytes with a chunk after its audio, as a tag editor appends one, and the RIFF size to match."""
    tag = chunk(kind, body)
    return wav[:4] + (len(wav) - 8 + len(tag)).to_bytes(4, "little") + wav[8:] + tag


# Python's wave module writing one second of 16 kHz S16 audio into a pipe: it cannot go back to fix its header, so
# the header keeps the size of the first write, 0.1 s.
PYTHON_WAVE_INTO_A_PIPE = """
import sys, wave
import numpy as np
samples = (np.sin(np.arange(32000) * 2 * np.pi * 440 / 16000) * 20000).astype("<i2")
out = wave.open(sys.stdout.buffer, "wb")
out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
for start in range(0, len(samples), 1600):
    out.writeframesraw(samples[start:start + 1600].tobytes())
sys.stdout.buffer.flush()
"""


def test_a_headerless_raw_file_is_refused_with_how_to_play_it(tmp_path):
    """libsndfile takes a `.raw` name for raw PCM and cannot open it without being told its layout."""
    path = tmp_path / "speech.raw"
    (sine(440, 0.5, 8000) * 20000).astype("<i2").tofile(path)
    fix = (f"{path} is headerless raw PCM; play it with `basilar run - --format S16_LE --rate RATE --channels N < "
           f"{path}`, or give it a header: `sox -t raw -e signed -b 16 -r RATE -c N {path} OUT.wav`")
    for open_it in (FileSource, open_source):  # eval-stream and frontend; run
        with pytest.raises(SourceError, match=re.escape(fix)):
            open_it(str(path), RATE)


@pytest.mark.parametrize("container", ["WAV", "WAVEX"])
def test_a_wav_whose_length_was_left_open_as_0_plays_to_its_end(tmp_path, container):
    """A writer that never came back to fill in the size leaves 0; libsndfile alone plays that as no audio."""
    from firmware_tools.dataset import read_clip

    samples = (sine(440, 1.0, RATE) * 20000).astype(np.int16)
    path = tmp_path / "open.wav"
    soundfile.write(path, samples, RATE, subtype="PCM_16", format=container)
    path.write_bytes(set_data_size(path.read_bytes(), 0))
    np.testing.assert_array_equal(read_all(FileSource(path, RATE)), samples)
    np.testing.assert_allclose(read_clip(path, RATE), samples / 32768.0)
    assert wav_cut_short(path) is None


def test_a_wav_whose_header_declares_less_than_follows_it_is_refused(tmp_path):
    """libsndfile would play the declared 0.1 s of a two-second recording and say nothing."""
    from firmware_tools.dataset import read_clip

    path = tmp_path / "pywave.wav"
    path.write_bytes(subprocess.run([sys.executable, "-c", PYTHON_WAVE_INTO_A_PIPE], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, check=True).stdout)
    declares = f"{path}'s WAV header declares 0.100 s of audio but 2.000 s follow it"
    fix = f"`sox --ignore-length {path} fixed.wav`"
    with pytest.raises(SourceError, match=re.escape(declares) + ".*" + re.escape(fix)):
        FileSource(path, RATE)
    with pytest.raises(ValueError, match=re.escape(declares) + ".*sox --ignore-length"):
        read_clip(path, RATE)
    # Chunks after the audio (tags) are no such case: the audio is what the header declares
    tagged = tmp_path / "tagged.wav"
    soundfile.write(tagged, sine(440, 1.0, RATE), RATE, subtype="PCM_16")
    data = with_chunk_after_audio(tagged.read_bytes(), b"LIST", b"INFOICMT\x05\0\0\0hello")
    tagged.write_bytes(with_chunk_after_audio(data, b"id3 ", b"ID3\x04" + bytes(7)))  # odd: its pad byte follows
    assert len(read_all(FileSource(tagged, RATE))) == RATE and len(read_clip(tagged, RATE)) == RATE
    tagged.write_bytes(tagged.read_bytes()[:-1])  # and without the last pad byte, as some writers leave it
    assert len(read_all(FileSource(tagged, RATE))) == RATE
    # Nor is padding (under a second of it): some writers fill the file up to a block
    padded = tmp_path / "padded.wav"
    soundfile.write(padded, sine(440, 1.0, RATE), RATE, subtype="PCM_16")
    padded.write_bytes(padded.read_bytes() + bytes(4096))
    assert len(read_all(FileSource(padded, RATE))) == RATE and len(read_clip(padded, RATE)) == RATE


def handmade_wav(audio: bytes, rate: int, bits: int = 16, declared: int | None = None, after: bytes = b"") -> bytes:
    """A mono PCM WAV file's bytes: `declared` (by default the audio's length) as its data size, then the audio and
    `after` as they are (no pad byte added), as a writer that gets such details wrong leaves them."""
    block = bits // 8
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * block, block, bits)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
            + struct.pack("<I", len(audio) if declared is None else declared) + audio + after)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def id3v2_tag(frames: bytes) -> bytes:
    """A bare ID3v2.3 tag, as some taggers append one to a WAV file after its RIFF data (not in an "id3 " chunk)."""
    size = len(frames)
    return b"ID3\x03\x00\x00" + bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0)) + frames


def test_a_wav_with_a_bare_id3_tag_after_its_riff_data_plays_its_declared_audio(tmp_path):
    """Cover art (64 KB: 2 s of bytes) in an ID3 tag after the audio is no audio the header failed to count: the
    `sox --ignore-length` mend would make it noise."""
    from firmware_tools.dataset import read_clip

    samples = (sine(440, 1.0, RATE) * 20000).astype("<i2")
    picture = b"\xff\xd8\xff\xe0" + np.random.default_rng(3).bytes(64 * 1024)
    cover = id3v2_tag(b"APIC" + len(picture).to_bytes(4, "big") + b"\0\0" + picture)
    id3v1 = b"TAG" + b"take one".ljust(125, b"\0")  # a fixed 128 bytes at the very end
    for name, tags in (("v2.wav", cover), ("v2_v1.wav", cover + id3v1), ("v1.wav", id3v1)):
        path = tmp_path / name
        path.write_bytes(handmade_wav(samples.tobytes(), RATE, after=tags))
        np.testing.assert_array_equal(read_all(FileSource(path, RATE)), samples)
        np.testing.assert_allclose(read_clip(path, RATE), samples / 32768.0)
        # and piped in (`cat take.wav | basilar run -`): the tag is not played either
        np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes()))), samples)


def test_8_bit_audio_of_odd_length_without_its_pad_byte_is_followed_by_its_chunks(tmp_path):
    """A writer that leaves out the pad byte after audio of odd length: the chunk starts right after the audio."""
    from firmware_tools.dataset import read_clip

    samples = np.rint(sine(440, 0.5, 8000)[:3999] * 100 + 128).astype(np.uint8)
    comment = chunk(b"LIST", b"INFOICMT" + (10000).to_bytes(4, "little") + b"x" * 10000)  # over a second of bytes
    path = tmp_path / "odd.wav"
    path.write_bytes(handmade_wav(samples.tobytes(), 8000, bits=8, after=comment))
    assert len(read_clip(path, 8000)) == 3999
    assert len(read_all(FileSource(path, RATE))) == 2 * 3999


def test_an_empty_recording_with_a_chunk_after_it_holds_no_audio(tmp_path):
    """Its data size 0 is a length, not one left open: the chunk after it is not played as 20 samples of noise."""
    from firmware_tools.dataset import read_clip

    path = tmp_path / "empty.wav"
    path.write_bytes(handmade_wav(b"", RATE, after=chunk(b"LIST", b"INFO" + chunk(b"INAM", b"my empty take\0"))))
    assert len(read_all(FileSource(path, RATE))) == 0
    with pytest.raises(ValueError, match="empty.wav holds no audio"):
        read_clip(path, RATE)


def test_recordings_saved_from_sox_and_arecord_pipes_are_whole(tmp_path):
    """Into a pipe sox writes the data size 0x7FFFF000 and arecord 0x80000000: "to the end", not lengths."""
    from firmware_tools.dataset import read_clip

    sox, arecord = require_program("sox"), require_program("arecord")
    samples = (sine(440, 1.0, RATE) * 20000).astype(np.int16)
    # sox from a pipe to a pipe (`arecord -t raw | sox -t raw ... - -t wav - | cat > saved.wav`) knows no length
    from_sox = subprocess.run([sox, "-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", "1", "-",
                               "-t", "wav", "-"], input=samples.astype("<i2").tobytes(), stdout=subprocess.PIPE,
                              check=True).stdout
    recorder = subprocess.Popen([arecord, "-q", "-D", "basilar_test_mic", "-f", "S16_LE", "-r", str(RATE), "-c", "1"],
                                stdout=subprocess.PIPE, env=alsa_file_device(tmp_path, samples))
    try:  # arecord records until stopped (as with Ctrl-C): the saved file ends where it was stopped
        from_arecord = recorder.stdout.read(44 + 2 * len(samples))
    finally:
        recorder.kill()
        recorder.wait()
    for name, data, size in (("sox.wav", from_sox, 0x7FFFF000), ("arecord.wav", from_arecord, 0x80000000)):
        path = tmp_path / name
        path.write_bytes(data)
        assert data[data.index(b"data") + 4:][:4] == size.to_bytes(4, "little")
        assert wav_cut_short(path) is None
        np.testing.assert_array_equal(read_all(FileSource(path, RATE)), samples)  # no "cut short" at the end
        np.testing.assert_allclose(read_clip(path, RATE), samples / 32768.0)  # eval and training


READ_AS_ANOTHER = """
import sys
from edge.sources import SourceError, open_source
from firmware_tools.dataset import read_clip
for path in sys.argv[1:]:
    for read, error in ((open_source, SourceError), (read_clip, ValueError)):
        try:
            read(path, 16000)
        except error as err:
            print(err)
"""


def test_a_file_basilar_may_not_read_is_reported_as_such_not_as_a_bad_format(tmp_path):
    """libsndfile calls it a "System error", and the advice was to convert the file; the fix is permissions."""
    private = tmp_path / "private.wav"
    soundfile.write(private, sine(440, 0.2, RATE), RATE)
    private.chmod(0)
    folder = tmp_path / "closed"
    folder.mkdir()
    soundfile.write(folder / "in_it.wav", sine(440, 0.2, RATE), RATE)
    folder.chmod(0)
    # root may read anything: it gives up the capabilities that let it (setpriv is in util-linux, on every Debian)
    caps = "-dac_override,-dac_read_search"
    drop = [require_program("setpriv"), f"--inh-caps={caps}", f"--bounding-set={caps}", "--"] if os.geteuid() == 0 \
        else []
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    try:
        result = subprocess.run(drop + [sys.executable, "-c", READ_AS_ANOTHER, str(private), str(folder / "in_it.wav")],
                                env={**os.environ, "PYTHONPATH": path}, cwd=REPO, capture_output=True, text=True,
                                timeout=60)
    finally:
        folder.chmod(0o755)  # for pytest to clean up
    assert result.returncode == 0, result.stderr
    for file, (from_run, from_training) in zip((private, folder / "in_it.wav"),
                                               zip(*[iter(result.stdout.splitlines())] * 2)):
        assert from_run == (f"{file} cannot be read: permission denied; make it (and the folders above it) readable "
                            "by the user running basilar (the systemd service runs as user basilar), e.g. "
                            f"`chmod a+r {file}`")
        assert from_training.startswith(f"{file} cannot be read: permission denied; make it readable by the user")


def test_realtime_pacing_releases_each_chunk_when_its_audio_would_have_been_recorded(tmp_path):
    path = tmp_path / "two_seconds.wav"
    soundfile.write(path, sine(440, 2.0, RATE), RATE, subtype="PCM_16")
    clock = FakeClock()
    source = FileSource(path, RATE, realtime=True, stop=ClockedStop(clock), clock=clock)
    released = []
    for chunk in source.chunks():
        released.append(clock.now - 100.0)
    assert released == pytest.approx([0.1 * (i + 1) for i in range(20)])
    assert sum(clock.sleeps) == pytest.approx(2.0)


def test_without_realtime_a_file_is_read_as_fast_as_possible(tmp_path):
    path = tmp_path / "fast.wav"
    soundfile.write(path, sine(440, 2.0, RATE), RATE, subtype="PCM_16")
    clock = FakeClock()
    assert len(read_all(FileSource(path, RATE, stop=ClockedStop(clock), clock=clock))) == 2 * RATE
    assert clock.sleeps == []


def test_setting_the_stop_flag_ends_a_file_stream_between_chunks(tmp_path):
    path = tmp_path / "long.wav"
    soundfile.write(path, sine(440, 5.0, RATE), RATE, subtype="PCM_16")
    stop = StopFlag()
    got = 0
    for chunk in FileSource(path, RATE, stop=stop).chunks():
        got += len(chunk)
        if got >= RATE:
            stop.set()
    assert got == RATE


@pytest.mark.parametrize("fmt, dtype, scale", [("S16_LE", "<i2", 32768), ("S32_LE", "<i4", 2**31),
                                               ("FLOAT_LE", "<f4", 1.0)])
def test_raw_pcm_formats_on_a_byte_stream(fmt, dtype, scale):
    tone = sine(500.0, 1.0, RATE, amplitude=0.25)
    raw = np.round(tone * scale).astype(dtype) if dtype != "<f4" else tone.astype(dtype)
    out = read_all(PcmSource(RATE, pcm_format=fmt, stream=io.BytesIO(raw.tobytes())))
    np.testing.assert_allclose(out / 32768.0, tone, atol=1.5 / 32768)


def test_raw_pcm_through_a_real_pipe_with_resampling_and_downmix():
    rate = 8000
    tone = sine(700.0, 1.5, rate, amplitude=0.3)
    stereo = np.round(np.stack([tone, tone], axis=1) * 32767).astype("<i2")
    read_end, write_end = os.pipe()

    def producer():  # like arecord: small writes at irregular sizes
        data = stereo.tobytes()
        with os.fdopen(write_end, "wb") as pipe:
            for start in range(0, len(data), 777):
                pipe.write(data[start:start + 777])
                pipe.flush()

    threading.Thread(target=producer).start()
    with os.fdopen(read_end, "rb") as stream:
        out = read_all(PcmSource(RATE, pcm_format="S16_LE", rate=rate, channels=2, stream=stream))
    assert abs(len(out) - 1.5 * RATE) <= 2
    assert abs(peak_freq(out, RATE) - 700.0) < 2.0


def test_raw_pcm_ending_mid_frame_is_an_error_after_the_whole_frames():
    raw = np.arange(3200, dtype="<i2").tobytes() + b"\x01"
    got = []
    with pytest.raises(SourceError, match="middle of a sample frame.*1 stray bytes.*--format"):
        for chunk in PcmSource(RATE, stream=io.BytesIO(raw)).chunks():
            got.append(chunk)
    np.testing.assert_array_equal(np.concatenate(got), np.arange(3200, dtype=np.int16))


@pytest.mark.parametrize("subtype, container, channels, rate", [
    ("PCM_16", "WAV", 1, 16000), ("PCM_32", "WAV", 2, 44100), ("FLOAT", "WAV", 1, 22050),
    ("PCM_16", "WAVEX", 2, 48000)])
def test_a_wav_stream_on_standard_input_is_read_by_its_header(tmp_path, subtype, container, channels, rate):
    """What `sox IN -t wav -` sends: the header's format, rate and channels replace the options (here all wrong)."""
    samples = np.tile(sine(440, 1.0, rate)[:, None], (1, channels)) * np.linspace(1.0, 0.5, channels)
    path = tmp_path / "stream.wav"
    soundfile.write(path, samples, rate, subtype=subtype, format=container)
    source = PcmSource(RATE, pcm_format="S32_LE", rate=8000, channels=3, stream=io.BytesIO(path.read_bytes()))
    got = read_all(source)
    np.testing.assert_allclose(got, read_all(FileSource(path, RATE)), atol=1)  # the file reader, within an LSB
    layout = {"PCM_16": "S16_LE", "PCM_32": "S32_LE", "FLOAT": "FLOAT_LE"}[subtype]
    assert source.name == f"standard input (WAV: {layout}, {rate} Hz, {channels} channel{'s' * (channels > 1)})"
    assert (source.pcm_format, source.rate, source.channels) == (layout, rate, channels)


@pytest.mark.parametrize("subtype, message", [("IMA_ADPCM", "a WAV stream of 4-bit samples (format tag 17)"),
                                              ("ULAW", "a WAV stream of 8-bit samples (format tag 7)")])
def test_a_wav_stream_in_an_encoding_not_read_from_a_pipe_is_a_clear_error(tmp_path, subtype, message):
    path = tmp_path / "stream.wav"
    soundfile.write(path, sine(440, 0.2, RATE), RATE, subtype=subtype)
    with pytest.raises(SourceError, match=re.escape(message)) as err:
        read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))
    assert "arecord -f S16_LE" in str(err.value)


def test_a_broken_wav_header_on_standard_input_is_a_clear_error(tmp_path):
    path = tmp_path / "stream.wav"
    soundfile.write(path, sine(440, 0.2, RATE), RATE, subtype="PCM_16")
    data = path.read_bytes()
    with pytest.raises(SourceError, match="ended inside its WAV header"):
        read_all(PcmSource(RATE, stream=io.BytesIO(data[:30])))
    fmt = data.index(b"fmt ")
    no_format = data[:fmt] + b"junk" + data[fmt + 4:]  # the format chunk renamed: skipped as unknown
    with pytest.raises(SourceError, match="no format chunk before its audio"):
        read_all(PcmSource(RATE, stream=io.BytesIO(no_format)))
    # Raw PCM that merely starts with the same first bytes of audio is not taken for a header
    raw = np.frombuffer(b"RIFF" + bytes(28), dtype="<i2")
    np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(raw.tobytes()))), raw)


@pytest.mark.parametrize("suffix, kind", [(".flac", "a FLAC"), (".ogg", "an Ogg"), (".aiff", "an AIFF")])
def test_another_audio_file_on_standard_input_is_refused_not_played_as_noise(tmp_path, suffix, kind):
    path = tmp_path / f"speech{suffix}"
    soundfile.write(path, sine(440, 0.2, RATE), RATE)
    with pytest.raises(SourceError, match=f"standard input is {kind} file, not raw PCM.*basilar run FILE"):
        read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))


def test_an_mp3_with_an_id3_tag_is_refused_and_raw_pcm_starting_near_silence_is_not(tmp_path):
    """Most MP3 files start with an ID3 tag; one without plays as noise (a frame header is too easily matched by a
    live stream's first samples to refuse on)."""
    path = tmp_path / "speech.mp3"
    soundfile.write(path, sine(440, 0.2, RATE), RATE)
    tag = b"ID3\x04\0\0\0\0\0\0"  # an ID3v2.4 tag's header (of an empty tag), as most MP3 files start
    with pytest.raises(SourceError, match="standard input is an MP3 file"):
        read_all(PcmSource(RATE, stream=io.BytesIO(tag + path.read_bytes())))
    quiet = np.array([-1025, 16, -3, 2] * 400, dtype="<i2")  # FF FB 10 00: an MPEG layer III frame header
    np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(quiet.tobytes()))), quiet)


@pytest.mark.parametrize("channels", [1, 2])
def test_a_chunk_after_the_audio_of_a_wav_stream_is_not_played(tmp_path, channels):
    """A tag after the audio (here 18 bytes: half a stereo frame too many) is not samples."""
    path = tmp_path / "tagged.wav"
    soundfile.write(path, np.tile(sine(440, 1.0, RATE)[:, None], (1, channels)), RATE, subtype="PCM_16")
    path.write_bytes(with_chunk_after_audio(path.read_bytes(), b"id3 ", b"ID3\x04" + bytes(6)))
    got = read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))
    np.testing.assert_array_equal(got, read_all(FileSource(path, RATE)))


def test_a_wav_stream_whose_header_declares_less_than_follows_is_played_to_its_end():
    """Python's wave module into a pipe declares 0.1 s of two seconds: what follows is audio, not a chunk."""
    producer = subprocess.Popen([sys.executable, "-c", PYTHON_WAVE_INTO_A_PIPE], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    try:
        got = read_all(PcmSource(RATE, stream=producer.stdout))
    finally:
        producer.kill()
        producer.wait()
    np.testing.assert_array_equal(got, (sine(440, 2.0, RATE, amplitude=1.0) * 20000).astype(np.int16))


def test_wav_files_joined_on_standard_input_play_one_after_another(tmp_path):
    """`cat take1.wav take2.wav take3.wav | basilar run -`: the next file's RIFF header is not a tag that ends the
    stream, and is not played."""
    takes = [(sine(freq, 2.0, RATE) * 20000).astype("<i2") for freq in (300, 440, 600)]
    joined = (handmade_wav(takes[0].tobytes(), RATE, after=chunk(b"LIST", b"INFOISFT\x03\0\0\0sox"))  # odd: padded
              + handmade_wav(takes[1].tobytes(), RATE) + handmade_wav(takes[2].tobytes(), RATE))
    np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(joined))), np.concatenate(takes))
    # a later file in another layout would be misread: it is refused
    other = handmade_wav(takes[1][::2].tobytes(), 8000)
    with pytest.raises(SourceError, match=r"standard input holds WAV files one after another, and a later one is "
                                          r"S16_LE, 8000 Hz, 1 channel\(s\) where the first is S16_LE, 16000 Hz"):
        read_all(PcmSource(RATE, stream=io.BytesIO(handmade_wav(takes[0].tobytes(), RATE) + other)))


def test_audio_after_a_wav_streams_declared_part_is_played_even_when_it_starts_with_printable_bytes():
    """Python's wave module into a pipe declares only its first block; the audio after it starts with 4 printable
    bytes at times (a 300 Hz tone at 0.8 full scale): only known chunk ids end the stream there."""
    samples = (sine(300, 2.0, RATE, amplitude=0.8) * 32767).astype("<i2")
    samples[1600:1602] = np.frombuffer(b"abcd", "<i2")  # not a chunk id a writer uses
    stream = handmade_wav(samples.tobytes(), RATE, declared=3200)
    np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(stream))), samples)


def test_raw_pcm_that_is_not_the_float_it_is_said_to_be_is_a_format_error_not_damage(tmp_path):
    """S16 audio read as FLOAT_LE is full of NaN: the fix is --format, not a new recording."""
    quiet = np.random.default_rng(2).integers(-300, 300, RATE, dtype=np.int16)  # a quiet room, as S16
    with pytest.raises(SourceError, match=r"standard input holds samples that are not numbers \(NaN or infinite\) "
                                          r"at 0\.00 s: is it really FLOAT_LE\? Check --format against what the "
                                          r"program writing the stream sends") as err:
        read_all(PcmSource(RATE, pcm_format="FLOAT_LE", stream=io.BytesIO(quiet.astype("<i2").tobytes())))
    assert "Re-record" not in str(err.value)
    tone = sine(440, 1.0, RATE).astype("<f4")
    tone[int(0.5 * RATE)] = np.nan
    with pytest.raises(SourceError, match=r"at 0\.50 s: the stream is damaged, or not FLOAT_LE; the audio before "
                                          "that point was processed. Check --format"):
        read_all(PcmSource(RATE, pcm_format="FLOAT_LE", stream=io.BytesIO(tone.tobytes())))
    path = tmp_path / "nan.wav"  # whose header says float: damaged
    soundfile.write(path, tone, RATE, subtype="FLOAT")
    with pytest.raises(SourceError, match=r"at 0\.50 s: the audio is damaged.*Re-record"):
        read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))


def test_arecord_piped_in_as_the_readme_shows_gives_its_samples_exactly(tmp_path):
    """`arecord -f S16_LE -r 16000 -c 1 | basilar run -`: arecord writes a WAV header unless told `-t raw`."""
    arecord = require_program("arecord")
    samples = (sine(440, 1.0, RATE) * 20000).astype(np.int16)
    env = alsa_file_device(tmp_path, samples)
    recorder = subprocess.Popen([arecord, "-q", "-D", "basilar_test_mic", "-f", "S16_LE", "-r", str(RATE), "-c", "1",
                                 "-s", str(len(samples))], stdout=subprocess.PIPE, env=env)
    try:
        got = read_all(PcmSource(RATE, stream=recorder.stdout))
    finally:
        recorder.kill()
        recorder.wait()
    np.testing.assert_array_equal(got, samples)


def test_raw_pcm_options_are_checked():
    with pytest.raises(SourceError, match="'MP3' is not supported; use one of S16_LE, S32_LE, FLOAT_LE"):
        PcmSource(RATE, pcm_format="MP3", stream=io.BytesIO())
    with pytest.raises(SourceError, match="--channels 0"):
        PcmSource(RATE, channels=0, stream=io.BytesIO())


def test_open_source_picks_by_argument(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, sine(440, 0.2, RATE), RATE)
    assert isinstance(open_source(str(path), RATE), FileSource)
    assert isinstance(open_source("-", RATE), PcmSource)
    assert parse_mic_spec("mic") == (True, None)
    assert parse_mic_spec("mic:2") == (True, 2)
    assert parse_mic_spec("mic:USB Audio") == (True, "USB Audio")
    assert parse_mic_spec("microphone.wav") == (False, None)
    # digits Python's int() refuses or reads otherwise are part of a name (`mic:²` ended in a traceback)
    assert parse_mic_spec("mic:\u00b2") == (True, "\u00b2") and parse_mic_spec("mic:\u0663") == (True, "\u0663")


WITHOUT_SOUNDDEVICE = """
import sys
class NoSounddevice:
    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            raise ImportError("hidden: no sounddevice here")
sys.meta_path.insert(0, NoSounddevice())
sys.argv[0] = "basilar"
from firmware_tools.cli import main
main()
"""


def test_a_microphone_without_sounddevice_says_how_to_install_it_into_this_python():
    """It said `pip install 'basilar[mic]'`: basilar is no package on PyPI, and a service's virtual environment is
    not the one a bare `pip` installs into."""
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run([sys.executable, "-c", WITHOUT_SOUNDDEVICE, "run", "mic"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    said = " ".join(result.stderr.split())
    assert result.returncode == 1 and "Traceback" not in said, said
    assert f"install it with `{sys.executable} -m pip install sounddevice`" in said, said
    assert "`sudo apt install libportaudio2`" in said


class ScriptedStream:
    """Stands in for a PortAudio stream: the test plays the driver thread by calling the callback itself."""

    def __init__(self, *, device, samplerate, channels, dtype, blocksize, callback, finished_callback):
        self.samplerate, self.blocksize = samplerate, blocksize
        self.callback, self.finished_callback = callback, finished_callback
        self.active = False
        self.aborted = threading.Event()  # set: abort() returns at once
        self.aborted.set()

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def abort(self):
        self.aborted.wait()  # a driver stuck in a read holds PortAudio's abort until it returns
        self.active = False

    def close(self):
        pass

    def deliver(self, block: np.ndarray, adc_s: float = 0.0, overflow: bool = False):
        """adc_s: when its first frame was sampled (PortAudio's inputBufferAdcTime; 0 where a host API gives none);
        overflow: PortAudio lost input before it (an xrun)."""
        time_info = types.SimpleNamespace(inputBufferAdcTime=adc_s)
        self.callback(block.reshape(-1, 1), len(block), time_info, types.SimpleNamespace(input_overflow=overflow))

    def unplug(self):
        self.active = False
        self.finished_callback()


def test_microphone_blocks_pass_through_a_bounded_queue_and_overruns_are_counted():
    streams = []
    source = MicSource(None, RATE, queue_ms=300, stream_factory=lambda **kw: streams.append(ScriptedStream(**kw))
                       or streams[-1])
    stream = streams[0]
    assert stream.blocksize == 1600
    blocks = [np.full(1600, i, dtype=np.int16) for i in range(5)]
    for block in blocks:  # the queue holds 3 blocks; the last two are lost and counted
        stream.deliver(block)
    assert (source.overruns, source.dropped_samples) == (2, 3200)
    chunks = source.chunks()
    for i in range(3):
        np.testing.assert_array_equal(next(chunks), blocks[i])
        assert source.take_gap() == 0
    stream.deliver(blocks[0])  # the next block that gets through: the two lost ones lie just before it
    np.testing.assert_array_equal(next(chunks), blocks[0])
    assert source.take_gap() == 3200 and source.take_gap() == 0
    source.stop.set()
    assert list(chunks) == []


def test_input_lost_in_an_xrun_is_measured_on_the_adc_clock_so_later_times_stay_right():
    """The process stopped or starved: ALSA overran, 3 s of blocks never came, and the next one carries
    input_overflow. Counted as one block, the detections after it were all 3 s early."""
    streams = []
    source = MicSource(None, RATE, stream_factory=lambda **kw: streams.append(ScriptedStream(**kw)) or streams[-1])
    chunks = source.chunks()
    block = np.ones(1600, dtype=np.int16)
    for i in range(3):  # 0.1 s blocks, on time
        streams[0].deliver(block, adc_s=100.0 + i * 0.1)
        next(chunks)
        assert source.take_gap() == 0
    streams[0].deliver(block, adc_s=100.3 + 3.0, overflow=True)
    next(chunks)
    assert source.take_gap() == 3 * RATE and source.overruns == 1 and source.dropped_samples == 3 * RATE
    streams[0].deliver(block, adc_s=0.0, overflow=True)  # a host API without times: counted, not measured
    next(chunks)
    assert source.take_gap() == 0 and source.overruns == 2


def test_a_microphone_that_disappears_mid_stream_is_a_clear_error():
    streams = []
    source = MicSource("USB", RATE, stream_factory=lambda **kw: streams.append(ScriptedStream(**kw)) or streams[-1])
    chunks = source.chunks()
    streams[0].deliver(np.ones(1600, dtype=np.int16))
    assert len(next(chunks)) == 1600
    streams[0].unplug()
    with pytest.raises(SourceError, match="microphone 'USB' stopped delivering audio.*basilar devices"):
        next(chunks)


def test_closing_a_microphone_whose_driver_is_stuck_returns_within_its_bound(monkeypatch):
    """The stream's abort waits on a read that never returns: close() must still return, so that the run ends."""
    import edge.sources as sources

    monkeypatch.setattr(sources, "CLOSE_WAIT_S", 0.3)
    streams = []
    source = MicSource(None, RATE, stream_factory=lambda **kw: streams.append(ScriptedStream(**kw)) or streams[-1])
    streams[0].aborted.clear()
    closing = threading.Thread(target=source.close)
    started = time.monotonic()
    closing.start()
    closing.join(5)
    took = time.monotonic() - started
    streams[0].aborted.set()  # the driver lets go, whatever happened
    assert not closing.is_alive(), "close() waited on the stuck driver"
    assert 0.25 <= took < 2  # it waited its bound for the abort, no longer


def test_a_microphone_that_goes_silent_is_a_clear_error():
    streams = []
    source = MicSource(None, RATE, silence_timeout_s=0.2,
                       stream_factory=lambda **kw: streams.append(ScriptedStream(**kw)) or streams[-1])
    with pytest.raises(SourceError, match="no audio from the default microphone for 0.2 s"):
        next(source.chunks())


ALSA_FILE_DEVICE = """\
pcm.basilar_test_mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
"""


ALSA_TWO_CHANNELS = """\
pcm.basilar_two_channels {
    type multi
    slaves.a.pcm "null"
    slaves.a.channels 2
    bindings.0 { slave a; channel 0; }
    bindings.1 { slave a; channel 1; }
}
"""


def alsa_test_device(tmp_path, samples: np.ndarray) -> dict:
    """An ALSA capture device that plays `samples` (raw S16_LE): a real PortAudio input without sound hardware.

    It has no clock (ALSA's null plugin), so it delivers audio far faster than real time.
    """
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        require(False, "the Python package 'sounddevice' (pip install '.[mic]')")
    except OSError:
        require(False, "the libportaudio2 system package")
    return alsa_file_device(tmp_path, samples)


def alsa_file_device(tmp_path, samples: np.ndarray) -> dict:
    """The environment in which ALSA's capture device 'basilar_test_mic' plays `samples` (arecord, PortAudio)."""
    infile = tmp_path / "mic.raw"
    samples.astype("<i2").tofile(infile)
    (tmp_path / "device.conf").write_text(ALSA_FILE_DEVICE.format(infile=infile))
    (tmp_path / "alsa.conf").write_text(f"</usr/share/alsa/alsa.conf>\n<{tmp_path / 'device.conf'}>\n")
    require(os.path.exists("/usr/share/alsa/alsa.conf"), "ALSA's configuration (libasound2-data)")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "ALSA_CONFIG_PATH": str(tmp_path / "alsa.conf"), "PYTHONPATH": path}


def test_a_real_portaudio_input_delivers_its_audio_and_reports_overruns(tmp_path):
    samples = (sine(440, 1.0, RATE) * 20000).astype(np.int16)
    env = alsa_test_device(tmp_path, samples)
    script = textwrap.dedent("""
        import json, time
        import numpy as np
        from edge.sources import MicSource
        source = MicSource("basilar_test_mic", 16000, queue_ms=500)
        chunks = source.chunks()
        first = next(chunks)
        time.sleep(0.5)  # fall behind: the device has no clock and keeps delivering
        print(json.dumps({"name": source.name, "rate": source.rate, "first": first[:1600].tolist(),
                          "overruns": source.overruns}))
        source.close()
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "microphone 'basilar_test_mic'" and report["rate"] == RATE
    np.testing.assert_array_equal(report["first"], samples[:1600])
    assert report["overruns"] > 0


def test_a_microphone_on_the_second_channel_is_heard_when_both_are_opened(tmp_path):
    """`basilar run mic:DEVICE --channels 2`: a real PortAudio input of two channels, the first silent (a stereo
    input whose microphone is wired to its second channel), averaged into the mono the bundle hears."""
    heard = (sine(440, 1.0, RATE) * 20000).astype(np.int16)
    stereo = np.stack([np.zeros_like(heard), heard], axis=1)
    env = alsa_test_device(tmp_path, stereo.reshape(-1))
    script = textwrap.dedent("""
        import json
        from edge.sources import open_source
        source = open_source("mic:basilar_test_mic", 16000, channels=2)
        print(json.dumps({"first": next(source.chunks())[:1600].tolist()}))
        source.close()
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout.strip().splitlines()[-1])["first"]
    np.testing.assert_array_equal(first, np.rint(heard[:1600] / 2))


def test_more_channels_than_a_microphone_has_are_refused_with_how_many_it_has(tmp_path):
    env = alsa_test_device(tmp_path, np.zeros(1600, np.int16))
    (tmp_path / "device.conf").write_text(ALSA_TWO_CHANNELS)  # a real input of two channels and no more
    script = ("from edge.sources import MicSource\n"
              "try:\n    MicSource('basilar_two_channels', 16000, channels=3)\nexcept Exception as err:\n"
              "    print(err)\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert ("microphone 'basilar_two_channels' has 2 input channel(s); --channels 3 asks for more: give --channels "
            "2 or fewer") in result.stdout, result.stdout + result.stderr


def test_an_unknown_microphone_lists_the_inputs(tmp_path):
    env = alsa_test_device(tmp_path, np.zeros(1600, np.int16))
    script = ("from edge.sources import MicSource\n"
              "try:\n    MicSource('no such mic', 16000)\nexcept Exception as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert "no input device matches 'no such mic'; inputs are: 0: basilar_test_mic" in result.stdout


def test_zeros_after_the_audio_are_padding_and_many_odd_chunks_are_still_chunks(tmp_path):
    """Some writers fill a file up to a block with zeros (here 1.25 s of them); and a file with hundreds of odd
    chunks after its audio (each tried with and without its pad byte) is walked without running out of stack."""
    from firmware_tools.dataset import read_clip

    audio = (sine(440, 1.0, RATE) * 20000).astype("<i2").tobytes()
    padded = tmp_path / "padded.wav"
    padded.write_bytes(handmade_wav(audio, RATE, after=bytes(40_000)))
    many = tmp_path / "many.wav"
    many.write_bytes(handmade_wav(audio, RATE, after=b"".join(chunk(b"note", b"odd") for _ in range(700))))
    for path in (padded, many):
        assert len(read_all(FileSource(path, RATE))) == RATE and len(read_clip(path, RATE)) == RATE
    # After a length left open (0) zeros are the recording's own silence (a muted microphone), not padding
    silent = tmp_path / "silent.wav"
    silent.write_bytes(handmade_wav(bytes(2 * RATE), RATE, declared=0))
    assert len(read_all(FileSource(silent, RATE))) == RATE and len(read_clip(silent, RATE)) == RATE


@pytest.mark.parametrize("tag", [b"", chunk(b"LIST", b"INFOodd")])
def test_a_quiet_producer_after_a_wav_streams_declared_audio_still_gets_idle_ticks(tag):
    """The run loop reports health on the empty chunks a quiet stream yields; a producer that sent all the audio its
    header declares (and a tag after it) and keeps the pipe open is such a stream."""
    read_end, write_end = os.pipe()
    os.write(write_end, handmade_wav((sine(440, 0.5, RATE) * 20000).astype("<i2").tobytes(), RATE, after=tag))
    source = PcmSource(RATE, stream=os.fdopen(read_end, "rb"))
    chunks = source.chunks()
    got = []

    def read_until_idle():
        for block in chunks:
            got.append(len(block))
            if not len(block) and sum(got) >= RATE // 2:
                return

    reader = threading.Thread(target=read_until_idle, daemon=True)
    reader.start()
    reader.join(10)
    os.close(write_end)
    assert not reader.is_alive(), "no idle tick while the producer was quiet"
    assert sum(got) == RATE // 2 and got[-1] == 0


def test_a_microphone_that_stalls_ends_the_run_with_its_reason_not_a_hang(tmp_path):
    """A capture device whose read never returns held PortAudio's stop, so `basilar run` hung with nothing said
    (and a stop signal could not end it): a service stayed deaf instead of being restarted."""
    alsa_test_device(tmp_path, np.zeros(16, np.int16))  # skips where PortAudio is missing
    fifo = tmp_path / "stalled.raw"
    os.mkfifo(fifo)
    env = alsa_file_device(tmp_path, np.zeros(0, np.int16))
    (tmp_path / "device.conf").write_text(ALSA_FILE_DEVICE.format(infile=fifo))
    run = subprocess.Popen([sys.executable, "-m", "firmware_tools.cli", "run", "mic:basilar_test_mic"], env=env,
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    audio = (sine(440, 1.0, RATE) * 20000).astype("<i2").tobytes()
    deadline = time.monotonic() + 30
    while True:  # 1 s of audio once the device reads the FIFO, then nothing, never closed
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1] if run.poll() else "no read"
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails until a reader has it open
        except OSError:
            time.sleep(0.05)
            continue
        os.set_blocking(writer, True)
        try:
            os.write(writer, audio)
            break
        except BrokenPipeError:  # PortAudio opened the device once to probe it, and closed it
            os.close(writer)
    try:
        _, stderr = run.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail("basilar run hung on a stalled microphone")
    finally:
        os.close(writer)
    assert run.returncode == 1 and "no audio from microphone 'basilar_test_mic' for 2 s" in stderr, stderr


def test_arecords_24_bit_samples_in_4_byte_slots_are_read_as_alsa_means_from_a_pipe_and_a_file(tmp_path):
    """`arecord -f S24_LE ... | basilar run -` was refused (24 bits, block align 4); ALSA's S24_LE holds the sample in
    the low three bytes of each 4-byte slot, and the same bytes as a file give the same samples."""
    arecord = require_program("arecord")
    samples = (sine(440, 1.0, RATE) * 20000).astype(np.int16)
    samples[:4] = [-32768, -1, 1, 32767]  # the sign of the low three bytes' top bit
    env = alsa_file_device(tmp_path, samples)
    # the device hands arecord its file's bytes in the format asked for: ALSA's S24_LE, sign-extended into the top
    (samples.astype("<i4") << 8).tofile(tmp_path / "mic.raw")
    recorder = subprocess.run([arecord, "-q", "-D", "basilar_test_mic", "-f", "S24_LE", "-r", str(RATE), "-c", "1",
                               "-s", str(len(samples))], capture_output=True, env=env)
    assert recorder.returncode == 0, recorder.stderr
    fmt = recorder.stdout[recorder.stdout.index(b"fmt ") + 8:]
    assert struct.unpack_from("<HHIIHH", fmt)[4:] == (4, 24)  # block align 4, 24 bits: the layout at issue
    source = PcmSource(RATE, stream=io.BytesIO(recorder.stdout))
    np.testing.assert_array_equal(read_all(source), samples)
    assert source.name == "standard input (WAV: S24_LE, 16000 Hz, 1 channel)"
    path = tmp_path / "arecord.wav"
    path.write_bytes(recorder.stdout)
    np.testing.assert_array_equal(read_all(FileSource(path, RATE)), samples)


@pytest.mark.parametrize("top", [0x00, 0x5A])
def test_24_bit_samples_in_4_byte_slots_ignore_the_top_byte_and_extend_the_sign(top):
    slots = np.array([0x7FFFFF, 0x800000, 0xFFFFFF, 0x000100], "<u4") | np.uint32(top << 24)
    wav = handmade_wav(slots.tobytes(), RATE, bits=32)
    wav = wav.replace(struct.pack("<HH", 4, 32), struct.pack("<HH", 4, 24), 1)  # 24 valid bits in each slot
    got = read_all(PcmSource(RATE, stream=io.BytesIO(wav), chunk_ms=0.125))  # a frame or two a chunk
    np.testing.assert_array_equal(got[:4], [32767, -32768, 0, 1])


@pytest.mark.parametrize("field, value, said", [("channels", 0, "0 channels"), ("rate", 0, "a sample rate of 0 Hz"),
                                                 ("block_align", 6, "6 bytes a frame for 1 channel(s) of 16-bit")])
def test_a_damaged_wav_header_on_standard_input_is_called_damaged_as_a_files_is(tmp_path, field, value, said):
    """It was told "basilar does not read [it] from a pipe; send 8-, 16-, 24- or 32-bit PCM", of 16-bit PCM."""
    fields = dict(tag=1, channels=1, rate=RATE, byte_rate=2 * RATE, block_align=2, bits=16) | {field: value}
    fmt = struct.pack("<HHIIHH", *fields.values())
    wav = handmade_wav(bytes(3200), RATE)
    wav = wav.replace(wav[20:36], fmt, 1)
    path = tmp_path / "damaged.wav"
    path.write_bytes(wav)
    with pytest.raises(SourceError, match=re.escape(said)) as err:
        read_all(PcmSource(RATE, stream=io.BytesIO(wav)))
    assert "a damaged header" in str(err.value) and "from a pipe" not in str(err.value)
    if field != "block_align":  # worded as the same file's by its path
        with pytest.raises(SourceError) as by_path:
            FileSource(path, RATE)
        assert str(err.value) == str(by_path.value).replace(str(path), "standard input")


def trickle(data: bytes, pieces: list[tuple[int, float]]) -> tuple[int, threading.Thread]:
    """A real pipe's read end, and the thread that writes `data` into it: for each (size, pause), that many bytes
    then a pause; the rest at once, then the pipe closes."""
    read_end, write_end = os.pipe()

    def producer():
        at = 0
        with os.fdopen(write_end, "wb", buffering=0) as pipe:
            for size, pause in pieces:
                pipe.write(data[at:at + size])
                at += size
                time.sleep(pause)
            pipe.write(data[at:])

    writer = threading.Thread(target=producer, daemon=True)
    writer.start()
    return read_end, writer


@pytest.mark.parametrize("in_header", [False, True])
def test_a_producer_that_trickles_still_gets_idle_ticks_and_the_same_samples(monkeypatch, in_header):
    """Bytes coming every 0.15 s never left the pipe quiet for a whole tick, and a chunk (or a WAV header) took
    long to fill: nothing was yielded, so health stopped. Now an empty chunk comes every tick meanwhile."""
    monkeypatch.setattr("edge.sources.IDLE_TICK_S", 0.3)
    samples = (sine(440, 0.5, RATE) * 20000).astype("<i2")
    wav = handmade_wav(samples.tobytes(), RATE)
    pieces = [(4, 0.15)] * 12 if in_header else [(44, 0.0)] + [(100, 0.15)] * 12  # a chunk is 3200 bytes
    read_end, writer = trickle(wav, pieces)
    got, ticks, began = [], [], time.monotonic()
    with os.fdopen(read_end, "rb") as stream:
        for block in PcmSource(RATE, stream=stream).chunks():
            got.append(block)
            if not len(block):
                ticks.append(time.monotonic() - began)
    writer.join()
    np.testing.assert_array_equal(np.concatenate(got), samples)
    assert len(ticks) >= 3 and ticks[0] < 0.8, ticks  # about every 0.3 s while 1.8 s trickled in
