"""`basilar convert MODEL --calibration DATA_DIR --out BUNDLE`: Keras model -> int8 streaming bundle."""
import json
from pathlib import Path

import click

from firmware_tools.cli_errors import fail_on, require_extra
from firmware_tools.cli_types import FloatRange


def bundle_detector_options(command):
    """The detector defaults a new bundle's manifest records (`basilar convert`, `basilar train`)."""
    for option in reversed([
        # Not 0, which the bundle's detector refuses: said now, not after the conversion (or the training)
        click.option("--threshold", type=FloatRange(0, 1, min_open=True), help="The bundle's default detection "
                     "threshold [default: 0.92, tuned on the spoken digits: for other words tune it with `basilar "
                     "eval-stream BUNDLE AUDIO --truth T.csv --threshold T` on recordings of them, then convert "
                     "again]."),
        click.option("--smoothing-ms", type=FloatRange(0, 2000),
                     help="The bundle's default posterior smoothing [default: 150]."),
        click.option("--refractory-ms", type=FloatRange(0, 10000),
                     help="The bundle's default refractory time [default: 400]."),
    ]):
        command = option(command)
    return command


def bundle_detector(threshold, smoothing_ms, refractory_ms) -> dict:
    """The options given, as the manifest's detector overrides."""
    return {k: v for k, v in (("threshold", threshold), ("smoothing_ms", smoothing_ms),
                              ("refractory_ms", refractory_ms)) if v is not None}


@click.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--calibration", "calibration_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled WAVs: some calibrate the int8 ranges, the rest measure float vs int8 agreement.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Bundle directory to write, or a .tar.gz to write a bundle archive.")
@click.option("--labels", help="Comma-separated labels in model output order (default: from MODEL's "
              "sidecar written by `basilar train`, else the sorted labels of the calibration data).")
@click.option("--name", help="Bundle name recorded in the manifest [default: the one given to `basilar train`, "
                             "from MODEL's sidecar, else 'model'].")
@bundle_detector_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(model, calibration_dir, out_path, labels, name, threshold, smoothing_ms, refractory_ms, as_json):
    """Convert a Keras model of the basilar family into an int8 streaming bundle."""
    detector = bundle_detector(threshold, smoothing_ms, refractory_ms)
    require_extra("keras", "host", "convert")
    with fail_on():
        report = run_convert(model, calibration_dir, out_path, labels, name, detector,
                             warn=lambda text: click.echo(text, err=True))  # not into --json
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        fi = report["float_vs_int8"]
        click.echo(f"bundle {report['bundle']} (id {report['bundle_id'][:16]}...), step model "
                   f"{report['model_size_bytes']} bytes")
        if fi:
            click.echo(f"float vs int8 on {fi['clips']} {fi['on']}: agreement {fi['agreement'] * 100:.1f}%, "
                       f"float {fi['float_accuracy'] * 100:.1f}%, int8 {fi['int8_accuracy'] * 100:.1f}%")


def run_convert(model, calibration_dir, out_path, labels=None, name=None, detector=None, warn=None) -> dict:
    """The whole `basilar convert`: writes the bundle and returns its report. warn: a function told of calibration
    audio left out for its format (dataset.scan_labelled)."""
    import tempfile

    from edge.bundle import pack_bundle
    from firmware_tools import bundler, dataset, evaluate, pipeline
    from firmware_tools.training import DEFAULT_FRONTEND, label_order

    # Everything that can be refused is refused before the conversion, which takes a while
    archive = str(out_path).endswith((".tar.gz", ".tgz"))
    parent = Path(out_path).parent
    if not parent.is_dir():
        raise ValueError(f"--out {out_path}: there is no folder {parent}; nothing was written: create it first "
                         f"(mkdir -p {parent}) or choose another --out")
    if archive:
        bundler.check_archive_destination(out_path)
    else:
        bundler.check_destination(out_path)
    clips = dataset.scan_labelled(calibration_dir, warn=warn)
    sidecar = pipeline.read_sidecar(model) or {}
    name = name or sidecar.get("name") or "model"
    if labels:
        labels = parse_labels(labels)
        recorded = sidecar.get("labels")
        if recorded and labels != recorded:  # each name would be attached to another output of the model
            raise ValueError(f"--labels {','.join(labels)} differ from the labels {model} was trained with, in its "
                             f"output order: {','.join(recorded)}; leave out --labels")
        fix = "give --labels the model's labels, in its output order"
    elif sidecar.get("labels"):
        labels = sidecar["labels"]
        fix = f"restore the sidecar {pipeline.sidecar_path(model)} `basilar train` wrote beside the model"
    else:
        labels = label_order(clips)
        fix = (f"those are the labels of the calibration data (there is no sidecar {pipeline.sidecar_path(model)}); "
               "give --labels the model's labels, in its output order")
    config = pipeline.sidecar_frontend(model, sidecar, DEFAULT_FRONTEND)
    window = load_window_model(model)
    check_features(model, window, config, "frontend" in sidecar)
    check_outputs(model, window, labels, fix)
    clips = [c for c in clips if c.label in labels]
    if not clips:
        raise ValueError(f"no calibration clips carry the model's labels {labels}")
    calibration, rest = pipeline.split_calibration(clips)
    check_clips = rest[:300] or calibration
    for clip in check_clips:  # a silent clip is refused now, not after the conversion (calibration's are read first)
        dataset.read_labelled_clip(clip, config.sample_rate)
    with tempfile.TemporaryDirectory(prefix="basilar-bundle-") as tmp:
        bundle_dir = Path(tmp) / "bundle" if archive else Path(out_path)
        bundle, conversion = pipeline.convert_into_bundle(model, calibration, bundle_dir, config, labels,
                                                          provenance=sidecar.get("provenance", {}), name=name,
                                                          detector=detector)
        # On clips the int8 ranges were not calibrated on, when there are any (64 or fewer: none). They are kept out
        # of calibration only: the model may well have trained on them
        on = "clips not used for calibration (they may be training clips)" if rest \
            else "calibration clips (too few clips to keep any out)"
        agreement = {"on": on, **evaluate.float_int8_agreement(window, bundle, check_clips)}
        bundle_id = pack_bundle(bundle_dir, out_path) if archive else bundle.id
    return {"bundle": str(out_path), "bundle_id": bundle_id, "model_size_bytes": conversion["size_bytes"],
            "labels": labels, "float_vs_int8": agreement}


def parse_labels(text: str) -> list[str]:
    """--labels as a list: refused when it names no label, the background class or a label twice."""
    from firmware_tools.dataset import BACKGROUND

    labels = [s.strip() for s in text.split(",")]
    if "" in labels:
        raise ValueError(f"--labels {text!r} has an empty label; separate the labels by single commas")
    if BACKGROUND in labels:
        raise ValueError(f"--labels names {BACKGROUND}, the background class every bundle adds after its labels; "
                         "leave it out")
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"--labels names {', '.join(twice)} more than once; name each of the model's outputs once")
    for label in labels:  # the serial link's LABELS frame holds 255 bytes a name: a longer one reached hosts cut
        if len(label.encode("utf-8")) > 255:
            raise ValueError(f"--labels names {label[:20]}... of {len(label.encode('utf-8'))} bytes in UTF-8; a "
                             "label may have 255 at most (as a folder name may): shorten it")
    return labels


def load_window_model(model):
    """The Keras model of a .keras file, or a one-line error that says why not."""
    import zipfile

    import keras

    from firmware_tools.convert import require_keras_file

    require_keras_file(model)  # an .h5 file or a SavedModel folder: refused here, not by the conversion's worker
    if not zipfile.is_zipfile(model):  # keras says "File not found" of a file that is there
        raise ValueError(f"{model} is not a Keras model file (a .keras file is the zip archive keras.Model.save "
                         "writes); pass the model.keras `basilar train` wrote")
    try:
        return keras.saving.load_model(model)
    except Exception as exc:  # noqa: BLE001 - any load failure says the same
        raise ValueError(f"cannot load {model} as a Keras model ({exc}); pass a .keras file saved by "
                         "keras.Model.save") from None


def check_outputs(model, window, labels, fix: str) -> None:
    """The model's outputs are its labels and then the background: another count is refused now, not after the
    conversion."""
    from firmware_tools.pipeline import outputs_mismatch

    shape = window.output_shape
    if isinstance(shape, tuple) and shape[-1] not in (None, len(labels) + 1):
        raise ValueError(f"{outputs_mismatch(model, shape[-1], labels)}; {fix}")


def check_features(model, window, config, from_sidecar: bool) -> None:
    """The model must take as many features a frame as the front end gives (else a raw shape error later)."""
    from firmware_tools.pipeline import sidecar_path

    shape = window.input_shape
    if not isinstance(shape, tuple) or shape[-1] in (None, config.features):
        return
    if from_sidecar:
        where = f"the front end its sidecar {sidecar_path(model)} records"
        fix = "restore the sidecar `basilar train` wrote beside the model"
    else:
        where = f"the default front end (there is no sidecar {sidecar_path(model)})"
        fix = "put the sidecar `basilar train` wrote beside the model, which records the front end it was trained on"
    raise ValueError(f"{model} takes {shape[-1]} features a frame but {where} gives {config.features}; {fix}")
