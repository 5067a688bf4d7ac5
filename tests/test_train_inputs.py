"""What `basilar train` and `basilar eval` make of their inputs, checked before anything trains (real WAV files and
the real CLI, tiny settings)."""
import json
import shutil

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from edge.bundle import DEFAULT_BUNDLE
from firmware_tools import training
from firmware_tools.cli import main
from tests.bundles import FSDD_CLIPS
from tests.conftest import require_module
from tests.test_train_cli import TINY, write_clips

TINY_SETTINGS = training.TrainSettings(epochs=1, width=8, copies_per_clip=1, synth_digits=0, flite_digits=0,
                                       synth_non_target=0, flite_non_target=0, background_examples=20)


def train(data, out, *options):
    return CliRunner().invoke(main, ["train", str(data), "--out", str(out), *TINY, *options])


def nothing_in(folder):
    return not folder.exists() or not any(folder.iterdir())


def test_a_held_out_clip_that_cannot_be_used_stops_the_run_before_it_trains(tmp_path):
    """A held-out clip was first read after the whole training, to score it: the run then failed with no model
    report, hours later."""
    require_module("tensorflow")
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "no/no_bob_0.wav", "yes/yes_alice_0.wav",
                                           "yes/yes_bob_0.wav"], silent=["yes/yes_bob_0.wav"])
    result = train(data, tmp_path / "o", "--holdout", "bob", "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 1, result.output
    assert "yes_bob_0.wav holds only digital silence (every sample 0), no 'yes'" in result.output
    assert "training on" not in result.output and not (tmp_path / "o" / "model.keras").exists()
    assert nothing_in(tmp_path / "cache")  # not even the features were built


def test_loso_reads_every_clip_before_the_first_fold_trains(tmp_path):
    """alice's fold trains first and scores her clips last: her silent clip stopped --loso after a fold's training."""
    require_module("tensorflow")
    names = [f"{label}/{label}_{speaker}_0.wav" for label in ("no", "yes") for speaker in ("alice", "bob", "carol")]
    data = write_clips(tmp_path / "data", names, silent=["yes/yes_alice_0.wav"])
    result = train(data, tmp_path / "o", "--holdout", "none", "--loso", "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 1, result.output
    assert "yes_alice_0.wav holds only digital silence" in result.output and "held out" not in result.output
    assert nothing_in(tmp_path / "cache")
    # leave_one_speaker_out alone reads them all first too; with the clip mended, every fold is scored
    with pytest.raises(ValueError, match="yes_alice_0.wav holds only digital silence"):
        training.leave_one_speaker_out(data, TINY_SETTINGS, tmp_path / "cache", log=lambda text: None)
    assert nothing_in(tmp_path / "cache")
    write_clips(data, ["yes/yes_alice_0.wav"])
    folds = training.leave_one_speaker_out(data, TINY_SETTINGS, tmp_path / "cache", log=lambda text: None)["folds"]
    assert {speaker: fold["clips"] for speaker, fold in folds.items()} == {"alice": 2, "bob": 2, "carol": 2}


@pytest.mark.parametrize("out", ["run", "."])
def test_an_out_folder_in_the_data_folder_is_not_read_as_data(tmp_path, out):
    """A second run read the first's OUT/morphs as clips of a label "run" (or "morphs" with --out DATA_DIR), which
    also turned off the synthesized digits; the --cache-dir there would be a folder of no audio."""
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav", "yes/yes_bob_0.wav"])
    earlier = data / out
    write_clips(earlier / "morphs", ["yes_morph_0.wav"])  # what --morphs wrote there
    shutil.copytree(DEFAULT_BUNDLE, earlier / "bundle")
    (earlier / "report.json").write_text("{}\n")
    (data / "cache").mkdir()
    (data / "cache" / "examples-0.npz").write_bytes(b"features")
    result = train(data, earlier, "--holdout", "alice", "--cache-dir", str(data / "cache"))
    assert result.exit_code == 1, result.output  # refused right after the scan: alice said every "no"
    assert "3 clips, labels ['no', 'yes'], speakers ['alice', 'bob']" in result.output
    assert "holding out alice leaves no clip of 'no'" in result.output


@pytest.mark.parametrize("option, folder", [("--out", "no"), ("--out", "no/model"), ("--cache-dir", "no"),
                                            ("--out", "linked/model")])
def test_an_out_or_cache_folder_in_a_label_folder_is_refused_before_anything_trains(tmp_path, option, folder):
    """The scan passed it by, and the label's clips in it with it: `--out data/no` trained a model without 'no'."""
    data = write_clips(tmp_path / "data", ["no/no_alice_0.wav", "yes/yes_alice_0.wav", "yes/yes_bob_0.wav"])
    write_clips(tmp_path / "elsewhere", ["linked_alice_0.wav"])
    (data / "linked").symlink_to(tmp_path / "elsewhere")  # a label folder that is a link: where it leads counts
    given = tmp_path / "elsewhere" / "model" if folder.startswith("linked") else data / folder
    label = folder.split("/")[0]
    others = {"--out": ["--cache-dir", str(tmp_path / "cache")], "--cache-dir": ["--cache-dir", str(given)]}
    result = train(data, tmp_path / "o" if option == "--cache-dir" else given, *others[option])
    assert result.exit_code == 1, result.output
    where = "is the label folder" if folder == label else "is inside the label folder"
    assert f"{option} {given} {where} {data / label}: the scan passes {option} by, so the '{label}' clips in it " \
           "would be left out of training" in result.output
    assert f"outside the label folders: beside {data}, or a new one in it" in result.output
    assert "clips, labels" not in result.output and "Traceback" not in result.output
    assert not (data / "no" / "model").exists() and not (tmp_path / "elsewhere" / "model").exists()
    assert nothing_in(tmp_path / "cache") and not (tmp_path / "o").exists()


def test_holdout_names_a_speaker_in_either_unicode_form(tmp_path):
    """Speakers are compared in NFC; `--holdout müller` typed on a Mac (u and a combining mark) was not among them."""
    nfc, nfd = "m\u00fcller", "mu\u0308ller"
    assert training.holdout_speakers(nfd, [nfc, "theo"]) == [nfc]
    data = write_clips(tmp_path / "data", [f"no/no_{nfc}_0.wav", f"yes/yes_{nfc}_0.wav", "yes/yes_theo_0.wav"])
    result = train(data, tmp_path / "o", "--holdout", nfd)
    assert result.exit_code == 1, result.output
    assert f"holding out {nfc} leaves no clip of 'no' to train on" in result.output  # taken, then checked


def test_eval_refuses_a_label_folder_that_is_a_link_to_nothing(tmp_path):
    """The link's label disappeared from the evaluation (and from training) without a word."""
    for clip in FSDD_CLIPS.glob("1_*.wav"):
        shutil.copy(clip, tmp_path)
    (tmp_path / "2").symlink_to(tmp_path.parent / "moved-away")
    result = CliRunner().invoke(main, ["eval", "default", str(tmp_path)])
    assert result.exit_code == 1 and f"{tmp_path / '2'} is a link to nothing" in result.output


def test_eval_warns_of_audio_it_cannot_read_and_keeps_it_out_of_the_json(tmp_path):
    for clip in FSDD_CLIPS.glob("1_*.wav"):
        shutil.copy(clip, tmp_path)
    (tmp_path / "1_ann_0.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    result = CliRunner().invoke(main, ["eval", "default", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clips"] == 4
    assert "warning: 1 audio file(s)" in result.stderr and "1_ann_0.m4a" in result.stderr
    assert "ffmpeg -i IN.m4a OUT.wav" in result.stderr


def test_train_refuses_a_label_folder_of_audio_it_cannot_read(tmp_path):
    """`no/*.m4a` disappeared: the training logged labels ['yes'] and trained a one-label model."""
    data = write_clips(tmp_path / "data", ["yes/yes_a_0.wav", "yes/yes_b_0.wav"])
    (data / "no").mkdir()
    for name in ("no_a_0.m4a", "no_b_0.aac"):
        (data / "no" / name).write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    result = train(data, tmp_path / "o")
    assert result.exit_code == 1, result.output
    assert f"{data / 'no'} holds no audio file that can be read here (only .aac, .m4a: no_a_0.m4a, ...)" \
        in result.output
    assert "`ffmpeg -i IN.m4a OUT.wav`" in result.output and "labels" not in result.output
    assert not (tmp_path / "o" / "model.keras").exists()


def test_a_stereo_clip_whose_channels_cancel_is_named_for_that(tmp_path):
    """It was refused as "digital silence (every sample 0)", though no sample is 0."""
    stereo = np.zeros((800, 2), np.int16)
    stereo[:, 0], stereo[:, 1] = 3000, -3000
    soundfile.write(tmp_path / "1_ann_0.wav", stereo, 8000)
    result = CliRunner().invoke(main, ["eval", "default", str(tmp_path)])
    assert result.exit_code == 1
    assert "1_ann_0.wav: its 2 channels cancel when averaged to mono" in result.output
    assert "every sample 0" not in result.output and "remix 1" in result.output

