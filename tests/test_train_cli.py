"""`basilar train`, `convert`, `eval` and `bundle` end to end on real clips (tiny settings, so it stays fast)."""
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edge.bundle import load_bundle
from firmware_tools.cli import main
from tests.bundles import FSDD_CLIPS
from tests.conftest import recorded_phrases, require_module, require_program


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    require_module("tensorflow")
    require_program("espeak-ng")
    require_program("flite")
    out = tmp_path_factory.mktemp("train") / "out"
    recorded_phrases(out.parent / "speech", ["where did you put the keys", "good morning"])
    result = CliRunner().invoke(main, [
        "train", str(FSDD_CLIPS), "--out", str(out), "--epochs", "2", "--width", "8", "--copies", "1",
        "--background-examples", "40", "--synth-digits", "20", "--synth-speech", "10", "--flite-digits", "10",
        "--flite-speech", "5", "--holdout", "theo,yweweler", "--threshold", "0.7", "--name", "my-digits",
        "--ensemble", "2", "--cache-dir", str(out.parent / "cache"),
        "--speech-dir", str(out.parent / "speech"), "--speech-credit", "Two phrases recorded by espeak-ng, CC0"])
    assert result.exit_code == 0, result.output
    assert "no author or license" not in result.output  # FSDD's clips come with their attribution
    return out


def test_train_writes_model_bundle_and_report(trained):
    assert (trained / "model.keras").is_file()
    report = json.loads((trained / "report.json").read_text())
    assert report["holdout"] == "theo,yweweler"
    assert (report["settings"]["flite_digits"], report["settings"]["flite_non_target"]) == (10, 5)
    assert report["settings"]["sound_events"] is True  # the default recipe (9) hears synthesized sounds
    held = report["heldout_int8"]
    assert held["clips"] == 20
    assert set(held["recall"]) == {str(d) for d in range(10)}
    # each held-out speaker's own figures, and the pooled ones are their sum
    assert {s: r["clips"] for s, r in held["by_speaker"].items()} == {"theo": 10, "yweweler": 10}
    theo, yweweler = (np.array(r["confusion"]) for r in held["by_speaker"].values())
    assert (theo + yweweler).tolist() == held["confusion"]
    assert theo.sum(axis=1).tolist() == [1] * 10  # one clip of each digit per speaker
    text = (trained / "report.txt").read_text()
    assert "int8 bundle on held-out speakers theo,yweweler:" in text and "by speaker: theo " in text
    assert 0 <= report["float_vs_int8"]["agreement"] <= 1
    bundle = load_bundle(trained / "bundle")
    assert bundle.labels == [str(d) for d in range(10)]
    assert bundle.manifest["models"]["step"]["spec"]["branches"] == 2  # --ensemble 2: one network, two models
    # --threshold: the detector default of a bundle for other words than the digits it was tuned on
    assert bundle.manifest["detector"]["threshold"] == 0.7 and bundle.manifest["detector"]["smoothing_ms"] == 150
    attribution = (trained / "bundle" / "ATTRIBUTION.md").read_text()
    assert "CC BY-SA 4.0" in attribution
    assert "- recorded speech: Two phrases recorded by espeak-ng, CC0" in attribution  # --speech-dir's credit
    assert "leave" not in (trained / "report.txt").read_text()  # no --loso, no LOSO section


def test_convert_to_archive_and_eval(trained, tmp_path):
    archive = tmp_path / "model.tar.gz"
    result = CliRunner().invoke(main, ["convert", str(trained / "model.keras"), "--calibration", str(FSDD_CLIPS),
                                       "--out", str(archive), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["labels"] == [str(d) for d in range(10)]
    assert load_bundle(archive).id == report["bundle_id"]
    assert load_bundle(archive).manifest["name"] == "my-digits"  # the name given to `basilar train`, kept
    # 40 clips all go to calibration: the agreement is measured on them, and is labelled so (not "held-out")
    assert report["float_vs_int8"]["on"].startswith("calibration clips") and report["float_vs_int8"]["clips"] == 40
    result = CliRunner().invoke(main, ["eval", str(archive), str(FSDD_CLIPS), "--json"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.output.strip().splitlines()[-1])
    assert evaluation["clips"] == 40 and 0 <= evaluation["accuracy"] <= 1
    assert evaluation["noise_floor_dbfs"] is None
    found = evaluation["detected"]
    assert 0 <= found["clips"] + found["only_as_another_label"] <= 40 and found["fraction"] == found["clips"] / 40
    # A threshold no score reaches: the model still names the clips as before, the detector reports none of them
    deaf = tmp_path / "deaf.tar.gz"
    assert CliRunner().invoke(main, ["convert", str(trained / "model.keras"), "--calibration", str(FSDD_CLIPS),
                                     "--out", str(deaf), "--threshold", "1"]).exit_code == 0
    result = CliRunner().invoke(main, ["eval", str(deaf), str(FSDD_CLIPS)])
    assert result.exit_code == 0, result.output
    assert f"accuracy: {evaluation['accuracy'] * 100:.1f}%" in result.output
    assert "detected at the bundle's detector settings (as `basilar run` reports words): 0 of 40 (0.0%)" \
        in result.output
    result = CliRunner().invoke(main, ["eval", str(archive), str(FSDD_CLIPS), "--noise-floor", "-60"])
    assert result.exit_code == 0, result.output
    assert "clips: 40" in result.output and "(over a -60 dBFS noise floor)" in result.output
    result = CliRunner().invoke(main, ["eval", str(archive), str(FSDD_CLIPS), "--noise-floor", "6"])
    assert result.exit_code == 2 and "--noise-floor" in result.output


def test_convert_replaces_an_earlier_bundle_but_never_a_folder_of_other_things(trained, tmp_path):
    convert = ["convert", str(trained / "model.keras"), "--calibration", str(FSDD_CLIPS), "--out"]
    shutil.copytree(trained / "bundle", tmp_path / "earlier")
    result = CliRunner().invoke(main, [*convert, str(tmp_path / "earlier")])
    assert result.exit_code == 0, result.output
    load_bundle(tmp_path / "earlier")
    (tmp_path / "precious" / "sub").mkdir(parents=True)
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, [*convert, str(tmp_path / "precious")])
    assert result.exit_code == 1 and "already exists and is not a basilar bundle" in result.output
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me" and (tmp_path / "precious" / "sub").is_dir()


def test_convert_refuses_labels_in_another_order_than_the_model_was_trained_with(trained, tmp_path):
    reversed_labels = ",".join(str(d) for d in reversed(range(10)))
    result = CliRunner().invoke(main, ["convert", str(trained / "model.keras"), "--calibration", str(FSDD_CLIPS),
                                       "--labels", reversed_labels, "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "differ from the labels" in result.output and "0,1,2,3" in result.output
    assert not (tmp_path / "b").exists()


def test_bundle_inspect_and_verify(trained, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["bundle", "inspect", str(trained / "bundle")])
    assert result.exit_code == 0 and "labels     0, 1, 2" in result.output
    assert "2 models averaged" in result.output
    result = runner.invoke(main, ["bundle", "verify", str(trained / "bundle")])
    assert result.exit_code == 0 and "one inference ran" in result.output
    broken = tmp_path / "broken"
    shutil.copytree(trained / "bundle", broken)
    (broken / "model_step.tflite").write_bytes(b"garbage")
    result = runner.invoke(main, ["bundle", "verify", str(broken)])
    assert result.exit_code == 1 and "corrupt" in result.output


def test_train_refuses_a_threshold_of_0_before_it_trains(tmp_path):
    """A threshold of 0, which the bundle's detector refuses, was taken and failed only after the whole training,
    deleting the bundle of an earlier run in OUT."""
    from edge.bundle import DEFAULT_BUNDLE

    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "o" / "bundle")
    result = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(tmp_path / "o"), *TINY, "--holdout",
                                       "none", "--cache-dir", str(tmp_path / "cache"), "--threshold", "0"])
    assert result.exit_code == 2 and "'--threshold': 0.0 is not in the range 0<x<=1" in result.output
    assert load_bundle(tmp_path / "o" / "bundle").id == load_bundle(DEFAULT_BUNDLE).id
    assert sorted(path.name for path in (tmp_path / "o").iterdir()) == ["bundle"]


def test_train_on_a_missing_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no labelled audio" in result.output


def test_holdout_names_one_speaker_several_or_none():
    from firmware_tools.training import holdout_speakers

    speakers = ["jackson", "nicolas", "theo", "yweweler"]
    assert holdout_speakers("auto", speakers) == ["yweweler"]
    assert holdout_speakers("auto", ["theo"]) == []
    assert holdout_speakers("none", speakers) == []
    assert holdout_speakers("theo", speakers) == ["theo"]
    assert holdout_speakers("theo, jackson", speakers) == ["jackson", "theo"]
    with pytest.raises(ValueError, match="leaves none to train on"):
        holdout_speakers("jackson,nicolas,theo,yweweler", speakers)
    with pytest.raises(ValueError, match="names no speaker"):
        holdout_speakers(" , ", speakers)


def test_train_holding_out_an_unknown_speaker_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(tmp_path / "o"),
                                       "--holdout", "theo,george"])
    assert result.exit_code == 1
    assert "george is not among the speakers found: jackson, nicolas, theo, yweweler" in result.output
    assert not (tmp_path / "o" / "model.keras").exists()


def test_train_with_a_listing_that_names_a_missing_recording_is_a_clear_error(tmp_path):
    require_module("tensorflow")
    (tmp_path / "speech").mkdir()
    (tmp_path / "list.txt").write_text("; the listing of another folder\nhello: Hello.\n")
    result = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(tmp_path / "o"),
                                       "--speech-dir", str(tmp_path / "speech"), "--speech-list",
                                       str(tmp_path / "list.txt"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "list.txt line 2: no recording" in result.output and "is --speech-dir the folder" in result.output
    assert not (tmp_path / "o" / "model.keras").exists()


@pytest.mark.parametrize("option, value", [("--speech-list", "list.txt"), ("--speech-credit", "someone, CC0")])
def test_train_refuses_a_speech_option_without_the_recordings_it_describes(tmp_path, option, value):
    (tmp_path / "list.txt").write_text("hello: Hello.\n")
    if option == "--speech-list":
        value = str(tmp_path / value)
    result = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(tmp_path / "o"), option, value])
    assert result.exit_code == 2 and "give --speech-dir too" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_gives_no_recall_for_a_label_without_clips(tmp_path):
    for clip in FSDD_CLIPS.glob("1_*.wav"):
        shutil.copy(clip, tmp_path)
    result = CliRunner().invoke(main, ["eval", "default", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    recall = json.loads(result.output)["recall"]
    assert recall["1"] is not None and recall["0"] is None and sum(v is None for v in recall.values()) == 9
    text = CliRunner().invoke(main, ["eval", "default", str(tmp_path)]).output
    assert "           0:   n/a (no clips)" in text and "n/a" not in text.split("           1:")[1].splitlines()[0]


def test_train_refuses_a_holdout_that_takes_a_whole_label_away(tmp_path):
    """`no/no_take_3.wav` names a speaker "take" who said every "no": held out, "no" would have nothing to train on
    (and the report would show the held-out "no"s at 100%)."""
    import soundfile

    for name in ("glass_break/glass_break_alice_0.wav", "glass_break/glass_break_bob_0.wav", "no/no_take_1.wav",
                 "no/no_take_2.wav"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(tmp_path / "data" / name, np.full(800, 0.1), 8000)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--epochs", "1",
                                       "--width", "8", "--copies", "1", "--background-examples", "20",
                                       "--synth-speech", "0", "--flite-speech", "0",
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "speakers ['alice', 'bob', 'take']; holding out: take" in result.output
    assert "holding out take leaves no clip of 'no' to train on" in result.output
    assert "ATTRIBUTION.md will name no author or license" in result.output  # own clips, no --data-credit
    assert not (tmp_path / "o" / "model.keras").exists()


def test_train_warns_of_clips_longer_than_a_training_example_holds_whole(tmp_path):
    """A clip is learnt as a word ending where the clip ends: a 2 s recording of a short word is mostly silence
    learnt as the word, and one of a long sound loses its start. Said before the long steps (here the holdout is
    refused right after)."""
    import soundfile

    lengths = {"yes/yes_alice_0.wav": 0.5, "yes/yes_bob_0.wav": 2.0, "yes/yes_bob_1.wav": 1.5,
               "no/no_take_1.wav": 0.5}
    for name, seconds in lengths.items():
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(tmp_path / "data" / name, np.full(int(seconds * 8000), 0.1), 8000)
    (tmp_path / "data" / "no" / "no_take_2.wav").write_bytes(b"not audio")  # its own error comes when it is read
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    data = tmp_path / "data"
    assert (f"warning: 2 of 5 labelled clips last longer than 1.04 s (the longest: {data / 'yes' / 'yes_bob_0.wav'}, "
            "2.00 s)") in result.output
    assert "Trim each clip to its sound" in result.output and "holding out take leaves no clip" in result.output
    short = CliRunner().invoke(main, ["train", str(FSDD_CLIPS), "--out", str(tmp_path / "o"), "--holdout", "george"])
    assert short.exit_code == 1 and "longer than" not in short.output  # the FSDD clips in the repo are all shorter


def test_train_on_other_words_than_digits_claims_no_synthesized_digits(tmp_path):
    """The recipe synthesizes digits only for digit labels; report.json said 600 and 1,200 for any labels."""
    require_module("tensorflow")
    require_program("espeak-ng")
    for digit, word in (("0", "no"), ("1", "yes")):
        (tmp_path / "data" / word).mkdir(parents=True)
        for clip in sorted(FSDD_CLIPS.glob(f"{digit}_*.wav")):
            shutil.copy(clip, tmp_path / "data" / word / clip.name.replace(digit, word, 1))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1", "--width",
                                       "8", "--copies", "1", "--background-examples", "20", "--synth-speech", "5",
                                       "--flite-speech", "0", "--holdout", "none", "--cache-dir", str(tmp_path / "c"),
                                       "--data-credit", "Recorded by Erin Doe, CC BY 4.0.", "--no-sound-events"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == ["no", "yes"]
    assert (report["settings"]["synth_digits"], report["settings"]["flite_digits"]) == (0, 0)
    assert report["settings"]["sound_events"] is False  # recipe 8's backgrounds, and its attribution says so:
    assert "; noise synthesized with numpy." in (out / "bundle" / "ATTRIBUTION.md").read_text()
    # the user's credit heads the attribution shipped with their bundle, so no warning that it is missing
    attribution = (out / "bundle" / "ATTRIBUTION.md").read_text()
    assert attribution.startswith("# Attribution\n\nRecorded by Erin Doe, CC BY 4.0.\n")
    assert "no author or license" not in result.output


def test_train_refuses_a_front_end_that_is_poor_to_design_with_before_it_trains(tmp_path):
    from edge.frontend import FrontendConfig
    from firmware_tools.training import TrainSettings, run_training

    settings = TrainSettings(frontend=FrontendConfig(sample_rate=48000, f_low=20.0, f_high=20000.0))
    with pytest.raises(ValueError, match="front end: f_low=20.0 Hz: at sample_rate=48000 use at least 30 Hz"):
        run_training(FSDD_CLIPS, tmp_path / "out", settings=settings)
    assert not (tmp_path / "out").exists()


TINY = ["--epochs", "1", "--width", "8", "--synth-digits", "0", "--synth-speech", "0", "--flite-digits", "0",
        "--flite-speech", "0", "--copies", "1", "--background-examples", "20"]


def write_clips(folder, names, silent=()):
    """Short clips (a steady tone level, or digital silence for the names in `silent`) at folder/NAME."""
    import soundfile

    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / name, np.zeros(800) if name in silent else np.full(800, 0.1), 8000)
    return folder


def test_train_refuses_a_clip_of_digital_silence(tmp_path):
    """An all-zero clip would be trained on as its label, and scored as if it said it."""
    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "no/no_bob_0.wav", "yes/yes_alice_0.wav",
                                           "yes/yes_bob_0.wav"], silent=["yes/yes_bob_0.wav"])
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), *TINY, "--holdout", "none",
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "yes_bob_0.wav holds only digital silence (every sample 0), no 'yes'" in result.output
    assert not (tmp_path / "o" / "model.keras").exists()


def test_eval_refuses_a_clip_of_digital_silence(tmp_path):
    clips = write_clips(tmp_path / "eval", ["1_theo_9.wav"], silent=["1_theo_9.wav"])
    shutil.copy(FSDD_CLIPS / "1_theo_0.wav", clips)
    result = CliRunner().invoke(main, ["eval", "default", str(clips)])
    assert result.exit_code == 1 and "1_theo_9.wav holds only digital silence" in result.output


def test_loso_checks_every_fold_before_it_trains_one(tmp_path):
    """Only bob said "no": the fold without bob cannot train, and that is said before the fold of alice trains (which
    can take hours), advising what can fix it: not --holdout, which --loso does not use."""
    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_bob_0.wav", "no/no_bob_1.wav", "yes/yes_alice_0.wav",
                                           "yes/yes_bob_0.wav", "yes/yes_carol_0.wav"])
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), *TINY, "--holdout", "none",
                                       "--loso", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "--loso holds out each speaker in turn: holding out bob leaves no clip of 'no' to train on" in result.output
    assert "leave out --loso" in result.output and "--holdout" not in result.output.split("Error:")[1]
    assert "held out alice" not in result.output  # no fold trained first
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("option", ["--out", "--cache-dir"])
def test_train_refuses_a_file_for_a_folder_before_the_long_steps(tmp_path, option):
    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav"])
    (tmp_path / "afile").write_text("mine\n")
    folders = {"--out": str(tmp_path / "o"), "--cache-dir": str(tmp_path / "cache"), option: str(tmp_path / "afile")}
    result = CliRunner().invoke(main, ["train", str(data), *TINY, "--holdout", "none",
                                       *(arg for item in folders.items() for arg in item)])
    assert result.exit_code == 1, result.output
    assert f"{option} {tmp_path / 'afile'} is a file, not a folder; choose a folder for {option}" in result.output
    assert "training on" not in result.output  # refused before the features were built
    assert (tmp_path / "afile").read_text() == "mine\n"
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()  # both checked before either is made


def test_train_refuses_an_out_folder_it_cannot_create(tmp_path):
    require_module("tensorflow")
    (tmp_path / "afile").write_text("mine\n")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav"])
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "afile" / "o"), *TINY])
    assert result.exit_code == 1, result.output
    assert f"--out {tmp_path / 'afile' / 'o'}: cannot create the folder" in result.output
    assert "choose a folder you can write to for --out" in result.output


def test_a_one_label_clip_counts_only_where_the_label_outweighs_the_background():
    from firmware_tools.evaluate import format_report
    from firmware_tools.training import MISSED, clip_decision, clip_report, reports_by_speaker

    heard, background = np.array([[0.9], [0.8], [0.1]]), np.array([[0.1], [0.3], [0.2]])
    assert clip_decision(heard) == 0 and clip_decision(background) == MISSED
    report = clip_report(["yes"], [0, 0, 0], [0, MISSED, MISSED])
    assert report["accuracy"] == pytest.approx(1 / 3) and report["recall"] == {"yes": pytest.approx(1 / 3)}
    assert report["missed"] == 2 and report["confusion"] == [[1]]
    assert "named 'yes': 1 of 3; 2 heard as background (missed)" in format_report(report)

    class Clip:
        def __init__(self, speaker):
            self.label, self.speaker = "yes", speaker

    by_speaker = reports_by_speaker(["yes"], [Clip("a"), Clip("b")], ["yes", None])
    assert by_speaker["a"]["accuracy"] == 1 and by_speaker["b"]["missed"] == 1
    # Two labels or more: the argmax over the labels alone, as before (the background is not weighed)
    assert clip_decision(np.array([[0.1, 0.2], [0.1, 0.1]])) == 1
    two = clip_report(["a", "b"], [0, 1, 1], [0, 0, 1])
    assert "missed" not in two and two["recall"] == {"a": 1.0, "b": 0.5} and two["confusion"] == [[1, 0], [1, 1]]


def test_train_rebuilds_a_feature_cache_left_half_written(tmp_path, monkeypatch):
    """A Ctrl-C or a full disk while the cache was saved left a truncated examples-*.npz under its name, and every
    later run with those settings failed reading it ("EOF: reading array data", BadZipFile)."""
    from firmware_tools import training

    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav"])

    def disk_full(*args, **kwargs):  # stops each run after its features, before the (slow) fit
        raise OSError("No space left on device")

    monkeypatch.setattr(training, "fit", disk_full)
    train = ["train", str(data), "--out", str(tmp_path / "o"), *TINY, "--holdout", "none", "--cache-dir",
             str(tmp_path / "cache")]
    assert "No space left on device" in CliRunner().invoke(main, train).output
    [cache] = (tmp_path / "cache").iterdir()  # only the finished file: nothing of the writing is left beside it
    assert cache.name.startswith("examples-") and cache.suffix == ".npz"
    whole = cache.read_bytes()
    cache.write_bytes(whole[:len(whole) // 2])
    result = CliRunner().invoke(main, train)
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert f"basilar: warning: the feature cache {cache} is damaged" in result.output
    assert "rebuilding it" in result.output
    with np.load(cache) as rebuilt:  # and written whole again
        assert rebuilt["frames"].shape[0] == 2 + 20


def test_a_failed_retrain_leaves_no_report_of_the_earlier_model(tmp_path, monkeypatch):
    """The earlier run's report.json and report.txt stayed beside the new model.keras while the conversion and the
    held-out evaluation ran (minutes), and for good where either failed or was stopped."""
    from firmware_tools import pipeline

    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav"])
    out = tmp_path / "o"
    out.mkdir()
    for report in ("report.json", "report.txt"):
        (out / report).write_text("the earlier model's report\n")

    def conversion_fails(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pipeline, "convert_into_bundle", conversion_fails)
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(out), *TINY, "--holdout", "none",
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    assert (out / "model.keras").is_file()
    assert not (out / "report.json").exists() and not (out / "report.txt").exists()


def test_a_bundle_trained_on_fsdd_recordings_among_the_users_own_credits_both(tmp_path, monkeypatch):
    """FSDD's CC BY-SA attribution was dropped as soon as its clips were sorted into label folders or joined by one
    clip of the user's: the bundle, a derivative of FSDD's recordings, named neither FSDD nor its license."""
    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["one/one_erin_0.wav", "zero/zero_erin_0.wav"])
    for digit, word in enumerate(("zero", "one")):
        shutil.copy(FSDD_CLIPS / f"{digit}_theo_0.wav", data / word)
    train = ["train", str(data), "--out", str(tmp_path / "o"), *TINY, "--cache-dir", str(tmp_path / "cache")]
    from firmware_tools import training

    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: sys.exit(1))  # no need to train for the warning
    uncredited = CliRunner().invoke(main, [*train, "--holdout", "none"])
    monkeypatch.undo()
    assert (f"warning: the bundle's ATTRIBUTION.md will name no author or license for the 2 clips of {data} not "
            "FSDD's") in uncredited.output
    result = CliRunner().invoke(main, [*train, "--holdout", "none", "--data-credit", "Recorded by Erin Doe, CC0."])
    assert result.exit_code == 0, result.output
    assert "no author or license" not in result.output
    attribution = (tmp_path / "o" / "bundle" / "ATTRIBUTION.md").read_text()
    assert "Free Spoken Digit Dataset by Zohar Jackson and contributors" in attribution
    assert "CC BY-SA 4.0" in attribution
    assert "shared under the same license. Recorded by Erin Doe, CC0." in attribution
    assert "- training data: data, with 2 recordings from the Free Spoken Digit Dataset" in attribution  # its name


def test_train_warns_of_speech_recordings_without_their_credit(tmp_path, monkeypatch):
    """--speech-dir without --speech-credit put "recordings from DIR" in ATTRIBUTION.md without a word; make_demo
    warned of the same. (With the credit, no warning: the `trained` fixture.)"""
    from firmware_tools import training

    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav"])
    speech = write_clips(tmp_path / "speech", ["hello.wav"])
    monkeypatch.setattr(training, "fit", lambda *args, **kwargs: sys.exit(1))  # no need to train for the warning
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "o"), *TINY, "--holdout", "none",
                                       "--cache-dir", str(tmp_path / "cache"), "--speech-dir", str(speech),
                                       "--data-credit", "Recorded by Erin Doe, CC0."])
    assert (f"warning: the bundle's ATTRIBUTION.md will name no author or license for the recordings in {speech}; "
            "give them with --speech-credit before sharing the bundle") in result.output
