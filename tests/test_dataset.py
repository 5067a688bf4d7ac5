"""Training and evaluation audio: real espeak-ng and flite voices, the rooms around training examples, and the noise
floor under quiet training examples and under clips played by `basilar eval --noise-floor`."""
import dataclasses

import numpy as np
import pytest
import soundfile

from firmware_tools import dataset, training
from firmware_tools.recordings import RecordingsError
from tests.conftest import recorded_phrases, require_program

RATE = 8000
DIGITS = [str(d) for d in range(10)]


def test_flite_digits_are_labelled_trimmed_speech():
    require_program("flite")
    clips = dataset.synth_digits_flite(RATE, 4, seed=1)
    assert [label for _, label in clips] == ["0", "1", "2", "3"]
    for audio, _ in clips:
        assert 0.15 * RATE < audio.size < 2.0 * RATE
        peak = np.abs(audio).max()
        assert 0.05 < peak <= 1.0
        # trimmed like the FSDD recordings: sound from the first sample to the last
        assert min(abs(audio[0]), abs(audio[-1])) > peak * 10 ** (-40 / 20)


def test_flite_synthesis_is_repeatable_for_a_seed():
    require_program("flite")
    first = dataset.synth_non_target_flite(RATE, 2, seed=7)
    again = dataset.synth_non_target_flite(RATE, 2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = dataset.synth_non_target_flite(RATE, 2, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_synthesized_digits_only_for_digit_labels():
    require_program("espeak-ng")
    require_program("flite")
    settings = dataclasses.replace(training.TrainSettings(), synth_digits=2, flite_digits=3, synth_non_target=1,
                                   flite_non_target=2)
    words, speech = training.synthesized(DIGITS, settings)
    assert [label for _, label in words] == ["0", "1", "0", "1", "2"]  # espeak-ng's, then flite's
    assert len(speech) == 3
    words, speech = training.synthesized(["no", "yes"], settings)
    assert words == [] and len(speech) == 3


def test_noise_floor_levels_lie_30_to_70_db_below_the_word():
    aug = dataset.Augmenter(training.DEFAULT_FRONTEND, [], seed=3)
    levels = [20 * np.log10(np.sqrt(np.mean(aug.noise_floor(RATE, word_peak=0.3) ** 2)) / 0.3) for _ in range(40)]
    assert all(-72 < level < -28 for level in levels)
    assert np.ptp(levels) > 20  # spread over the range, not one level


def test_some_quiet_examples_keep_digital_silence_and_the_others_get_a_noise_floor(monkeypatch):
    word = np.sin(np.arange(3000) * 0.3) * 0.3

    def silent_starts():  # examples whose first frames are digital silence (the front end's floor, -128)
        aug = dataset.Augmenter(training.DEFAULT_FRONTEND, [], seed=3)
        return sum(aug.word_example(word, 0, 10)[0][:5].max() == -128 for _ in range(200))

    with_floor = silent_starts()
    monkeypatch.setattr(dataset, "NOISE_FLOOR_SHARE", 0.0)
    assert 0 < with_floor < silent_starts() - 10


def test_clip_frames_over_a_noise_floor_are_seeded_and_differ_from_silence():
    cfg = training.DEFAULT_FRONTEND
    word = np.sin(np.arange(4000) * 0.2) * 0.1
    silent = dataset.clip_frames(cfg, word)
    hiss = dataset.clip_frames(cfg, word, noise_floor_dbfs=-60, seed=1)
    assert hiss.shape == silent.shape and hiss.dtype == silent.dtype
    assert np.array_equal(hiss, dataset.clip_frames(cfg, word, noise_floor_dbfs=-60, seed=1))
    assert not np.array_equal(hiss, dataset.clip_frames(cfg, word, noise_floor_dbfs=-60, seed=2))
    lead = round(dataset.EVAL_LEAD_S * 1000 / cfg.hop_ms) - 2  # frames before the word: silence, or raised hiss
    assert silent[:lead].max() == -128 and hiss[:lead].mean() > 0


def test_a_room_keeps_the_direct_sound_and_adds_a_decaying_tail():
    rng = np.random.default_rng(4)
    click = np.zeros(2 * RATE)
    click[100] = 1.0
    tenth = RATE // 10
    for _ in range(30):
        heard = dataset.random_room(rng, click, RATE)
        assert heard.shape == click.shape
        assert np.abs(heard[:100]).max() < 1e-9 and abs(heard[100] - 1.0) < 1e-9
        assert np.abs(heard[101:116]).max() < 1e-9  # the first reflection comes 2-20 ms after the direct sound
        tail = heard[101:]
        assert -12.5 < 10 * np.log10(np.sum(tail ** 2)) < 3.5  # 12 dB quieter to 3 dB louder than the direct sound
        first, second = np.sum(tail[:tenth] ** 2), np.sum(tail[tenth:2 * tenth] ** 2)
        assert first > 2 * second  # it dies away: RT60 of at most 1 s is at least 6 dB per 0.1 s
        assert np.abs(tail[RATE + 100:]).max() < 1e-9  # and is gone after 1 s


def test_a_share_of_word_and_background_examples_is_heard_in_a_room(monkeypatch):
    rooms = []
    real_room = dataset.random_room
    monkeypatch.setattr(dataset, "random_room", lambda rng, x, rate: rooms.append(x.size) or real_room(rng, x, rate))
    aug = dataset.Augmenter(training.DEFAULT_FRONTEND, [], seed=5)
    word = np.sin(np.arange(3000) * 0.3) * 0.3
    for _ in range(100):
        aug.word_example(word, 0, 10)
        aug.background_example(10)
    assert 0.2 < len(rooms) / 200 < 0.4  # ROOM_SHARE, 0.3
    assert min(rooms) >= dataset.SEQ_FRAMES * training.DEFAULT_FRONTEND.hop_samples  # the whole example, not the word


def test_recorded_speech_is_read_trimmed_at_the_front_end_rate_and_keys_the_cache(tmp_path):
    require_program("espeak-ng")
    recorded_phrases(tmp_path / "rec", ["where did you put the keys", "good morning"])
    listing = tmp_path / "list.txt"
    listing.write_text("; a comment\np1: good morning\n")
    settings = training.TrainSettings(recorded_speech=(str(tmp_path / "rec"), str(listing), "someone, CC0"))
    [morning] = training.recorded_speech(settings)  # only the one the listing names
    alone = dataset.read_clip(tmp_path / "rec" / "p1.wav", RATE)
    assert len(alone) - len(morning) > 0.9 * RATE  # the second of silence is trimmed off
    everything = dataclasses.replace(settings, recorded_speech=(str(tmp_path / "rec"), None, "someone"))
    assert len(training.recorded_speech(everything)) == 2  # no listing: every recording in the folder
    # The recordings shape the examples, so they key the feature cache; the credit does not.
    keys = {training.example_settings(s)
            for s in (settings, everything, dataclasses.replace(settings, recorded_speech=None))}
    assert len(keys) == 3
    credit = dataclasses.replace(settings, recorded_speech=(str(tmp_path / "rec"), str(listing), "another"))
    assert training.example_settings(credit) == training.example_settings(settings)


def test_a_listing_that_names_a_missing_recording_is_a_clear_error(tmp_path):
    require_program("espeak-ng")
    recorded_phrases(tmp_path / "rec", ["good morning"])
    listing = tmp_path / "list.txt"
    listing.write_text("p0\np7: not there\n")
    settings = training.TrainSettings(recorded_speech=(str(tmp_path / "rec"), str(listing), ""))
    with pytest.raises(RecordingsError, match="line 2: no recording .*p7"):
        training.recorded_speech(settings)


def test_the_recorded_speech_listing_names_three_voices_and_no_numbers():
    from pathlib import Path

    listing = Path(training.__file__).with_name("recorded_non_target_speech.txt").read_text(encoding="utf-8")
    entries = [line.split(":", 1) for line in listing.splitlines() if line and not line.startswith(";")]
    assert len(entries) == 750
    assert {name.split("/")[0] for name, _ in entries} == {"it_IT_m_Carlo", "it_IT_f_Menardi", "ru_RU_f_IvrvoiceRU"}
    assert not any(char.isdigit() for _, text in entries for char in text)
    for number_word in ("uno", "due", "tre", "один", "два", "три"):
        assert not any(number_word in text.lower().split() for _, text in entries)


def test_a_label_folder_is_never_taken_for_a_speaker(tmp_path):
    """`yes/take1.wav` says nothing of who speaks: held out as a "speaker", the folder would be a whole class."""
    from firmware_tools.training import holdout_speakers

    for label in ("no", "yes"):
        (tmp_path / label).mkdir()
        soundfile.write(tmp_path / label / "take1.wav", np.zeros(800), 8000)
        soundfile.write(tmp_path / label / f"{label}_ann_2.wav", np.zeros(800), 8000)
    clips = dataset.scan_labelled(tmp_path)
    assert sorted((c.label, c.speaker) for c in clips) == [("no", "ann"), ("no", "unknown"), ("yes", "ann"),
                                                           ("yes", "unknown")]
    speakers = sorted({c.speaker for c in clips})
    assert holdout_speakers("auto", speakers) == []  # one named speaker: nothing to hold out
    assert holdout_speakers("auto", ["ann", "bob", "unknown"]) == ["bob"]
    with pytest.raises(ValueError, match="unknown is not among the speakers found: ann"):
        holdout_speakers("unknown", speakers)


def test_a_clip_with_no_audio_is_named(tmp_path):
    soundfile.write(tmp_path / "5_jackson_99.wav", np.zeros(0), 8000)
    with pytest.raises(ValueError, match="5_jackson_99.wav holds no audio"):
        dataset.read_clip(tmp_path / "5_jackson_99.wav", 8000)
