"""In-between voices (`basilar train --morphs`): what is drawn, and the WORLD morph of real recordings."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from firmware_tools import dataset
from firmware_tools.cli import main
from firmware_tools.voice_morph import Analyser, draw_morphs, initials, make_morphs, morph_audio
from tests.bundles import FSDD_CLIPS
from tests.conftest import require_module
from tests.test_train_cli import TINY, write_clips

RATE = 8000


def clip(name: str) -> dataset.Clip:
    label, speaker, _ = Path(name).stem.split("_")
    return dataset.Clip(Path(name), label, speaker)


def test_draws_two_speakers_of_the_same_label_and_never_a_nameless_one():
    clips = [clip(f"{label}_{speaker}_{take}.wav") for label in "01" for speaker in ("ann", "bob", "cy")
             for take in range(12)]
    clips += [dataset.Clip(Path("0_x.wav"), "0", dataset.UNKNOWN_SPEAKER), clip("2_ann_0.wav")]
    morphs = draw_morphs(clips, ["0", "1", "2"], 30, seed=7)
    assert [m.label for m in morphs] == ["0"] * 30 + ["1"] * 30  # "2": said by one speaker only, so none
    for m in morphs:
        assert m.timing.label == m.other.label == m.label and m.timing.speaker != m.other.speaker
        assert 0.3 <= m.weight <= 0.5  # the timing is the favoured speaker's: never more than half way
        assert m.speaker == f"mix{m.timing.speaker[0]}{m.other.speaker[0]}"
        assert m.name == f"{m.label}_{m.speaker}_{morphs.index(m) % 30}.wav"
    assert len({(m.timing.path, m.other.path) for m in morphs}) > 50  # takes drawn, not always the first
    assert morphs == draw_morphs(list(reversed(clips)), ["0", "1", "2"], 30, seed=7)  # whatever the listing order
    assert morphs != draw_morphs(clips, ["0", "1", "2"], 30, seed=8)


def test_initials_tell_the_speakers_apart():
    assert initials(["jackson", "nicolas", "theo"]) == {"jackson": "j", "nicolas": "n", "theo": "t"}
    assert initials(["jackson", "jane", "theo"]) == {"jackson": "jac", "jane": "jan", "theo": "the"}


@pytest.fixture(scope="module")
def analysed():
    require_module("pyworld")
    analyse = Analyser(RATE)
    low, high = (dataset.Clip(FSDD_CLIPS / f"3_{s}_{take}.wav", "3", s) for s, take in (("jackson", 0), ("theo", 0)))
    return analyse, analyse(low), analyse(high)


def median_f0(audio: np.ndarray) -> float:
    import pyworld

    f0, _ = pyworld.harvest(audio.astype(np.float64) / 32768, RATE, frame_period=5.0)
    return float(np.median(f0[f0 > 0]))


def test_a_morph_lies_between_the_two_voices(analysed):
    _, low, high = analysed
    f0_low, f0_high = (float(np.median(a[1][a[1] > 0])) for a in (low, high))
    assert f0_high > f0_low * 1.1  # two voices apart, or the test says nothing
    morphed = morph_audio(low, high, 0.5, RATE)
    assert morphed.dtype == np.int16 and len(morphed) == len(low[0])  # the timing speaker's length
    rms = lambda x: np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    assert rms(morphed / 32768) == pytest.approx(rms(low[0]), rel=0.02)  # and loudness
    pitch = median_f0(morphed)
    assert f0_low * 1.02 < pitch < f0_high * 0.98, (f0_low, pitch, f0_high)
    nearer_low = median_f0(morph_audio(low, high, 0.3, RATE))
    assert nearer_low < pitch  # the weight moves it


def test_a_morph_is_the_same_however_many_analyses_came_before(analysed):
    """WORLD analysed at 8 kHz reads memory it never wrote: the same clip gave another morph each time."""
    analyse, low, high = analysed
    first = morph_audio(low, high, 0.4, RATE)
    for name in ("5_nicolas_0", "7_yweweler_0", "9_theo_0"):
        analyse(dataset.Clip(FSDD_CLIPS / f"{name}.wav", name[0], name.split("_")[1]))
    again = Analyser(RATE)
    same = morph_audio(again(dataset.Clip(FSDD_CLIPS / "3_jackson_0.wav", "3", "jackson")),
                       again(dataset.Clip(FSDD_CLIPS / "3_theo_0.wav", "3", "theo")), 0.4, RATE)
    np.testing.assert_array_equal(first, same)


def test_morph_files_are_kept_while_their_draw_is_the_same(tmp_path):
    require_module("pyworld")
    clips = dataset.scan_labelled(FSDD_CLIPS)
    folder = tmp_path / "morphs"
    morphs = draw_morphs(clips, ["1", "2"], 2, seed=0)
    made = make_morphs(morphs, folder, RATE)
    assert [c.path for c in made] == [folder / m.name for m in morphs]
    assert [c.speaker for c in made] == [m.speaker for m in morphs]
    listing = json.loads((folder / "morphs.json").read_text())
    assert listing[morphs[0].name]["timing"] == str(morphs[0].timing.path)
    times = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.wav")}
    make_morphs(morphs, folder, RATE)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.wav")} == times  # reused, not made again
    fewer = draw_morphs(clips, ["1"], 2, seed=0)
    make_morphs(fewer, folder, RATE)
    assert sorted(p.name for p in folder.glob("*.wav")) == sorted(m.name for m in fewer)  # stale ones gone


def test_a_morph_is_made_again_when_a_clip_it_was_made_from_is_replaced(tmp_path):
    """Only the sources' names were recorded: a morph of a take the user had since re-recorded under the same
    name was reused, and trained on, as if nothing had changed."""
    import shutil

    require_module("pyworld")
    for name in ("1_jackson_0.wav", "1_theo_0.wav"):
        shutil.copy(FSDD_CLIPS / name, tmp_path / name)
    morphs = draw_morphs(dataset.scan_labelled(tmp_path), ["1"], 1, seed=0)
    [made] = make_morphs(morphs, tmp_path / "morphs", RATE)
    before = made.path.read_bytes()
    shutil.copy(FSDD_CLIPS / "1_nicolas_0.wav", tmp_path / "1_jackson_0.wav")  # re-recorded: another voice
    [again] = make_morphs(morphs, tmp_path / "morphs", RATE)
    assert again.path == made.path and again.path.read_bytes() != before


def test_train_with_morphs_trains_on_them_and_says_so_in_the_attribution(tmp_path):
    require_module("tensorflow")
    require_module("pyworld")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(out), *TINY, "--morphs", "2",
                                       "--holdout", "theo", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert f"morphing 20 in-between voices (2 each of 0, 1, 2, 3, 4, 5, 6, 7, 8, 9) into {out / 'morphs'}" in \
        result.output
    morphs = json.loads((out / "morphs" / "morphs.json").read_text())
    assert len(morphs) == 20 and not any("theo" in m["timing"] + m["other"] for m in morphs.values())  # held out
    attribution = (out / "bundle" / "ATTRIBUTION.md").read_text()
    assert "Free Spoken Digit Dataset" in attribution  # the morphs are FSDD's recordings, changed
    assert "2 words of each label in voices between two training speakers', morphed from their recordings with " \
           "the WORLD vocoder (pyworld)." in attribution
    assert json.loads((out / "report.json").read_text())["settings"]["morphs_per_label"] == 2


def test_train_with_morphs_needs_two_named_speakers_of_a_label(tmp_path):
    require_module("tensorflow")
    require_module("pyworld")
    data = write_clips(tmp_path / "data", ["no/a.wav", "no/b.wav", "yes/c.wav", "yes/d.wav"])
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), *TINY, "--morphs", "3",
                                       "--holdout", "none", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "no label has clips of two known speakers" in result.output and "LABEL_SPEAKER_TAKE" in result.output
    assert not (tmp_path / "o" / "model.keras").exists()


def test_train_refuses_morphs_with_loso(tmp_path):
    result = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(tmp_path / "o"), "--morphs", "3",
                                       "--loso"])
    assert result.exit_code == 2 and "--loso trains one model per speaker without --morphs" in result.output
