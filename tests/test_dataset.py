"""Training and evaluation audio: real espeak-ng and flite voices, the rooms around training examples, and the noise
floor under quiet training examples and under clips played by `basilar eval --noise-floor`."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from firmware_tools import dataset, training
from firmware_tools.recordings import SHIPPED_LISTING, RecordingsError, read_recordings
from tests.conftest import REPO, recorded_phrases, require_program

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


def test_the_background_never_says_a_label_and_the_digits_background_is_what_it_was():
    """A label among the common words ("yes": "yes of course" is an everyday phrase) would be taught as background,
    no target. The phrase lists hold no number words, so digits draw exactly the phrases they drew before."""
    import random

    labels = [dataset.words_of(label) for label in ("yes", "lights_on", "Stop")]
    assert labels == [("yes",), ("lights", "on"), ("stop",)]
    drawn = [dataset.non_target_text(random.Random(seed), labels) for seed in range(3000)]
    assert not any(dataset.says(text, label) for text in drawn for label in labels)
    assert any(dataset.says(text, ("on",)) for text in drawn)  # "on" alone is no "lights on": a useful negative
    assert dataset.says("Yes, of course.", ("yes",)) and not dataset.says("eyes", ("yes",))
    before, after = random.Random(7), random.Random(7)
    digits = [dataset.words_of(str(d)) for d in range(10)]
    assert ([dataset.non_target_text(before) for _ in range(2000)]
            == [dataset.non_target_text(after, digits) for _ in range(2000)])


def test_features_cached_before_the_background_avoided_labels_are_not_reused_for_other_words(tmp_path):
    """The digits' key is what it was (their background is drawn as before, and the shipped recipe's cache stays
    good); other labels' keys are new, so a background that said "yes of course" to a label "yes" is not reused."""
    write_clip(tmp_path / "0_ann_1.wav")
    [clip] = dataset.scan_labelled(tmp_path)
    settings = training.TrainSettings()

    def before(labels):
        return dataset.cache_key(dataset.RECIPE, [(str(clip.path), clip.path.stat().st_mtime_ns)], labels,
                                 settings.frontend.hash(), training.example_settings(settings),
                                 training.synth_engines())

    assert training.examples_key([clip], DIGITS, settings) == before(DIGITS)
    assert training.examples_key([clip], ["no", "yes"], settings) != before(["no", "yes"])


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
    listing = SHIPPED_LISTING.read_text(encoding="utf-8")
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


@pytest.mark.parametrize("content, message", [
    (b"", r"5_jackson_98\.wav is empty \(0 bytes\): an interrupted recording or copy; .*or leave it out"),
    (b"not audio\n" * 50, r"cannot read .*5_jackson_98\.wav: .*Format not recognised.*; convert it to WAV .*or leave "
                          "it out"),
])
def test_a_clip_that_is_not_audio_says_how_to_go_on(tmp_path, content, message):
    (tmp_path / "5_jackson_98.wav").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        dataset.read_clip(tmp_path / "5_jackson_98.wav", 8000)


def write_clip(path, n=800, rate=8000, value=0.1):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.full(n, value), rate)


def test_in_a_sub_folder_the_speaker_follows_the_label_in_the_name(tmp_path):
    """`glass_break/glass_break_alice_0.wav` is alice's, not "break"'s; a name that does not start with the label
    names a speaker only as exactly {word}_{speaker}_{take} (FSDD sorted into folders: `zero/0_theo_4.wav`)."""
    for name in ("glass_break/glass_break_alice_0.wav", "glass_break/glass_break_00.wav", "no/no_bob_3.wav",
                 "no/take_3.wav", "yes/alice_1.wav", "7_jackson_12.wav", "zero/0_theo_4.wav",
                 "yes/a_b_c_d.wav"):
        write_clip(tmp_path / name)
    found = {c.path.relative_to(tmp_path).as_posix(): (c.label, c.speaker) for c in dataset.scan_labelled(tmp_path)}
    assert found == {"glass_break/glass_break_alice_0.wav": ("glass_break", "alice"),
                     "glass_break/glass_break_00.wav": ("glass_break", "unknown"), "no/no_bob_3.wav": ("no", "bob"),
                     "no/take_3.wav": ("no", "unknown"), "yes/alice_1.wav": ("yes", "unknown"),
                     "7_jackson_12.wav": ("7", "jackson"), "zero/0_theo_4.wav": ("zero", "theo"),
                     "yes/a_b_c_d.wav": ("yes", "unknown")}


def test_a_holdout_that_leaves_a_label_without_training_clips_is_refused(tmp_path):
    for name in ("yes/yes_alice_0.wav", "yes/yes_bob_0.wav", "no/no_bob_1.wav", "no/no_2.wav"):
        write_clip(tmp_path / name)
    clips = dataset.scan_labelled(tmp_path)
    labels = training.label_order(clips)
    held, train = training.split_holdout(clips, labels, ["bob"])  # no/no_2.wav is still there to train on
    assert len(held) == 2 and len(train) == 2
    (tmp_path / "no" / "no_2.wav").unlink()
    clips = dataset.scan_labelled(tmp_path)
    assert training.holdout_speakers("auto", sorted({c.speaker for c in clips})) == ["bob"]
    with pytest.raises(ValueError, match="holding out bob leaves no clip of 'no' to train on .*--holdout none"):
        training.split_holdout(clips, labels, ["bob"])


def test_a_flat_name_with_more_parts_than_label_speaker_take_is_refused(tmp_path):
    """Directly in the data folder `lights_on_erin_0.wav` would train a label "lights" spoken by "on"."""
    write_clip(tmp_path / "yes_erin_0.wav")
    write_clip(tmp_path / "lights_on_erin_0.wav")
    with pytest.raises(ValueError, match=r"lights_on_erin_0.wav: .* its label is unclear \(a label or a take holding "
                                         r"`_`\); put the files in one sub-folder per label, which names it: "
                                         r".*/LABEL/lights_on_erin_0.wav"):
        dataset.scan_labelled(tmp_path)
    (tmp_path / "lights_on").mkdir()
    (tmp_path / "lights_on_erin_0.wav").rename(tmp_path / "lights_on" / "lights_on_erin_0.wav")
    assert sorted((c.label, c.speaker) for c in dataset.scan_labelled(tmp_path)) == [("lights_on", "erin"),
                                                                                     ("yes", "erin")]


def test_flat_names_with_and_without_a_speaker_mixed_are_refused(tmp_path):
    """`stop_1.wav` beside `lights_on_1.wav`: the second was read as the label "lights" said by "on", so
    `lights_off_1.wav` and `lights_on_1.wav` trained one label "lights" without a word."""
    for name in ("stop_1.wav", "lights_on_1.wav", "lights_off_1.wav"):
        write_clip(tmp_path / name)
    with pytest.raises(ValueError, match=r"the names directly in .* mix LABEL_TAKE \(stop_1.wav\) and "
                                         r"LABEL_SPEAKER_TAKE \(lights_\w+_1.wav\), so a label holding `_` cannot be "
                                         r"told from a speaker \(lights_\w+_1.wav: the label 'lights' said by "):
        dataset.scan_labelled(tmp_path)
    for name in ("lights_on_1.wav", "lights_off_1.wav"):
        (tmp_path / name[:-6]).mkdir()
        (tmp_path / name).rename(tmp_path / name[:-6] / name)
    assert sorted(c.label for c in dataset.scan_labelled(tmp_path)) == ["lights_off", "lights_on", "stop"]
    for name in ("yes_alice_0.wav", "no_bob_1.wav"):  # every name one way: as before
        write_clip(tmp_path / "fsdd_like" / name)
    assert sorted((c.label, c.speaker) for c in dataset.scan_labelled(tmp_path / "fsdd_like")) == [
        ("no", "bob"), ("yes", "alice")]


def test_the_label_is_the_first_folder_under_the_data_folder(tmp_path):
    for name in ("yes/alice/1.wav", "yes/bob/take/yes_bob_2.wav", "no/alice/1.wav"):
        write_clip(tmp_path / name)
    found = sorted((c.label, c.speaker) for c in dataset.scan_labelled(tmp_path))
    assert found == [("no", "unknown"), ("yes", "bob"), ("yes", "unknown")]


def test_what_a_mac_leaves_beside_the_audio_is_not_taken_for_clips(tmp_path):
    """A folder copied from a Mac holds AppleDouble `._yes_ann_1.wav` files (metadata under an audio name) and its
    zip a `__MACOSX/` tree of them: they are neither clips nor labels, and libsndfile cannot read them."""
    write_clip(tmp_path / "yes" / "yes_ann_1.wav")
    write_clip(tmp_path / "7_jackson_12.wav")
    for name in ("yes/._yes_ann_1.wav", "._7_jackson_12.wav", "__MACOSX/yes/._yes_ann_1.wav", ".Trashes/no/1.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # the AppleDouble magic
    found = sorted((c.path.relative_to(tmp_path).as_posix(), c.label) for c in dataset.scan_labelled(tmp_path))
    assert found == [("7_jackson_12.wav", "7"), ("yes/yes_ann_1.wav", "yes")]
    speech = tmp_path / "speech"
    write_clip(speech / "hello.wav")
    (speech / "._hello.wav").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    assert [r.path.name for r in read_recordings(speech)] == ["hello.wav"]


@pytest.mark.parametrize("suffix, fmt", [(".mp3", "MP3"), (".aiff", "AIFF"), (".aif", "AIFF"), (".au", "AU"),
                                         (".flac", "FLAC")])
def test_formats_libsndfile_reads_are_scanned_and_read(tmp_path, suffix, fmt):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile reads no {fmt}")
    path = tmp_path / "yes" / f"yes_ann_1{suffix}"
    path.parent.mkdir()
    soundfile.write(path, np.sin(np.arange(1600) * 0.3) * 0.3, 8000, format=fmt)
    assert [(c.path, c.label, c.speaker) for c in dataset.scan_labelled(tmp_path)] == [(path, "yes", "ann")]
    assert 1500 < dataset.read_clip(path, RATE).size < 2700  # MP3 adds some padding


def test_a_background_label_folder_is_refused(tmp_path):
    write_clip(tmp_path / "yes" / "yes_ann_1.wav")
    write_clip(tmp_path / dataset.BACKGROUND / "door.wav")
    with pytest.raises(ValueError, match="the label _background_ is reserved .* rename the folder"):
        dataset.scan_labelled(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_clip_with_samples_that_are_not_numbers_is_named(tmp_path, bad):
    x = np.full(800, 0.1, np.float32)
    x[400] = bad
    soundfile.write(tmp_path / "yes_ann_1.wav", x, 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match="yes_ann_1.wav holds samples that are not numbers .*re-encode it"):
        dataset.read_clip(tmp_path / "yes_ann_1.wav", RATE)


def test_a_clip_too_short_to_resample_is_named(tmp_path):
    write_clip(tmp_path / "yes_ann_1.wav", n=2, rate=44100)
    with pytest.raises(ValueError, match=r"yes_ann_1.wav is too short: its 2 samples at 44100 Hz leave nothing"):
        dataset.read_clip(tmp_path / "yes_ann_1.wav", RATE)


def test_a_silent_recording_of_speech_is_named(tmp_path):
    write_clip(tmp_path / "rec" / "p0.wav", value=0.2)
    write_clip(tmp_path / "rec" / "p1.wav", value=0.0)
    settings = training.TrainSettings(recorded_speech=(str(tmp_path / "rec"), None, "someone"))
    with pytest.raises(ValueError, match="p1.wav is silent"):
        training.recorded_speech(settings)


def test_labels_sort_digits_by_value_and_other_characters_as_text():
    clips = [dataset.Clip(None, label, "unknown") for label in ("²", "10", "yes", "2", "٣")]
    assert training.label_order(clips) == ["2", "10", "yes", "²", "٣"]


def test_fsdd_attribution_only_for_fsdd_clips_and_synthesis_only_when_on(tmp_path, monkeypatch):
    from firmware_tools.bundler import FSDD_PROVENANCE
    from tests.bundles import FSDD_CLIPS

    monkeypatch.setattr(training, "synth_engines", lambda: (True, True))
    settings = training.TrainSettings()
    clips = dataset.scan_labelled(FSDD_CLIPS)
    assert training.provenance(FSDD_CLIPS, clips, DIGITS, settings) == FSDD_PROVENANCE  # the default recipe's
    # The shipped bundle is recipe 8's, without the synthesized sounds (--no-sound-events), and says so.
    shipped = json.loads((REPO / "edge" / "default_bundle" / "manifest.json").read_text())["provenance"]
    recipe_8 = dataclasses.replace(settings, sound_events=False)
    assert training.provenance(FSDD_CLIPS, clips, DIGITS, recipe_8)["synthetic_data"] == shipped["synthetic_data"]
    # A user's own words by speakers who happen to share FSDD's speakers' names are not FSDD.
    for name in ("yes/yes_jackson_0.wav", "no/no_theo_0.wav"):
        write_clip(tmp_path / "own" / name)
    own = dataset.scan_labelled(tmp_path / "own")
    off = dataclasses.replace(settings, synth_digits=0, flite_digits=0, synth_non_target=0, flite_non_target=0)
    assert training.provenance(tmp_path / "own", own, ["no", "yes"], off) == {
        "training_data": "own",  # the folder's name: not the path to it (the user's home), nor "." typed in it
        "synthetic_data": "Noise and other sounds (notes, chords, bells, sweeps, knocks) synthesized with numpy."}
    assert training.provenance(tmp_path / "own", own, ["no", "yes"], settings)["synthetic_data"] == (
        "Extra non-target speech synthesized with espeak-ng and flite; noise and other sounds (notes, chords, bells, "
        "sweeps, knocks) synthesized with numpy.")
    # --data-credit: the user's own credit heads the attribution; under FSDD's, which it cannot replace
    credit = "Recorded by Erin Doe, CC BY 4.0."
    credited = dataclasses.replace(off, data_credit=credit)
    assert training.provenance(tmp_path / "own", own, ["no", "yes"], credited)["attribution"] == credit
    assert training.provenance(Path("."), own, ["no", "yes"], off)["training_data"] == Path.cwd().name
    blank = dataclasses.replace(off, data_credit="   ")  # no credit at all: the training warns of it
    assert "attribution" not in training.provenance(tmp_path / "own", own, ["no", "yes"], blank)
    assert training.provenance(FSDD_CLIPS, clips, DIGITS, dataclasses.replace(settings, data_credit=credit))[
        "attribution"] == FSDD_PROVENANCE["attribution"] + " " + credit
    # FSDD's recordings sorted into label folders (under other labels), or beside the user's own, are FSDD's still:
    # a bundle trained on them is a derivative and carries FSDD's attribution, the user's credit after it.
    for name in (f"{word}/{d}_jackson_0.wav" for d, word in enumerate(("zero", "one"))):
        write_clip(tmp_path / "nested" / name)
    nested = dataset.scan_labelled(tmp_path / "nested")
    assert training.provenance(tmp_path / "nested", nested, ["zero", "one"], settings)["training_data"] == (
        "Free Spoken Digit Dataset (Zohar Jackson and contributors), speakers jackson")
    mixed = clips + [dataset.Clip(FSDD_CLIPS / "3_alice_0.wav", "3", "alice")]
    assert not training.needs_credit(clips, settings) and training.needs_credit(mixed, settings)
    mixed_credited = training.provenance(FSDD_CLIPS, mixed, DIGITS, dataclasses.replace(settings, data_credit=credit))
    assert mixed_credited["license"] == "CC BY-SA 4.0"
    assert mixed_credited["attribution"] == FSDD_PROVENANCE["attribution"] + " " + credit
    assert mixed_credited["training_data"] == (f"{FSDD_CLIPS.name}, with 40 recordings from the Free Spoken Digit "
                                               "Dataset "
                                               "(Zohar Jackson and contributors), speakers jackson, nicolas, theo, "
                                               "yweweler")
    # The whole corpus (two more speakers) is FSDD's too, and its attribution names who is in it.
    whole = clips + [dataset.Clip(FSDD_CLIPS / "3_lucas_0.wav", "3", "lucas")]
    fuller = training.provenance(FSDD_CLIPS, whole, DIGITS, settings)
    assert fuller["license"] == "CC BY-SA 4.0" and fuller["training_data"].endswith(
        "speakers jackson, lucas, nicolas, theo, yweweler")


@pytest.mark.parametrize("name", ["recording.wav", "_x.wav"])
def test_a_file_directly_in_the_data_folder_without_a_label_is_named_not_skipped(tmp_path, name):
    """Skipped without a word, it was missing from `basilar eval`'s clips and from training, and nobody knew."""
    write_clip(tmp_path / "9_ann_0.wav")
    write_clip(tmp_path / name)
    with pytest.raises(ValueError, match=f"{name}: a file directly in .* has none; rename it"):
        dataset.scan_labelled(tmp_path)


def test_a_label_folder_that_is_a_link_is_read_and_a_link_back_up_is_no_loop(tmp_path):
    """`Path.rglob` passed a linked folder by: a whole label went missing from training without a word."""
    write_clip(tmp_path / "store" / "7" / "7_ann_0.wav")
    write_clip(tmp_path / "data" / "8" / "8_ann_0.wav")
    (tmp_path / "data" / "7").symlink_to(tmp_path / "store" / "7")
    (tmp_path / "store" / "7" / "up").symlink_to(tmp_path / "data")  # a loop, if followed
    found = sorted((c.label, c.path.name) for c in dataset.scan_labelled(tmp_path / "data"))
    assert found == [("7", "7_ann_0.wav"), ("8", "8_ann_0.wav")]


def test_a_link_to_no_clip_is_named(tmp_path):
    write_clip(tmp_path / "8_ann_0.wav")
    (tmp_path / "7_ann_0.wav").symlink_to(tmp_path / "gone.wav")
    with pytest.raises(ValueError, match="7_ann_0.wav is a link to nothing"):
        dataset.scan_labelled(tmp_path)


def test_a_label_is_one_label_however_its_unicode_is_written(tmp_path):
    """A Mac writes "ü" as "u" and a combining diaeresis (NFD): the same word would be two labels."""
    write_clip(tmp_path / "gr\u00fcn" / "a.wav")
    write_clip(tmp_path / "gru\u0308n" / "b.wav")  # another folder to the file system
    assert len(list(tmp_path.iterdir())) == 2
    assert {c.label for c in dataset.scan_labelled(tmp_path)} == {"gr\u00fcn"}


def test_a_silent_labelled_clip_is_refused_by_name(tmp_path):
    write_clip(tmp_path / "2_ann_0.wav", value=0.0)
    [clip] = dataset.scan_labelled(tmp_path)
    with pytest.raises(ValueError, match="2_ann_0.wav holds only digital silence .* no '2'"):
        dataset.read_labelled_clip(clip, 8000)


def test_a_label_folder_that_is_a_link_to_nothing_is_named(tmp_path):
    """Only a link with an audio name was named: a label folder moved away was left out without a word."""
    write_clip(tmp_path / "yes" / "yes_ann_0.wav")
    (tmp_path / "no").symlink_to(tmp_path / "moved-away")
    with pytest.raises(ValueError, match=r"/no is a link to nothing \(what it pointed at is gone\); mend the link"):
        dataset.scan_labelled(tmp_path)


def test_a_folder_and_its_files_named_in_two_unicode_forms_keep_the_speaker(tmp_path):
    """A folder `lights_ön` in NFD holding `lights_ön_erin_0.wav` in NFC made erin "unknown": --holdout erin then
    trained on her clip."""
    import unicodedata

    nfc = "lights_\u00f6n"
    nfd = unicodedata.normalize("NFD", nfc)
    write_clip(tmp_path / nfd / f"{nfc}_erin_0.wav")
    write_clip(tmp_path / nfc / f"{nfd}_sam_0.wav")  # and the other way round (another folder to the file system)
    clips = dataset.scan_labelled(tmp_path)
    assert sorted((c.label, c.speaker) for c in clips) == [(nfc, "erin"), (nfc, "sam")]
    held, train = training.split_holdout(clips, [nfc], ["erin"])
    assert [c.speaker for c in held] == ["erin"] and "erin" not in {c.speaker for c in train}


def test_a_listing_saved_with_a_byte_order_mark_names_its_first_recording(tmp_path):
    write_clip(tmp_path / "rec" / "plain.wav")
    (tmp_path / "list.txt").write_text("plain: a phrase\n", encoding="utf-8-sig")  # as Windows' Notepad saves it
    assert read_recordings(tmp_path / "rec", tmp_path / "list.txt")[0].path == tmp_path / "rec" / "plain.wav"


def test_a_listing_name_without_its_suffix_finds_it_in_any_case_and_after_a_dot(tmp_path):
    """`hello` was not found as `hello.WAV` (which the folder scan reads), nor `take.one` as `take.one.wav` (its
    `.one` was replaced as if it were the suffix)."""
    rec = tmp_path / "rec"
    for name in ("hello.WAV", "take.one.wav", "plain.flac", "plain.wav"):
        write_clip(rec / name)
    (tmp_path / "list.txt").write_text("hello: hello there\ntake.one: a name with a dot\nplain\n")
    found = [r.path.name for r in read_recordings(rec, tmp_path / "list.txt")]
    assert found == ["hello.WAV", "take.one.wav", "plain.wav"]  # .wav first, as before
    (tmp_path / "list.txt").write_text("take.two\n")
    with pytest.raises(RecordingsError, match=r"line 1: no recording .*/rec/take.two;"):
        read_recordings(rec, tmp_path / "list.txt")


def test_a_label_folder_of_files_that_are_not_audio_here_is_refused(tmp_path):
    """`no/*.m4a` was left out without a word: the training went on with the labels ['yes']."""
    write_clip(tmp_path / "yes" / "yes_ann_0.wav")
    (tmp_path / "yes" / "notes.txt").write_text("beside clips: not read, as before\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"\x00")  # a folder of hidden files holds nothing
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "no_ann_0.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(ValueError, match=r"/no holds no audio file that can be read here \(only \.m4a: no_ann_0\.m4a"
                                         r"\), so its label would be left out; convert them to WAV, e.g. `ffmpeg -i "
                                         r"IN.m4a OUT.wav`.* or move the folder out of"):
        dataset.scan_labelled(tmp_path)
    (tmp_path / "no" / "no_ann_0.m4a").rename(tmp_path / "recording.m4a")
    (tmp_path / "no").rmdir()
    warnings = []
    assert [c.label for c in dataset.scan_labelled(tmp_path, warn=warnings.append)] == ["yes"]
    [warning] = warnings  # directly in the data folder: left out, and said (a .wav there without a label is refused)
    assert warning.startswith(f"warning: 1 audio file(s) under {tmp_path} in a format not read here are left out "
                              f"({tmp_path / 'recording.m4a'}); convert them to WAV")
