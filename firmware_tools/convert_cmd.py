"""`basilar convert MODEL --calibration DATA_DIR --out BUNDLE`: Keras model -> int8 streaming bundle."""
import json
from pathlib import Path

import click

from firmware_tools.cli_errors import fail_on, require_extra
from firmware_tools.cli_types import FloatRange


def bundle_detector_options(command):
    """The detector defaults a new bundle's manifest records (`basilar convert`, `basilar train`)."""
    for option in reversed([
        click.option("--threshold", type=FloatRange(0, 1), help="The bundle's default detection threshold "
                     "[default: 0.92, tuned on the spoken digits: for other words tune it with `basilar eval-stream "
                     "BUNDLE AUDIO --truth T.csv --threshold T` on recordings of them, then convert again]."),
        click.option("--smoothing-ms", type=FloatRange(0, 2000), help="The bundle's default posterior smoothing."),
        click.option("--refractory-ms", type=FloatRange(0, 10000), help="The bundle's default refractory time."),
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
        report = run_convert(model, calibration_dir, out_path, labels, name, detector)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        fi = report["float_vs_int8"]
        click.echo(f"bundle {report['bundle']} (id {report['bundle_id'][:16]}...), step model "
                   f"{report['model_size_bytes']} bytes")
        if fi:
            click.echo(f"float vs int8 on {fi['clips']} {fi['on']}: agreement {fi['agreement'] * 100:.1f}%, "
                       f"float {fi['float_accuracy'] * 100:.1f}%, int8 {fi['int8_accuracy'] * 100:.1f}%")


def run_convert(model, calibration_dir, out_path, labels=None, name=None, detector=None) -> dict:
    import tempfile

    import keras

    from edge.bundle import pack_bundle
    from edge.frontend import FrontendConfig
    from firmware_tools import bundler, dataset, evaluate, pipeline
    from firmware_tools.training import DEFAULT_FRONTEND, label_order

    archive = str(out_path).endswith((".tar.gz", ".tgz"))
    if not archive:
        bundler.check_destination(out_path)  # before the conversion, which takes a while
    clips = dataset.scan_labelled(calibration_dir)
    sidecar = pipeline.read_sidecar(model) or {}
    name = name or sidecar.get("name") or "model"
    if labels:
        labels = [s.strip() for s in labels.split(",") if s.strip()]
        recorded = sidecar.get("labels")
        if recorded and labels != recorded:  # each name would be attached to another output of the model
            raise ValueError(f"--labels {','.join(labels)} differ from the labels {model} was trained with, in its "
                             f"output order: {','.join(recorded)}; leave out --labels")
    else:
        labels = sidecar.get("labels") or label_order(clips)
    config = FrontendConfig.from_dict(sidecar["frontend"]) if "frontend" in sidecar else DEFAULT_FRONTEND
    clips = [c for c in clips if c.label in labels]
    if not clips:
        raise ValueError(f"no calibration clips carry the model's labels {labels}")
    calibration, rest = pipeline.split_calibration(clips)
    with tempfile.TemporaryDirectory(prefix="basilar-bundle-") as tmp:
        bundle_dir = Path(tmp) / "bundle" if archive else Path(out_path)
        bundle, conversion = pipeline.convert_into_bundle(model, calibration, bundle_dir, config, labels,
                                                          provenance=sidecar.get("provenance", {}), name=name,
                                                          detector=detector)
        window = keras.saving.load_model(model) if str(model).endswith(".keras") else None
        agreement = {}
        if window:  # on clips the int8 ranges were not calibrated on, when there are any (64 or fewer: none)
            on = "held-out clips" if rest else "calibration clips (too few clips to keep any out)"
            agreement = {"on": on, **evaluate.float_int8_agreement(window, bundle, rest[:300] or calibration)}
        bundle_id = pack_bundle(bundle_dir, out_path) if archive else bundle.id
    return {"bundle": str(out_path), "bundle_id": bundle_id, "model_size_bytes": conversion["size_bytes"],
            "labels": labels, "float_vs_int8": agreement}
