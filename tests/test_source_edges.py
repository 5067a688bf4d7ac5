"""Inputs at the edges of `basilar run`'s input handling: a FLAC of unknown length, a WAV file that ends inside a tag,
damaged format chunks and layouts, sizes off by less than a frame, a WAV stream that ends mid-frame, names the system
refuses, a folder named demo, and paths with spaces in the commands an error suggests."""
import io
import re
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile

from edge.sources import FileSource, PcmSource, SourceError, open_source
from edge.wav_header import wav_cut_short
from firmware_tools.dataset import read_clip
from tests.conftest import require_program
from tests.test_run import DEMO, DEMO_SECONDS, basilar, parse_text, repo_env
from tests.test_sources import RATE, chunk, handmade_wav, read_all, sine
from tests.test_wav_streams import read_until_error


def flac_of_unknown_length(path, samples: np.ndarray, rate: int):
    """A FLAC file as an encoder writing into a pipe leaves it (`sox IN.wav -t flac - | cat > x.flac`): it cannot go
    back to fill in its STREAMINFO, whose count of samples stays 0, "unknown" (libsndfile: 2**63 - 1 frames)."""
    soundfile.write(path, samples, rate)
    data = bytearray(path.read_bytes())
    # STREAMINFO's body starts at byte 8 (after "fLaC" and its block header); its 36-bit count of samples at bit 108
    data[8 + 13] &= 0xF0
    data[8 + 14:8 + 18] = bytes(4)
    path.write_bytes(bytes(data))
    assert soundfile.info(path).frames == 2**63 - 1
    return path


@pytest.mark.parametrize("rate, seconds", [(RATE, 4.0), (RATE, 2.345), (8000, 3.0)])
def test_a_flac_of_unknown_length_plays_to_its_end(tmp_path, rate, seconds):
    """libsndfile reads its last block, then soundfile's seek past it fails: that was called corrupt, and the last
    block was lost. Whole blocks (4 s), a short last block, and resampled: the same as the FLAC of known length."""
    samples = (sine(440, seconds, rate) * 20000).astype(np.int16)
    known = tmp_path / "known.flac"
    soundfile.write(known, samples, rate)
    unknown = flac_of_unknown_length(tmp_path / "unknown.flac", samples, rate)
    played = read_all(FileSource(unknown, RATE))
    np.testing.assert_array_equal(played, read_all(FileSource(known, RATE)))
    assert abs(len(played) - seconds * RATE) <= 1


def test_a_flac_of_unknown_length_cut_short_is_corrupt_after_all_that_could_be_read(tmp_path):
    samples = (sine(440, 4.0, RATE) * 20000).astype(np.int16)
    path = flac_of_unknown_length(tmp_path / "cut.flac", samples, RATE)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    decoded = np.full((len(samples), 1), np.nan, np.float32)  # what libsndfile decodes before it loses sync
    with soundfile.SoundFile(path) as file, pytest.raises(soundfile.LibsndfileError, match="lost sync"):
        file.read(out=decoded)
    got, message = read_until_error(FileSource(path, RATE))
    assert RATE < len(got) == np.isfinite(decoded).sum() < 3 * RATE  # the block it failed in too, up to the failure
    np.testing.assert_array_equal(got, samples[:len(got)])
    assert f"cut.flac is corrupt: reading failed after about {len(got) / RATE:.2f} s (Error : flac decoder lost " \
           "sync); the audio before that point was processed" in message


def test_run_plays_a_flac_that_sox_wrote_into_a_pipe_to_its_end(tmp_path):
    """A recording piped through sox (`arecord -t raw ... | sox -t raw ... - -t flac - > x.flac`): no length."""
    sox = require_program("sox")
    samples = soundfile.read(DEMO, dtype="int16")[0].astype("<i2")
    path = tmp_path / "piped.flac"
    path.write_bytes(subprocess.run([sox, "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-",
                                     "-t", "flac", "-"], input=samples.tobytes(), capture_output=True,
                                    check=True).stdout)
    assert soundfile.info(path).frames == 2**63 - 1
    result = basilar("run", path)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert f"done: {DEMO_SECONDS:.1f} s of audio" in stderr and ", 20 detections," in stderr
    assert len(parse_text(result.stdout)) == 20


def tagged_wav(samples: np.ndarray, kind: bytes, keep: int) -> bytes:
    """A WAV file's bytes with a 4 KB chunk `kind` after its audio, cut `keep` bytes into it."""
    tag = chunk(kind, b"INFOICMT" + (4084).to_bytes(4, "little") + b"x" * 4084)
    return handmade_wav(samples.tobytes(), RATE, after=tag[:keep])


@pytest.mark.parametrize("kind", [b"LIST", b"id3 "])
def test_a_wav_file_that_ends_inside_a_tag_after_its_audio_plays_its_audio(tmp_path, kind):
    """It was refused as a header declaring less than follows, with `sox --ignore-length`, which plays the tag as
    noise. Its audio is whole; the run says that the tag is cut off."""
    samples = (sine(440, 1.0, RATE) * 20000).astype("<i2")
    path = tmp_path / "tagged.wav"
    path.write_bytes(tagged_wav(samples, kind, 1000))
    source = FileSource(path, RATE)
    np.testing.assert_array_equal(read_all(source), samples)
    assert source.layout_note == (f"{path} ends inside the '{kind.decode()}' chunk after its audio (metadata, cut off: "
                                  "an interrupted copy?); its audio is whole and is played")
    np.testing.assert_allclose(read_clip(path, RATE), samples / 32768.0)
    # a whole tag gets no word; 4 printable bytes that are no known chunk's id are audio the header did not count
    path.write_bytes(tagged_wav(samples, kind, 8 + 4096))
    assert FileSource(path, RATE).layout_note is None
    path.write_bytes(tagged_wav(samples, b"abcd", 1000))
    with pytest.raises(SourceError, match="tagged.wav's WAV header declares 1.000 s of audio but 1.031 s follow it"):
        FileSource(path, RATE)


def test_run_warns_of_a_tag_cut_off_after_the_audio_and_plays_to_the_end(tmp_path):
    samples = soundfile.read(DEMO, dtype="int16")[0]
    path = tmp_path / "tagged.wav"
    path.write_bytes(tagged_wav(samples.astype("<i2"), b"LIST", 1000))
    result = basilar("run", path)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert f"warning: {path} ends inside the 'LIST' chunk after its audio" in stderr
    assert f"done: {DEMO_SECONDS:.1f} s of audio" in stderr


@pytest.mark.parametrize("size", [0xFFFFFF00, 1025])
def test_a_damaged_format_chunk_size_is_a_malformed_header_not_a_4_gib_read(tmp_path, size):
    data = bytearray(handmade_wav((sine(440, 0.5, RATE) * 20000).astype("<i2").tobytes(), RATE))
    data[16:20] = struct.pack("<I", size)
    path = tmp_path / "damaged.wav"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(SourceError, match=r"cannot read .*damaged.wav as audio: its WAV header is cut short or "
                                              r"malformed"):
            FileSource(path, RATE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # it read the 4 GiB the size said (MemoryError on a device)
    with pytest.raises(SourceError, match=re.escape(f"standard input's WAV header is malformed (its format chunk "
                                                    f"declares {size} bytes, where a real one holds 16 to 40)")):
        read_all(PcmSource(RATE, stream=io.BytesIO(bytes(data))))


def s24(samples: np.ndarray) -> bytes:
    """int32 samples as 24-bit little-endian PCM (their low three bytes)."""
    return np.frombuffer(samples.astype("<i4").tobytes(), np.uint8).reshape(-1, 4)[:, :3].tobytes()


@pytest.mark.parametrize("size", [0x80000000, 0x7FFFF000, 0xFFFFFFFF, 0])
def test_a_wav_stream_of_open_length_that_ends_mid_frame_ends_cleanly(tmp_path, size):
    """arecord stopped mid-frame: the header gave the layout, so "check --format and --channels" was wrong advice,
    and the same file as a path played. The part of a frame is dropped, as libsndfile drops a file's."""
    samples = (sine(440, 0.5, RATE) * 2**22).astype(np.int32)
    path = tmp_path / "open24.wav"
    path.write_bytes(handmade_wav(s24(samples) + b"\x12\x34", RATE, bits=24, declared=size))
    played = read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))
    assert len(played) == len(samples)
    np.testing.assert_array_equal(played, read_all(FileSource(path, RATE)))


@pytest.mark.parametrize("bits, extra, cut", [(16, 1, False), (16, 2, True), (24, 2, False), (24, 3, True)])
def test_a_data_size_off_by_less_than_a_frame_is_not_cut_short(tmp_path, bits, extra, cut):
    """A size one byte too large holds every frame: "declares 1.00 s of audio but the file holds 1.00 s" was said
    of it. A whole frame missing is still cut short (file and stream)."""
    samples = (sine(440, 1.0, RATE) * 2 ** (bits - 2)).astype(np.int32)
    audio = samples.astype("<i2").tobytes() if bits == 16 else s24(samples)
    path = tmp_path / "size.wav"
    path.write_bytes(handmade_wav(audio, RATE, bits=bits, declared=len(audio) + extra))
    if cut:
        assert wav_cut_short(path) is not None
        assert "size.wav is cut short" in read_until_error(FileSource(path, RATE))[1]
        stream = PcmSource(RATE, stream=io.BytesIO(path.read_bytes()))
        assert "standard input ended early" in read_until_error(stream)[1]
        return
    assert wav_cut_short(path) is None
    from_file = read_all(FileSource(path, RATE))
    assert len(from_file) == RATE
    np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes()))), from_file)


@pytest.mark.parametrize("fmt, channels, frames, read", [("W64", 1, 1, "9.9999 s"), ("AIFF", 2, 3, "9.9998 s")])
def test_a_file_a_few_frames_short_says_what_is_missing(tmp_path, fmt, channels, frames, read):
    """It said "its header declares 10.00 s of audio but 10.00 s could be read": no difference to be seen."""
    path = tmp_path / f"cut.{fmt.lower()}"
    soundfile.write(path, np.stack([sine(440, 10.0, RATE)] * channels, axis=1), RATE, format=fmt, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-2 * channels * frames])
    got, message = read_until_error(FileSource(path, RATE))
    missing = "1 sample frame" if frames == 1 else f"{frames} sample frames"
    assert (f"cut.{fmt.lower()} ends early: its header declares 10.0000 s of audio but {read} could be read "
            f"({missing} missing: cut short or damaged;") in message
    assert len(got) == 10 * RATE - frames


def test_a_wav_file_one_frame_short_says_what_is_missing(tmp_path):
    """It said "its header declares 10.00 s of audio but the file holds 10.00 s"."""
    path = tmp_path / "cut.wav"
    soundfile.write(path, sine(440, 10.0, RATE), RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-2])
    got, message = read_until_error(FileSource(path, RATE))
    assert (f"cut.wav is cut short: its header declares 10.0000 s of audio but the file holds 9.9999 s (1 sample "
            "frame missing: an interrupted recording or an incomplete copy)") in message, message
    assert len(got) == 10 * RATE - 1


def test_a_wav_stream_one_frame_short_says_what_is_missing():
    """It said "its WAV header declares 2.00 s of audio but 2.00 s came"."""
    samples = (sine(440, 2.0, RATE) * 20000).astype("<i2")
    stream = io.BytesIO(handmade_wav(samples.tobytes(), RATE)[:-2])
    got, message = read_until_error(PcmSource(RATE, stream=stream))
    assert message.startswith("standard input ended early: its WAV header declares 2.0000 s of audio but 1.9999 s "
                              "came, 1 sample frame missing (the program writing it stopped or was stopped)")
    np.testing.assert_array_equal(got, samples[:-1])


@pytest.mark.parametrize("field, value, message", [
    ("rate", 0, "gives a sample rate of 0 Hz, outside the 1000 to 384000 Hz basilar reads"),
    ("rate", 2**31, "gives a sample rate of 2147483648 Hz, outside the 1000 to 384000 Hz basilar reads"),
    ("channels", 0, "gives 0 channels"),
])
@pytest.mark.parametrize("declared", [None, 0])  # of open length, too: libsndfile reads it through TrueSizeWav
def test_a_wav_header_with_a_rate_or_channel_count_no_recording_has_is_damaged(tmp_path, field, value, message,
                                                                              declared):
    """libsndfile's "SF_INFO struct incomplete; use a WAV, FLAC or OGG file" was said of a WAV file."""
    audio = (sine(440, 0.5, RATE) * 20000).astype("<i2").tobytes()
    data = bytearray(handmade_wav(audio, RATE, declared=declared))
    at, layout = {"rate": (24, "<I"), "channels": (22, "<H")}[field]
    data[at:at + struct.calcsize(layout)] = struct.pack(layout, value)
    path = tmp_path / "odd.wav"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=re.escape(f"{path}'s header {message}: a damaged header, or a file that is "
                                                    "not audio; export or record it again")):
        FileSource(path, RATE)


def test_a_name_the_system_refuses_is_an_error_that_names_it(tmp_path):
    path = tmp_path / ("a" * 300 + ".wav")
    for open_it in (FileSource, open_source):  # eval-stream and frontend; run
        with pytest.raises(SourceError, match=re.escape(f"{path} cannot be read: File name too long; check the path")):
            open_it(str(path), RATE)


@pytest.mark.parametrize("args", [["a" * 300 + ".wav"], ["--bundle", "a" * 300, "demo"],
                                  ["--bundle", "a" * 300 + ".tar.gz", "demo"]])
def test_run_with_a_name_too_long_says_so_without_a_traceback(args):
    result = basilar("run", *args)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and "File name too long; check the path" in stderr, stderr
    assert "Traceback" not in stderr and result.stdout == b""


def test_the_demo_word_plays_the_demo_where_a_folder_is_named_demo(tmp_path):
    """In edge/, the folder edge/demo hid the demo: "demo is not a file"."""
    (tmp_path / "demo").mkdir()
    result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "demo"], cwd=tmp_path,
                            capture_output=True, timeout=120, env=repo_env())
    stderr = result.stderr.decode()
    assert result.returncode == 0 and f"done: {DEMO_SECONDS:.1f} s of audio" in stderr, stderr


def test_commands_suggested_for_a_path_with_spaces_quote_it(tmp_path):
    folder = tmp_path / "my takes"
    folder.mkdir()
    samples = (sine(440, 1.0, RATE) * 20000).astype("<i2").tobytes()
    cut = folder / "cut take.wav"
    cut.write_bytes(handmade_wav(samples, RATE)[:44 + RATE])
    assert f"give it a header that fits: `sox '{cut}' fixed.wav`" in read_until_error(FileSource(cut, RATE))[1]
    short = folder / "short.wav"
    short.write_bytes(handmade_wav(samples, RATE, declared=RATE))
    with pytest.raises(SourceError, match=re.escape(f"`sox --ignore-length '{short}' fixed.wav`")):
        FileSource(short, RATE)
    raw = folder / "take.raw"
    raw.write_bytes(samples)
    with pytest.raises(SourceError, match=re.escape(f"--channels N < '{raw}'`, or give it a header: `sox -t raw -e "
                                                    f"signed -b 16 -r RATE -c N '{raw}' OUT.wav`")):
        FileSource(raw, RATE)
