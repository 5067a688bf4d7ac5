"""Ogg files cut short (edge/ogg_end.py): libsndfile read half a Vorbis file as a shorter whole one, without a word."""
import numpy as np
import pytest
import soundfile

from edge.ogg_end import CAPTURE, HEADER, ogg_cut_short
from edge.sources import FileSource
from tests.test_run import DEMO, basilar, parse_text
from tests.test_sources import RATE, read_all
from tests.test_wav_streams import read_until_error

SECONDS = 6


def whole_ogg(tmp_path, subtype: str = "VORBIS"):
    """Noise (so that there are many pages), and its file."""
    path = tmp_path / f"whole_{subtype.lower()}.ogg"
    soundfile.write(path, np.random.default_rng(0).normal(0, 0.1, SECONDS * RATE), RATE, format="OGG",
                    subtype=subtype)
    return path


def page_starts(data: bytes) -> list[int]:
    """Where each page of a whole Ogg file starts, walking the pages from the first."""
    starts, at = [], 0
    while at < len(data):
        assert data[at:at + 4] == CAPTURE
        starts.append(at)
        segments = data[at + HEADER - 1]
        at += HEADER + segments + sum(data[at + HEADER:at + HEADER + segments])
    return starts


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_every_cut_of_an_ogg_file_is_seen_and_the_whole_file_is_not(tmp_path, subtype):
    whole = whole_ogg(tmp_path, subtype)
    assert ogg_cut_short(whole) is None
    data = whole.read_bytes()
    starts = page_starts(data)
    assert len(starts) > 5
    cut = tmp_path / "cut.ogg"
    for size in range(5, len(data), 89):
        cut.write_bytes(data[:size])
        last_start = max(start for start in starts if start <= size)
        # a page is seen from its first 4 bytes; with fewer, the page before it is the last, and a whole one
        why = ("it ends inside an Ogg page" if size - last_start >= 4 else
               "its last Ogg page is not the end of its stream")
        assert ogg_cut_short(cut) == (f"{cut} is cut short: {why} (an interrupted recording, download or copy); "
                                      "copy the file again, or re-record or re-encode it"), size
    for size in starts[2:]:  # cut between two pages: whole pages, but not the last one
        cut.write_bytes(data[:size])
        assert "its last Ogg page is not the end of its stream" in ogg_cut_short(cut), size


def test_bytes_after_the_last_page_and_other_formats_are_not_taken_for_a_cut(tmp_path):
    whole = whole_ogg(tmp_path)
    tagged = tmp_path / "tagged.ogg"
    tagged.write_bytes(whole.read_bytes() + b"TAG" + bytes(125))  # a stray ID3v1 tag after the stream's end
    assert ogg_cut_short(tagged) is None
    flac = tmp_path / "whole.flac"
    soundfile.write(flac, np.zeros(RATE), RATE)
    assert ogg_cut_short(flac) is None


def test_a_cut_ogg_file_plays_what_it_holds_then_fails_with_why(tmp_path):
    whole = whole_ogg(tmp_path)
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    assert soundfile.info(cut).duration < SECONDS / 2 + 0.5  # libsndfile: a shorter file, whole
    got, message = read_until_error(FileSource(cut, RATE))
    assert message == (f"{cut} is cut short: it ends inside an Ogg page (an interrupted recording, download or copy); "
                       "copy the file again, or re-record or re-encode it; the audio that is there was processed")
    assert RATE < len(got) < SECONDS * RATE / 2 + RATE
    assert abs(len(read_all(FileSource(whole, RATE))) - SECONDS * RATE) < 2000  # and the whole file plays through


def test_a_cut_ogg_clip_in_a_training_folder_is_refused(tmp_path):
    from firmware_tools.dataset import read_clip

    whole = whole_ogg(tmp_path, "OPUS")
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"{cut} is cut short: it ends inside an Ogg page .*; or leave it out"):
        read_clip(cut, 8000)


def test_basilar_run_on_a_cut_ogg_writes_its_detections_then_exits_1(tmp_path):
    audio, rate = soundfile.read(DEMO)
    whole = tmp_path / "demo.ogg"
    soundfile.write(whole, audio, rate, format="OGG", subtype="VORBIS")
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    result = basilar("run", cut)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert f"{cut} is cut short: it ends inside an Ogg page" in stderr and "Traceback" not in stderr
    assert len(parse_text(result.stdout)) >= 5  # the demo's first half holds 10 digits
