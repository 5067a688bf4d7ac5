"""The issue's false-alarm target, <= 2 per minute of non-digit speech, on voices no recipe trains on.

A stream of the shipped bundle's own speakers' digits with 60 everyday phrases in festival's ked voice between them
(about 2 minutes of speech), through the shipped bundle at its detector defaults, dry and in a ringing room; and the
same phrases shared among four of festival's non-English voices reading English. The long measurements (28-34
minutes of such voices, held-out speakers) are in the README and docs/models.md; this guards the target against a
change to the detector or the bundle. Last, two real people: their recorded telephone prompts that say no number
(12.3 and 10.5 minutes; docs/models.md, "A real person's speech").
"""
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edge.runloop import Pipeline
from firmware_tools.make_demo import DEFAULT_FSDD, SPEAKERS, write_demo
from firmware_tools.recordings import read_recordings
from firmware_tools.stream_eval import NON_TARGET_HEADER, detect_file, read_truth, score_stream
from tests.conftest import REPO, in_a_room, require, require_program

TARGET_PER_MINUTE = 2.0
# voice -> the Debian package that has it (.ci/run installs them)
FOUR_VOICES = {"voice_pc_diphone": "festvox-itapc16k", "voice_czech_machac": "festvox-czech-machac",
               "voice_hy_fi_mv_diphone": "festvox-suopuhe-mv", "voice_msu_ru_nsh_clunits": "festvox-ru"}


def require_festival_voice(voice: str, package: str) -> None:
    name = voice.removeprefix("voice_")
    require(any(Path("/usr/share/festival/voices").glob(f"*/{name}")), f"festival's {voice} (package {package})")


@pytest.fixture(scope="module")
def ked_stream(tmp_path_factory):
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("text2wave")
    out = tmp_path_factory.mktemp("ked")
    write_demo(DEFAULT_FSDD, out, seed=21, speakers=SPEAKERS, repeats=1, phrases=60, speech_engine="festival")
    return out


@pytest.fixture(scope="module")
def four_voice_stream(tmp_path_factory):
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require_program("text2wave")
    for voice, package in FOUR_VOICES.items():
        require_festival_voice(voice, package)
    out = tmp_path_factory.mktemp("four_voices")
    write_demo(DEFAULT_FSDD, out, seed=22, speakers=SPEAKERS, repeats=1, phrases=60, speech_engine="festival",
               festival_voices=tuple(FOUR_VOICES))
    return out


# Real people's recorded prompts with no number word (listings in tests/data): (folder, Debian package, listing,
# credit). No recipe trains on English or French recordings (docs/models.md, "Recorded speech in the background class").
REAL_VOICES = {
    "allison": (Path("/usr/share/asterisk/sounds/en_US_f_Allison"), "asterisk-core-sounds-en-wav",
                REPO / "tests" / "data" / "allison_non_digit_prompts.txt",
                "Allison Smith, Asterisk core sounds (English), CC BY-SA 3.0"),
    "june": (Path("/usr/share/asterisk/sounds/fr_CA_f_June"), "asterisk-core-sounds-fr-wav",
             REPO / "tests" / "data" / "june_non_digit_prompts.txt",
             "June Wallack, Asterisk core sounds (French, Canada), CC BY-SA 3.0"),
}


@pytest.fixture(scope="module", params=sorted(REAL_VOICES))
def real_speech_stream(request, tmp_path_factory):
    folder, package, listing, credit = REAL_VOICES[request.param]
    require(DEFAULT_FSDD.is_dir(), f"the FSDD recordings at {DEFAULT_FSDD}")
    require(folder.is_dir(), f"Asterisk's recorded prompts in {folder} (package {package})")
    out = tmp_path_factory.mktemp(request.param)
    write_demo(DEFAULT_FSDD, out, seed=23, speakers=SPEAKERS, repeats=2, recordings=read_recordings(folder, listing),
               speech_credit=credit)
    return out


def score(audio_path, stream_dir, **overrides):
    pipeline = Pipeline.from_bundle("default", detector_overrides=overrides)
    detections, seconds = detect_file(pipeline, audio_path)
    words = read_truth(stream_dir / "demo_truth.csv")
    speech = read_truth(stream_dir / "demo_non_target.csv", header=NON_TARGET_HEADER)
    result = score_stream(detections, words, seconds, non_target=speech).to_dict()
    assert result["non_target_speech_s"] > 80  # the phrases are there: about 1.5 minutes of them, silent ends left out
    return result


def test_an_unfamiliar_voice_makes_fewer_false_alarms_than_the_target(ked_stream):
    result = score(ked_stream / "demo.wav", ked_stream)
    assert result["hits"] == result["words"] == 10
    assert result["false_alarms_per_speech_minute"] <= TARGET_PER_MINUTE
    # What keeps it there: without end-pointing the digit-like syllables in running speech are reported.
    assert score(ked_stream / "demo.wav", ked_stream, end_quiet_ms=0)["false_alarms_per_speech_minute"] > 5


def test_in_a_ringing_room_too(ked_stream, tmp_path):
    audio, rate = soundfile.read(ked_stream / "demo.wav", dtype="float64")
    wet = in_a_room(audio, rate, rt60_s=1.0)
    room_wav = tmp_path / "room.wav"
    soundfile.write(room_wav, wet * (0.9 / max(0.9, np.abs(wet).max())), rate, subtype="PCM_16")
    result = score(room_wav, ked_stream)
    assert result["hits"] >= 8
    assert result["false_alarms_per_speech_minute"] <= TARGET_PER_MINUTE
    assert score(room_wav, ked_stream, end_quiet_ms=0)["false_alarms_per_speech_minute"] > 5


def test_four_more_unfamiliar_voices_too(four_voice_stream):
    result = score(four_voice_stream / "demo.wav", four_voice_stream)
    assert result["words"] == 10 and result["hits"] >= 9  # in the longer four-voice streams: 787 of 800
    assert result["false_alarms_per_speech_minute"] <= TARGET_PER_MINUTE
    no_end_pointing = score(four_voice_stream / "demo.wav", four_voice_stream, end_quiet_ms=0)
    # 3.7 per minute (at 0.95: 2.45; recipe 7's bundle: 6.5)
    assert no_end_pointing["false_alarms_per_speech_minute"] > TARGET_PER_MINUTE


def test_a_real_persons_speech_makes_fewer_false_alarms_than_the_target(real_speech_stream):
    """Allison Smith's English prompts (11.1 min of speech) and June Wallack's French ones (9.9 min), many of them one
    or two words said alone: the shipped bundle makes 0.90 and 1.52 false alarms per minute of their speech at its
    threshold, 0.92 (0.82 and 1.43 when the prompts' quiet ends were counted as speech; recipe 7, without recorded
    speech in its background class: 3.1 and 4.4 at 0.95, counted so)."""
    result = score(real_speech_stream / "demo.wav", real_speech_stream)
    assert result["non_target_speech_s"] > 550  # 284 and 262 prompts, their quiet ends left out
    assert result["hits"] >= 19 and result["words"] == 20
    assert result["false_alarms_per_speech_minute"] <= TARGET_PER_MINUTE
