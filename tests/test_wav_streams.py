"""Audio that a header misstates: WAV files past 4 GiB, audio the header does not count, streams and files that end
before their header says, absurd rates, damaged headers, and the WAV encodings standard input reads."""
import io
import os
import struct

import numpy as np
import pytest
import soundfile

from edge.sources import FileSource, PcmSource, SourceError
from firmware_tools import dataset
from tests.test_sources import RATE, handmade_wav, read_all, sine


def read_until_error(source) -> tuple[np.ndarray, str]:
    """The audio a source yields before it fails, and its message."""
    got = []
    with pytest.raises(SourceError) as err:
        for chunk in source.chunks():
            got.append(chunk)
    return (np.concatenate(got) if got else np.zeros(0, np.int16)), str(err.value)


def float64_wav_header(rate: int, channels: int, data_size: int, riff_size: int) -> bytes:
    block = 8 * channels
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * block, block, 64)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
            + struct.pack("<I", data_size))


@pytest.mark.parametrize("data_size", [0xFFFFFFFF, 0])
def test_a_wav_of_open_length_past_4_gib_plays_to_its_end(tmp_path, data_size):
    """libsndfile stops at 4 GiB (the most a RIFF size holds): a long recording whose writer left the length open
    lost everything after it, and said done. Sparse: 4 GiB of silence, then a tone (8 channels of 64-bit float at
    384 kHz, so that 4 GiB is few frames to read)."""
    rate, channels = 384000, 8
    path = tmp_path / "long.wav"
    header = float64_wav_header(rate, channels, data_size, 0xFFFFFFFF)
    tone = np.repeat(sine(1000, 0.5, rate)[:, None], channels, axis=1).astype("<f8")
    silence = (1 << 32) // (8 * channels)  # frames of silence: past 4 GiB
    with open(path, "wb") as file:
        file.write(header)
        file.seek(len(header) + silence * 8 * channels)
        file.write(tone.tobytes())
    if os.stat(path).st_blocks * 512 > 64 << 20:
        pytest.skip(f"the file system of {tmp_path} does not keep files sparse")
    total, tail = 0, []
    for chunk in FileSource(path, rate, chunk_ms=1000).chunks():
        total += len(chunk)
        tail = (tail + [chunk])[-2:]
    assert total == silence + len(tone)
    np.testing.assert_array_equal(np.concatenate(tail)[-len(tone):], (tone[:, 0] * 32768).round().astype(np.int16))


def test_a_wav_header_declaring_less_than_a_second_too_little_is_refused_not_cut(tmp_path):
    """0.9 s of speech after the audio the header counts was dropped without a word (taken for padding)."""
    samples = (sine(440, 3.0, RATE) * 20000).astype("<i2").tobytes()
    path = tmp_path / "lie.wav"
    path.write_bytes(handmade_wav(samples, RATE, declared=int(2.1 * RATE) * 2))
    with pytest.raises(SourceError, match=r"lie.wav's WAV header declares 2.100 s of audio but 3.000 s follow it.*"
                                          r"sox --ignore-length"):
        FileSource(path, RATE)
    # zeros there are still padding, and stray bytes under 10 ms no audio (a writer's metadata, a chunk cut off)
    for after in (bytes(RATE), b"\x01\x02\x03", b"\x01" * 16, b"LIST" + struct.pack("<I", 64) + b"INFOISFT"):
        path.write_bytes(handmade_wav(samples, RATE, after=after))
        assert len(read_all(FileSource(path, RATE))) == 3 * RATE


def test_a_wav_stream_that_ends_before_its_declared_length_is_reported(tmp_path):
    """`cat half.wav | basilar run -` said done; the file path says cut short."""
    samples = (sine(440, 2.0, RATE) * 20000).astype("<i2")
    whole = handmade_wav(samples.tobytes(), RATE)
    got, message = read_until_error(PcmSource(RATE, stream=io.BytesIO(whole[:44 + RATE * 2])))
    assert message == ("standard input ended early: its WAV header declares 2.00 s of audio but 1.00 s came, 16000 "
                       "sample frames missing (the program writing it stopped or was stopped); the audio that came "
                       "was processed")
    np.testing.assert_array_equal(got, samples[:RATE])
    # An open length (arecord into a pipe: 0x80000000; sox: 0x7FFFF000, 0xFFFFFFFF or 0) ends where the stream does
    for size in (0x80000000, 0x7FFFFFFF, 0x7FFFF000, 0xFFFFFFFF, 0):
        stream = handmade_wav(samples.tobytes(), RATE, declared=size)[:44 + RATE * 2]
        np.testing.assert_array_equal(read_all(PcmSource(RATE, stream=io.BytesIO(stream))), samples[:RATE])


@pytest.mark.parametrize("rate", [1, 999, 400000])
def test_a_file_whose_header_gives_an_absurd_rate_is_refused(tmp_path, rate):
    """At 1 Hz a minute of audio ran for days and gave bogus detections; standard input and --rate refuse it."""
    path = tmp_path / "odd_rate.wav"
    path.write_bytes(handmade_wav((sine(440, 0.5, RATE) * 20000).astype("<i2").tobytes(), rate))
    with pytest.raises(SourceError, match=rf"odd_rate.wav's header gives a sample rate of {rate} Hz, outside the 1000 "
                                          r"to 384000 Hz basilar reads"):
        FileSource(path, RATE)


def test_a_damaged_ogg_and_cut_files_of_other_formats_are_reported_after_their_audio(tmp_path):
    """libsndfile ends them early without an error: the run said done, and after the damage times were early."""
    ogg = tmp_path / "damaged.ogg"
    soundfile.write(ogg, np.random.default_rng(0).normal(0, 0.1, 10 * RATE), RATE)  # noise: many pages
    data = bytearray(ogg.read_bytes())
    data[len(data) // 2:len(data) // 2 + 2000] = bytes(2000)
    ogg.write_bytes(bytes(data))
    got, message = read_until_error(FileSource(ogg, RATE))
    assert "damaged.ogg ends early: its header declares 10.00 s of audio but " in message
    assert "the audio that could be read was processed" in message and len(got) < 10 * RATE
    for name, fmt, subtype in (("cut.aiff", "AIFF", "PCM_16"), ("cut.rf64", "RF64", "PCM_16"),
                               ("cut.au", "AU", "PCM_16"), ("cut.w64", "W64", "PCM_16"), ("cut.8svx", "SVX", "PCM_16"),
                               ("cut.wve", "WVE", "ALAW"), ("cut.mat", "MAT4", "PCM_16"), ("cut.avr", "AVR", "PCM_16"),
                               ("cut.mpc", "MPC2K", "PCM_16"), ("cut.nist", "NIST", "PCM_16")):
        rate = 8000 if fmt == "WVE" else RATE  # Psion's A-law files are 8 kHz only
        path = tmp_path / name
        soundfile.write(path, sine(440, 4.0, rate, 0.5), rate, format=fmt, subtype=subtype)
        assert len(read_all(FileSource(path, RATE))) == 4 * RATE  # whole, it is not taken for cut
        path.write_bytes(path.read_bytes()[:-rate * {"PCM_16": 2, "ALAW": 1}[subtype]])  # the last second gone
        got, message = read_until_error(FileSource(path, RATE))
        assert f"{name} ends early: its header declares 4.00 s of audio but 3.00 s could be read" in message
        assert len(got) == 3 * RATE


@pytest.mark.parametrize("fmt, subtype, channels", [("W64", "PCM_16", 2), ("W64", "FLOAT", 1), ("SVX", "PCM_16", 1),
                                                    ("AVR", "PCM_16", 1), ("MPC2K", "PCM_16", 1), ("NIST", "PCM_24", 1)])
def test_bytes_after_the_audio_a_header_declares_are_not_played(tmp_path, fmt, subtype, channels):
    # In these formats libsndfile plays whatever follows the audio (a copy's stray bytes) as more of it
    whole, path = tmp_path / f"whole.{fmt.lower()}", tmp_path / f"tail.{fmt.lower()}"
    soundfile.write(whole, np.tile(sine(440, 2.0, RATE)[:, None], (1, channels)), RATE, format=fmt, subtype=subtype)
    path.write_bytes(whole.read_bytes() + np.random.default_rng(0).integers(0, 256, 3001, np.uint8).tobytes())
    assert soundfile.info(path).frames > 2 * RATE
    played = read_all(FileSource(path, RATE))
    assert len(played) == 2 * RATE
    np.testing.assert_array_equal(played, read_all(FileSource(whole, RATE)))
    np.testing.assert_array_equal(dataset.read_clip(path, RATE), dataset.read_clip(whole, RATE))


@pytest.mark.parametrize("fmt, subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("OGG", "OPUS"),
                                          ("MP3", "MPEG_LAYER_III"), ("AIFF", "PCM_24"), ("AU", "PCM_16"),
                                          ("CAF", "ALAC_16"), ("W64", "FLOAT"), ("RF64", "PCM_16"), ("WAVEX", "DOUBLE"),
                                          ("NIST", "PCM_16"), ("IRCAM", "PCM_16"), ("VOC", "PCM_16"),
                                          ("SVX", "PCM_16"), ("MAT4", "PCM_16"), ("MAT5", "DOUBLE"),
                                          ("AVR", "PCM_16"), ("MPC2K", "PCM_16"), ("PAF", "PCM_24"), ("AU", "ULAW")])
def test_whole_files_of_every_format_are_not_taken_for_cut(tmp_path, fmt, subtype):
    path = tmp_path / f"whole.{fmt.lower()}"
    soundfile.write(path, sine(440, 2.0, RATE, 0.5), RATE, format=fmt, subtype=subtype)
    assert abs(len(read_all(FileSource(path, RATE))) - 2 * RATE) < 2000  # lossy codecs pad a little


def test_a_wav_named_raw_is_played_as_the_wav_it_is(tmp_path):
    samples = (sine(440, 0.5, RATE) * 20000).astype(np.int16)
    path = tmp_path / "take.raw"
    soundfile.write(path, samples, RATE, format="WAV", subtype="PCM_16")
    np.testing.assert_array_equal(read_all(FileSource(path, RATE)), samples)


def test_a_cut_wav_whose_header_gives_no_byte_rate_is_still_reported_as_cut(tmp_path):
    samples = (sine(440, 2.0, RATE) * 20000).astype("<i2").tobytes()
    data = bytearray(handmade_wav(samples, RATE))
    data[28:32] = bytes(4)  # the byte rate, which some writers leave 0
    path = tmp_path / "cut.wav"
    path.write_bytes(bytes(data[:44 + RATE * 2]))
    got, message = read_until_error(FileSource(path, RATE))
    assert "cut.wav is cut short: its header declares 2.00 s of audio but the file holds 1.00 s" in message
    assert len(got) == RATE


@pytest.mark.parametrize("fmt, subtype, kind", [("W64", "PCM_16", "a Sony Wave64"), ("CAF", "PCM_16", "a Core Audio"),
                                                ("NIST", "PCM_16", "a NIST SPHERE")])
def test_more_audio_files_on_standard_input_are_refused_not_played_as_noise(tmp_path, fmt, subtype, kind):
    path = tmp_path / "speech.bin"
    soundfile.write(path, sine(440, 0.2, RATE), RATE, format=fmt, subtype=subtype)
    with pytest.raises(SourceError, match=f"standard input is {kind}.* file, not raw PCM.*basilar run FILE"):
        read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))


def test_a_wav_whose_header_is_cut_or_out_of_order_says_so(tmp_path):
    """It was "No 'data' chunk marker; use a WAV, FLAC or OGG file": it is a WAV file."""
    whole = handmade_wav((sine(440, 0.5, RATE) * 20000).astype("<i2").tobytes(), RATE)
    fmt, audio = whole[12:36], whole[36:]
    broken = {"at12": whole[:12], "at30": whole[:30], "at40": whole[:40],
              "data_first": whole[:12] + audio + fmt, "no_fmt": whole[:12] + audio}
    for name, data in broken.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(data)
        with pytest.raises(SourceError, match=rf"cannot read .*{name}.wav as audio: its WAV header is cut short or "
                                              r"malformed \(.*\); copy the file again"):
            FileSource(path, RATE)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "DOUBLE"])
def test_8_and_24_bit_and_64_bit_float_wav_streams_are_read(tmp_path, subtype):
    """`sox IN -t wav -` keeps a 24-bit source's width, as the docs suggest it."""
    path = tmp_path / "stream.wav"
    soundfile.write(path, np.stack([sine(440, 1.0, RATE), sine(300, 1.0, RATE)], axis=1), RATE, subtype=subtype)
    got = read_all(PcmSource(RATE, stream=io.BytesIO(path.read_bytes())))
    np.testing.assert_allclose(got, read_all(FileSource(path, RATE)), atol=1)
