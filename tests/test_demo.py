"""The shipped demo recording, its truth file and attribution, and the script that builds them."""
import csv
import re

import click
import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from firmware_tools import dataset
from firmware_tools.make_demo import DEFAULT_FSDD, SPEAKERS, espeak_version, festival, write_demo
from firmware_tools.make_demo import main as make_demo_main
from firmware_tools.recordings import SHIPPED_LISTING, RecordingsError, read_recordings
from firmware_tools.stream_eval import NON_TARGET_HEADER, read_truth
from tests.conftest import REPO, require, require_program

DEMO_DIR = REPO / "edge" / "demo"


def truth_rows(path):
    with open(path, newline="") as f:
        return [(r["label"], float(r["start_s"]), float(r["end_s"])) for r in csv.DictReader(f)]


def check_demo(directory):
    info = soundfile.info(directory / "demo.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 30 <= info.duration <= 60
    rows = truth_rows(directory / "demo_truth.csv")
    assert sorted(label for label, _, _ in rows) == sorted(str(d) for d in range(10) for _ in range(2))
    audio, rate = soundfile.read(directory / "demo.wav", dtype="float32")
    ends = [0.0]
    for label, start, end in rows:
        assert start >= ends[-1] + 0.5 and end - start > 0.1  # in order, apart, real words
        ends.append(end)
        word = audio[int(start * rate):int(end * rate)]
        gap = audio[int((start - 0.45) * rate):int((start - 0.05) * rate)]
        assert np.sqrt(np.mean(word**2)) > 4 * np.sqrt(np.mean(gap**2))  # the digit is where the truth says
    assert ends[-1] < info.duration
    others = [(s.label, s.start_s, s.end_s)
              for s in read_truth(directory / "demo_non_target.csv", header=NON_TARGET_HEADER)]
    assert sorted(kind for kind, _, _ in others) == ["noise"] * 2 + ["speech"] * 6
    for kind, start, end in others:
        assert not any(start < w_end and end > w_start for _, w_start, w_end in rows)  # never on a digit
        assert np.sqrt(np.mean(audio[int(start * rate):int(end * rate)] ** 2)) > 0.01  # the sound is there
    attribution = (directory / "ATTRIBUTION.md").read_text()
    assert "Zohar Jackson and contributors" in attribution and "CC BY-SA 4.0" in attribution
    used = re.findall(r"`(\d)_([a-z]+)_\d+\.wav`", attribution)
    assert sorted(d for d, _ in used) == sorted(label for label, _, _ in rows)
    assert {speaker for _, speaker in used} == set(SPEAKERS)


def test_the_committed_demo_is_consistent():
    check_demo(DEMO_DIR)


def test_make_demo_builds_a_demo_like_the_committed_one(tmp_path):
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("espeak-ng")
    write_demo(DEFAULT_FSDD, tmp_path)
    check_demo(tmp_path)
    # The digits are placed by a seeded layout: the same recordings in the same order.
    assert [label for label, _, _ in truth_rows(tmp_path / "demo_truth.csv")] == \
        [label for label, _, _ in truth_rows(DEMO_DIR / "demo_truth.csv")]
    # With the espeak-ng release the committed demo was spoken by, it is exactly what make_demo makes.
    if f"espeak-ng {espeak_version()}" in (DEMO_DIR / "ATTRIBUTION.md").read_text():
        for name in ("demo.wav", "demo_truth.csv", "demo_non_target.csv", "ATTRIBUTION.md"):
            assert (tmp_path / name).read_bytes() == (DEMO_DIR / name).read_bytes(), name


def test_make_demo_sets_the_pauses_and_the_hiss(tmp_path):
    """--pause-s and --hiss-dbfs: test streams with short pauses, or in steady noise."""
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("espeak-ng")
    write_demo(DEFAULT_FSDD, tmp_path, speakers=("theo",), repeats=1, phrases=2, pauses=(0.2, 0.25), hiss_dbfs=-30)
    items = sorted([(start, end, "digit") for _, start, end in truth_rows(tmp_path / "demo_truth.csv")] +
                   [(s.start_s, s.end_s, s.label) for s in read_truth(tmp_path / "demo_non_target.csv",
                                                                      header=NON_TARGET_HEADER)])
    gaps = [(b[0] - a[1], "speech" in (a[2], b[2])) for a, b in zip(items, items[1:])]
    assert len(gaps) == 10 + 2 + 2 - 1 and all(gap >= 0.199 for gap, _ in gaps)
    # Between digits and bursts the pause is as drawn; next to speech longer, by the synthesized phrase's silent
    # ends, which its row leaves out (they are no minutes of speech).
    assert all(gap <= 0.251 for gap, next_to_speech in gaps if not next_to_speech)
    assert any(gap > 0.3 for gap, next_to_speech in gaps if next_to_speech)
    audio, rate = soundfile.read(tmp_path / "demo.wav", dtype="float64")
    opening = audio[: int(0.9 * rate)]  # the stream opens with a second of hiss alone
    assert 20 * np.log10(np.sqrt(np.mean(opening**2))) == pytest.approx(-30, abs=0.3)


def test_make_demo_sets_the_noise_bursts(tmp_path):
    """--bursts and --burst-dbfs: test streams with noise as loud as the words, or louder, between them."""
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("espeak-ng")
    result = CliRunner().invoke(make_demo_main, ["--speakers", "theo", "--repeats", "1", "--phrases", "0",
                                                 "--bursts", "5", "--burst-dbfs", "-18", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    bursts = read_truth(tmp_path / "demo_non_target.csv", header=NON_TARGET_HEADER)
    assert [b.label for b in bursts] == ["noise"] * 5
    assert sorted(round(b.end_s - b.start_s, 3) for b in bursts) == [0.8, 0.8, 0.8, 1.2, 1.2]  # white, brown
    audio, rate = soundfile.read(tmp_path / "demo.wav", dtype="float64")
    for burst in bursts:
        noise = audio[int(burst.start_s * rate) + 1:int(burst.end_s * rate) - 1]
        assert 20 * np.log10(np.sqrt(np.mean(noise**2))) == pytest.approx(-18, abs=0.1)
    words = truth_rows(tmp_path / "demo_truth.csv")
    assert len(words) == 10 and all(not (b.start_s < end and b.end_s > start) for b in bursts
                                    for _, start, end in words)


def test_make_demo_refuses_pauses_given_high_before_low(tmp_path):
    result = CliRunner().invoke(make_demo_main, ["--pause-s", "1.0", "0.5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "LO must not exceed HI" in result.output
    assert not (tmp_path / "demo.wav").exists()


@pytest.mark.parametrize("args, message", [
    (["--speakers", " , "], "names no speaker"),
    (["--festival-voice", "voice_kal_diphone"], "add --speech-engine festival"),
])
def test_make_demo_refuses_options_that_would_be_ignored_or_name_nobody(tmp_path, args, message):
    result = CliRunner().invoke(make_demo_main, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "demo.wav").exists()


def test_make_demo_speaks_the_phrases_in_festivals_voice(tmp_path):
    """--speech-engine festival: the same layout of digits, the non-digit phrases in a voice no recipe trains on."""
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("text2wave")
    write_demo(DEFAULT_FSDD, tmp_path / "espeak", speakers=("theo",), repeats=1, phrases=2)
    write_demo(DEFAULT_FSDD, tmp_path / "festival", speakers=("theo",), repeats=1, phrases=2,
               speech_engine="festival")
    espeak, festival = (tmp_path / name for name in ("espeak", "festival"))
    labels = [[label for label, _, _ in truth_rows(d / "demo_truth.csv")] for d in (espeak, festival)]
    assert labels[0] == labels[1]
    audio, rate = soundfile.read(festival / "demo.wav", dtype="float32")
    others = read_truth(festival / "demo_non_target.csv", header=NON_TARGET_HEADER)
    spoken = [s for s in others if s.label == "speech"]
    assert len(spoken) == 2
    for phrase in spoken:
        assert phrase.end_s - phrase.start_s > 0.8  # a phrase, not a click
        assert np.sqrt(np.mean(audio[int(phrase.start_s * rate):int(phrase.end_s * rate)] ** 2)) > 0.01
    attribution = (festival / "ATTRIBUTION.md").read_text()
    assert "## Synthetic speech (festival, voice_ked_diphone), not digits" in attribution
    assert "(espeak-ng " in (espeak / "ATTRIBUTION.md").read_text()


def test_make_demo_shares_the_phrases_among_festival_voices(tmp_path):
    """--festival-voice, repeated: each phrase in the voice its text's checksum picks, and the attribution says which."""
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("text2wave")
    voices = ("voice_ked_diphone", "voice_pc_diphone")  # pc_diphone: the festvox-itapc16k package
    write_demo(DEFAULT_FSDD, tmp_path, speakers=("theo",), repeats=1, phrases=5, speech_engine="festival",
               festival_voices=voices)
    spoken = [s for s in read_truth(tmp_path / "demo_non_target.csv", header=NON_TARGET_HEADER)
              if s.label == "speech"]
    attribution = (tmp_path / "ATTRIBUTION.md").read_text()
    assert "## Synthetic speech (festival, voice_ked_diphone, voice_pc_diphone), not digits" in attribution
    lines = re.findall(r'- "(.+)" \((voice_\w+), (\d+) words/min\)', attribution)
    assert len(lines) == 5 and {voice for _, voice, _ in lines} == set(voices)
    # Each phrase in the stream sounds as long as that phrase spoken alone in its voice (the voices' lengths differ;
    # the rows leave out the silent ends).
    def sounding_s(samples):
        first, end = dataset.sounding_span(samples)
        return (end - first) / 16000

    lengths = sorted(s.end_s - s.start_s for s in spoken)
    alone = sorted(sounding_s(festival(text, "", int(speed), 0, voices=(voice,))) for text, voice, speed in lines)
    assert np.allclose(lengths, alone, atol=0.002)  # the CSV keeps milliseconds
    ked_only = sorted(sounding_s(festival(text, "", int(speed), 0)) for text, _, speed in lines)
    assert not np.allclose(lengths, ked_only, atol=0.002)


def test_make_demo_names_a_festival_voice_that_is_not_installed(tmp_path):
    require_program("text2wave")
    with pytest.raises(click.ClickException, match="could not speak in voice_no_such_voice.*festvox"):
        festival("the kettle is boiling", "en-us", 160, 50, voices=("voice_no_such_voice",))


def test_make_demo_without_festival_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no text2wave anywhere
    with pytest.raises(click.ClickException, match="sudo apt install festival festvox-kdlpc16k"):
        festival("the kettle is boiling", "en-us", 160, 50)


def recorded_speech(folder, seconds=(0.6, 1.1, 0.8)):
    """Stand-ins for recordings of people: WAV files at 8 kHz of steady tones, each its own length."""
    folder.mkdir()
    for i, length in enumerate(seconds):
        t = np.arange(int(length * 8000)) / 8000
        soundfile.write(folder / f"prompt-{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), 8000)
    return folder


def test_make_demo_puts_recordings_of_people_between_the_digits(tmp_path):
    """--speech-dir/--speech-list: the non-digit speech is the listed recordings, each once, in the listed
    stretches of the stream, credited in the attribution with their transcripts."""
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    speech = recorded_speech(tmp_path / "speech")
    listing = tmp_path / "list.txt"
    listing.write_text("; chosen by hand\nprompt-2: Goodbye.\n\nprompt-0.wav: Please hold.\n")
    result = CliRunner().invoke(make_demo_main, [
        "--speakers", "theo", "--repeats", "1", "--out", str(tmp_path / "out"), "--speech-dir", str(speech),
        "--speech-list", str(listing), "--speech-credit", "Read by A. Person, CC BY-SA 3.0"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    spoken = [s for s in read_truth(tmp_path / "out" / "demo_non_target.csv", header=NON_TARGET_HEADER)
              if s.label == "speech"]
    assert sorted(round(s.end_s - s.start_s, 2) for s in spoken) == [0.6, 0.8]  # prompt-0 and prompt-2, once each
    uncredited = CliRunner().invoke(make_demo_main, [
        "--speakers", "theo", "--repeats", "1", "--out", str(tmp_path / "bare"), "--speech-dir", str(speech)])
    assert uncredited.exit_code == 0 and "names no author or licence for the recordings" in uncredited.output
    attribution = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    assert "background hiss and recorded non-digit speech between them" in attribution
    assert ("## Recorded speech, not digits\nRead by A. Person, CC BY-SA 3.0\n\n- `prompt-2.wav`: \"Goodbye.\"\n"
            "- `prompt-0.wav`: \"Please hold.\"") in attribution
    # Without a listing, every recording in the folder, in name order; --phrases takes the first ones, round again.
    write_demo(DEFAULT_FSDD, tmp_path / "all", speakers=("theo",), repeats=1, phrases=4,
               recordings=read_recordings(speech))
    spoken = [s for s in read_truth(tmp_path / "all" / "demo_non_target.csv", header=NON_TARGET_HEADER)
              if s.label == "speech"]
    assert sorted(round(s.end_s - s.start_s, 2) for s in spoken) == [0.6, 0.6, 0.8, 1.1]


def test_a_missing_voice_of_the_shipped_listing_names_its_debian_packages(tmp_path):
    # The shipped listing's voices come from three Debian packages; a user's own listing's voices, from anywhere.
    packages = "asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-prompt-it-menardi-wav"
    with pytest.raises(RecordingsError, match=rf"no folder it_IT_m_Carlo .*`sudo apt install {packages}`"):
        read_recordings(tmp_path, SHIPPED_LISTING)


@pytest.mark.parametrize("listing, args, message", [
    ("prompt-7: Not there.\n", [], "line 1: no recording .*prompt-7; is --speech-dir the folder"),
    # A voice the listing names whose folder is not there at all: not installed, most likely.
    ("prompt-0\nit_IT_m_Carlo/activated: Attivato.\n", [],
     "line 2: no recording .*activated; there is no folder it_IT_m_Carlo in --speech-dir .*: install the voices "
     ".*list.txt names, or pass"),
    ("; only a comment\n", [], "names no recordings"),
    (None, ["--speech-engine", "festival"], "leave out --speech-engine"),
    ("not-audio.wav\n", [], "cannot read .*not-audio.wav"),
    ("prompt-0: Caf\u00e9 ferm\u00e9.\n", [], "list.txt is not UTF-8 text .*iconv"),  # a Latin-1 listing
    # as training refuses it; it was once a stretch of speech of no length (`speech,26.573,26.573`)
    ("prompt-0\nsilent.wav\n", [], r"silent.wav is silent: a --speech-dir recording must hold speech; record it again"),
])
def test_make_demo_says_what_is_wrong_with_recorded_speech(tmp_path, listing, args, message):
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    speech = recorded_speech(tmp_path / "speech")
    (speech / "not-audio.wav").write_text("a text file, not a recording")
    soundfile.write(speech / "silent.wav", np.zeros(8000), 8000)  # digital silence
    options = ["--out", str(tmp_path / "out"), "--speech-dir", str(speech), *args]
    if listing is not None:
        (tmp_path / "list.txt").write_bytes(listing.encode("latin-1"))
        options += ["--speech-list", str(tmp_path / "list.txt")]
    result = CliRunner().invoke(make_demo_main, options)
    assert result.exit_code != 0 and re.search(message, result.output), result.output
    assert not (tmp_path / "out" / "demo.wav").exists()


def test_make_demo_needs_a_folder_for_a_speech_list(tmp_path):
    (tmp_path / "list.txt").write_text("prompt-0\n")
    result = CliRunner().invoke(make_demo_main, ["--out", str(tmp_path), "--speech-list", str(tmp_path / "list.txt")])
    assert result.exit_code == 2 and "need --speech-dir" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(make_demo_main, ["--out", str(tmp_path), "--speech-dir", str(empty)])
    assert result.exit_code == 1 and "no audio files" in result.output


def test_make_demo_puts_recorded_sounds_between_the_digits(tmp_path):
    """--sound-dir: every audio file under the folder goes in once, as a `noise` stretch where it sounds, never on a
    digit, and the attribution lists them with their credit; other files in the folder are not read."""
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    sounds = recorded_speech(tmp_path / "sounds", seconds=(0.5, 0.9))
    (sounds / "deeper").mkdir()
    soundfile.write(sounds / "deeper" / "chime.flac", 0.2 * np.sin(np.arange(5600) / 3), 8000)  # 0.7 s
    (sounds / "README.txt").write_text("where the sounds came from")
    result = CliRunner().invoke(make_demo_main, [
        "--speakers", "theo", "--repeats", "2", "--phrases", "0", "--out", str(tmp_path / "out"),
        "--sound-dir", str(sounds), "--sound-credit", "Made by B. Person, CC0"])
    assert result.exit_code == 0, result.output
    rows = truth_rows(tmp_path / "out" / "demo_truth.csv")
    others = read_truth(tmp_path / "out" / "demo_non_target.csv", header=NON_TARGET_HEADER)
    assert {s.label for s in others} == {"noise"}
    lengths = sorted(round(s.end_s - s.start_s, 2) for s in others)
    assert [x for x in lengths if x not in (0.8, 1.2)] == [0.5, 0.7, 0.9]  # the sounds, beside two noise bursts
    for s in others:
        assert not any(s.start_s < w_end and s.end_s > w_start for _, w_start, w_end in rows)
    attribution = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    assert "## Recorded sounds, not speech\nMade by B. Person, CC0\n\n" in attribution
    assert f"- `{sounds / 'deeper' / 'chime.flac'}`" in attribution and "README.txt" not in attribution


def test_make_demo_refuses_a_sound_folder_without_audio_and_a_credit_without_a_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(make_demo_main, ["--out", str(tmp_path / "out"),
                                                 "--sound-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "holds no audio file" in result.output, result.output
    result = CliRunner().invoke(make_demo_main, ["--out", str(tmp_path / "out"), "--sound-credit", "someone"])
    assert result.exit_code == 2 and "--sound-credit needs --sound-dir" in result.output
    assert not (tmp_path / "out" / "demo.wav").exists()
