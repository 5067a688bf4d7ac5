"""`basilar convert` refuses what it cannot do before it converts, with errors that name the problem and the fix;
untrained tiny models (as tests/bundles.py makes them), so that no test trains."""
import json
import shutil

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from edge.bundle import DEFAULT_BUNDLE, load_bundle, pack_bundle
from firmware_tools.cli import main
from tests.bundles import FSDD_CLIPS
from tests.conftest import require_module

DIGITS = [str(d) for d in range(10)]


def save_model(path, channels=64, classes=11, background_bias=None):
    """An untrained model of the family; background_bias: make the background outweigh every label."""
    import keras

    from firmware_tools.model import ModelSpec, build_window_model

    keras.utils.set_random_seed(0)
    model = build_window_model(ModelSpec(channels=channels, classes=classes, width=8, dilations=(1, 2)))
    if background_bias:
        head = model.get_layer("head")
        kernel, bias = head.get_weights()
        bias[-1] = background_bias
        head.set_weights([kernel * 0, bias])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """model.keras with the sidecar `basilar train` writes (the digits, the default front end)."""
    require_module("tensorflow")
    from firmware_tools import pipeline
    from firmware_tools.training import DEFAULT_FRONTEND

    path = save_model(tmp_path_factory.mktemp("model") / "model.keras")
    pipeline.write_sidecar(path, DIGITS, DEFAULT_FRONTEND, {}, "tiny")
    return path


@pytest.fixture(scope="module")
def bare_model(model):
    """The same model without its sidecar: labels from --labels or the data, the default front end."""
    path = model.parent / "bare" / "model.keras"
    path.parent.mkdir()
    shutil.copy(model, path)
    return path


def convert(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def test_convert_never_replaces_a_file_that_is_not_a_bundle_archive(model, tmp_path):
    precious = tmp_path / "precious.tar.gz"
    precious.write_text("keep me")
    result = convert(model, "--calibration", FSDD_CLIPS, "--out", precious)
    assert result.exit_code == 1 and "already exists and is not a basilar bundle archive" in result.output
    assert "nothing was written" in result.output and precious.read_text() == "keep me"


def test_convert_never_replaces_a_folder_whose_manifest_json_is_another_programs(model, tmp_path):
    """A web app's folder has a manifest.json too: convert took any manifest.json for a bundle's and deleted the
    folder to put the bundle there."""
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text(json.dumps({"name": "My App", "start_url": "/", "files": {}}))
    (webapp / "index.html").write_text("<html></html>")
    before = {path.name: path.read_bytes() for path in webapp.iterdir()}
    result = convert(model, "--calibration", FSDD_CLIPS, "--out", webapp)
    assert result.exit_code == 1, result.output
    assert f"{webapp} already exists and is not a basilar bundle (its manifest.json is another program's: it lacks " \
           "'schema_version', 'frontend', 'models', 'labels', 'quantization')" in result.output
    assert "nothing was written: write the bundle to a new folder" in result.output
    assert {path.name: path.read_bytes() for path in webapp.iterdir()} == before


def test_convert_replaces_a_bundle_archive_and_says_what_its_agreement_clips_are(model, tmp_path):
    """An earlier bundle archive is replaced, as an earlier bundle folder is. 80 clips: 16 are kept out of the
    calibration, but not of the training, and the report says no more than that (not "held-out")."""
    earlier = tmp_path / "earlier.tar.gz"
    pack_bundle(DEFAULT_BUNDLE, earlier)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for clip in FSDD_CLIPS.glob("*.wav"):
        shutil.copy(clip, calibration / clip.name)
        shutil.copy(clip, calibration / clip.name.replace(".wav", "9.wav"))
    result = convert(model, "--calibration", calibration, "--out", earlier)
    assert result.exit_code == 0, result.output
    assert load_bundle(earlier).manifest["name"] == "tiny"
    assert "float vs int8 on 16 clips not used for calibration (they may be training clips)" in result.output
    assert "held-out" not in result.output


def test_convert_warns_of_calibration_audio_it_cannot_read_and_keeps_it_out_of_the_json(model, tmp_path):
    """An .m4a beside the calibration WAVs was left out without a word (`basilar train` and `basilar eval` warn)."""
    calibration = shutil.copytree(FSDD_CLIPS, tmp_path / "calibration")
    (calibration / "3_ann_0.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    result = convert(model, "--calibration", calibration, "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bundle"] == str(tmp_path / "b")
    assert f"warning: 1 audio file(s) under {calibration} in a format not read here are left out " \
           f"({calibration / '3_ann_0.m4a'}); convert them to WAV, e.g. `ffmpeg -i IN.m4a OUT.wav`" in result.stderr


@pytest.mark.parametrize("labels, message", [
    ("0,1,2,3,4,5,6,7,8,_background_", "--labels names _background_, the background class"),
    ("0,0,2,3,4,5,6,7,8,9", "--labels names 0 more than once"),
    ("0,,1,2,3,4,5,6,7,8,9", "--labels '0,,1,2,3,4,5,6,7,8,9' has an empty label"),
    ("0,1,2,3,4,5,6,7,8," + "\u4e5d" * 86, "--labels names " + "\u4e5d" * 20 + "... of 258 bytes in UTF-8; a label may "
     "have 255 at most"),  # it reached a host over the serial line cut to 85 characters
])
def test_convert_refuses_bad_labels_before_converting(bare_model, tmp_path, labels, message):
    """Ten labels for the ten outputs: the bundle's load refused a label twice only after the conversion, leaving
    the broken bundle; the background's name and an empty label (left out) were taken."""
    result = convert(bare_model, "--calibration", FSDD_CLIPS, "--labels", labels, "--out", tmp_path / "b")
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "b").exists()


def test_convert_refuses_labels_that_are_not_the_models_outputs_before_converting(bare_model, tmp_path, monkeypatch):
    from firmware_tools import pipeline

    def never(*args):
        raise AssertionError("converted")

    monkeypatch.setattr(pipeline, "convert_to_int8", never)
    result = convert(bare_model, "--calibration", FSDD_CLIPS, "--labels", "yes,no", "--out", tmp_path / "b")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"{bare_model} has 11 outputs, so it takes 10 labels (its last output is the background), but 2 labels " \
           "were given: yes,no; give --labels the model's labels, in its output order" in result.output
    assert not (tmp_path / "b").exists()


def test_a_conversion_whose_bundle_fails_to_load_leaves_no_bundle(tmp_path, monkeypatch):
    """The step model converts, the bundle is written, and loading it refuses it: nothing broken is left."""
    require_module("tensorflow")
    from edge.bundle import BundleError
    from firmware_tools import dataset, pipeline
    from firmware_tools.training import DEFAULT_FRONTEND

    spec = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())["models"]["step"]["spec"]

    def converted(model_path, frames, step_path):
        shutil.copy(DEFAULT_BUNDLE / "model_step.tflite", step_path)
        return {"spec": spec, "size_bytes": step_path.stat().st_size}

    monkeypatch.setattr(pipeline, "convert_to_int8", converted)
    clips = dataset.scan_labelled(FSDD_CLIPS)[:2]
    with pytest.raises(BundleError):
        pipeline.convert_into_bundle(tmp_path / "m.keras", clips, tmp_path / "b", DEFAULT_FRONTEND, ["0", *DIGITS[:9]],
                                     provenance={})
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_a_threshold_of_0_is_refused_before_converting(model, tmp_path):
    """The detector refuses a threshold of 0 (every hop a word): the option once took it, and the conversion failed
    only at its end, deleting the bundle it was to replace."""
    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "good")
    result = convert(model, "--calibration", FSDD_CLIPS, "--out", tmp_path / "good", "--threshold", "0")
    assert result.exit_code == 2 and "'--threshold': 0.0 is not in the range 0<x<=1" in result.output
    assert load_bundle(tmp_path / "good").id == load_bundle(DEFAULT_BUNDLE).id
    assert "[0<x<=1]" in CliRunner().invoke(main, ["convert", "--help"]).output


def test_a_bundle_that_fails_its_check_leaves_the_earlier_bundle_in_place(model, tmp_path):
    """The new bundle is written and checked beside the earlier one, which it replaces only once it loads: a late
    failure (here a detector setting the bundle's check refuses) once left no bundle at all."""
    from edge.bundle import BundleError
    from firmware_tools.bundler import make_bundle
    from firmware_tools.convert_cmd import run_convert

    earlier = tmp_path / "good"
    shutil.copytree(DEFAULT_BUNDLE, earlier)
    files = {path.name: path.read_bytes() for path in earlier.iterdir()}
    with pytest.raises(BundleError, match=rf"threshold=0.0: must be a number in \(0, 1\].*the new bundle was not "
                                          rf"written, and the earlier bundle at {earlier} is as it was"):
        run_convert(model, FSDD_CLIPS, earlier, detector={"threshold": 0.0})
    assert {path.name: path.read_bytes() for path in earlier.iterdir()} == files
    assert [path.name for path in tmp_path.iterdir()] == ["good"]  # nothing left beside it
    # A bundle that loads replaces it, and what the earlier one held besides goes with it
    (earlier / "notes.txt").write_text("an editor's backup")
    shipped = load_bundle(DEFAULT_BUNDLE)
    made = make_bundle(earlier, DEFAULT_BUNDLE / "model_step.tflite", shipped.frontend_config, shipped.labels,
                       spec=shipped.manifest["models"]["step"]["spec"], name="again")
    assert made.path == earlier and load_bundle(earlier).id == made.id and made.manifest["name"] == "again"
    assert not (earlier / "notes.txt").exists() and [path.name for path in tmp_path.iterdir()] == ["good"]


def corrupt_sidecar(tmp_path, model):
    from firmware_tools.pipeline import sidecar_path

    shutil.copy(model, tmp_path / "m.keras")
    sidecar_path(tmp_path / "m.keras").write_text("{bad json")
    return tmp_path / "m.keras", [f"{tmp_path}/m.keras.basilar.json is not valid JSON", "restore it"]


def bad_frontend(tmp_path, model):
    from firmware_tools.pipeline import sidecar_path

    shutil.copy(model, tmp_path / "m.keras")
    sidecar_path(tmp_path / "m.keras").write_text(json.dumps({"labels": DIGITS, "frontend": {"sample_rate": "x"}}))
    return tmp_path / "m.keras", [f"{tmp_path}/m.keras.basilar.json: its frontend is not a valid front end",
                                  "restore the sidecar"]


def narrow_model(tmp_path, model):
    return save_model(tmp_path / "m.keras", channels=32), [
        "m.keras takes 32 features a frame but the default front end (there is no sidecar", "gives 64"]


def missing_folder(tmp_path, model):
    return model, [f"there is no folder {tmp_path}/deep/er", "mkdir -p"]


def missing_archive_folder(tmp_path, model):
    return model, [f"there is no folder {tmp_path}/nodir"]


def text_file(tmp_path, model):
    (tmp_path / "m.keras").write_text("garbage\n")
    return tmp_path / "m.keras", [f"{tmp_path}/m.keras is not a Keras model file"]


def silent_clip(tmp_path, model):
    shutil.copytree(FSDD_CLIPS, tmp_path / "clips")
    soundfile.write(tmp_path / "clips" / "3_theo_9.wav", np.zeros(4000), 8000)
    return model, ["3_theo_9.wav holds only digital silence"]


def h5_file(tmp_path, model):
    """Refused only by the conversion's worker, after the calibration was read, as "ConversionError: ..."."""
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    return tmp_path / "m.h5", [f"Error: {tmp_path}/m.h5 is not a .keras file", "save it so"]


def saved_model_folder(tmp_path, model):
    (tmp_path / "saved" / "variables").mkdir(parents=True)
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    return tmp_path / "saved", [f"Error: {tmp_path}/saved is not a .keras file"]


def fewer_labels_in_the_data(tmp_path, model):
    """No sidecar, and calibration data of 3 labels for a model of 10: refused only after the conversion, as "the
    model has 11 outputs but there are 3 labels (+1 background)"."""
    shutil.copy(model, tmp_path / "m.keras")
    (tmp_path / "clips").mkdir()
    for clip in FSDD_CLIPS.glob("[012]_*.wav"):
        shutil.copy(clip, tmp_path / "clips" / clip.name)
    return tmp_path / "m.keras", [f"{tmp_path}/m.keras has 11 outputs, so it takes 10 labels (its last output is the "
                                  "background), but 3 labels were given: 0,1,2; those are the labels of the "
                                  "calibration data", "give --labels the model's labels"]


def fewer_labels_in_the_sidecar(tmp_path, model):
    from firmware_tools import pipeline
    from firmware_tools.training import DEFAULT_FRONTEND

    pipeline.write_sidecar(save_model(tmp_path / "m.keras", classes=4), DIGITS, DEFAULT_FRONTEND, {})
    return tmp_path / "m.keras", ["m.keras has 4 outputs, so it takes 3 labels", "but 10 labels were given",
                                  f"restore the sidecar {tmp_path}/m.keras.basilar.json"]


@pytest.mark.parametrize("case, out", [(corrupt_sidecar, "b"), (bad_frontend, "b"), (narrow_model, "b"),
                                       (missing_folder, "deep/er/b"), (missing_archive_folder, "nodir/b.tar.gz"),
                                       (text_file, "b"), (silent_clip, "b"), (h5_file, "b"),
                                       (saved_model_folder, "b"), (fewer_labels_in_the_data, "b"),
                                       (fewer_labels_in_the_sidecar, "b")])
def test_convert_errors_name_the_problem_and_the_fix_before_converting(model, tmp_path, case, out):
    model_path, messages = case(tmp_path, model)
    calibration = tmp_path / "clips" if (tmp_path / "clips").is_dir() else FSDD_CLIPS
    result = convert(model_path, "--calibration", calibration, "--out", tmp_path / out)
    assert result.exit_code == 1, result.output
    for message in messages:
        assert message in result.output
    assert not (tmp_path / out).exists()


def test_eval_of_a_one_label_bundle_weighs_the_background(tmp_path):
    """With one label, a clip is it only where its posterior outweighs the background's: a model that hears only
    background misses every clip, where an argmax over the one label said 100%."""
    require_module("tensorflow")
    model = save_model(tmp_path / "deaf.keras", classes=2, background_bias=8.0)
    words = tmp_path / "words" / "yes"
    words.mkdir(parents=True)
    for clip in sorted(FSDD_CLIPS.glob("1_*.wav")):
        shutil.copy(clip, words / clip.name.replace("1_", "yes_", 1))
    result = convert(model, "--calibration", words.parent, "--labels", "yes", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "b"), str(words.parent), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["accuracy"] == 0 and report["recall"] == {"yes": 0.0} and report["missed"] == 4
    assert report["predicted"] == [None] * 4
    text = CliRunner().invoke(main, ["eval", str(tmp_path / "b"), str(words.parent)]).output
    assert "accuracy: 0.0%" in text and "named 'yes': 0 of 4; 4 heard as background (missed)" in text
