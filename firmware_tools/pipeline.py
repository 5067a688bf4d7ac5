"""Host-side pipeline pieces shared by `basilar train` and `basilar convert`: sidecar metadata, calibration,
conversion into a bundle, and the float-vs-int8 report."""
import json
import shutil
from pathlib import Path

import numpy as np

from edge.bundle import MANIFEST
from edge.frontend import FrontendConfig
from firmware_tools import bundler, dataset
from firmware_tools.convert import convert_to_int8

CALIBRATION_CLIPS = 64


def sidecar_path(model_path) -> Path:
    return Path(str(model_path) + ".basilar.json")


def write_sidecar(model_path, labels, config: FrontendConfig, provenance: dict, name: str | None = None) -> None:
    sidecar = {"labels": labels, "frontend": config.to_dict(), "provenance": provenance}
    if name is not None:  # the bundle name given at training, which `basilar convert` keeps
        sidecar["name"] = name
    sidecar_path(model_path).write_text(json.dumps(sidecar, indent=2) + "\n")


def read_sidecar(model_path) -> dict | None:
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    fix = (f"it is what `basilar train` wrote beside {model_path} (its labels and front end): restore it, or move it "
           "away and give --labels (the default front end is then used)")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(sidecar, dict):
        raise ValueError(f"{path} holds no JSON object; {fix}")
    return sidecar


def sidecar_frontend(model_path, sidecar: dict, default: FrontendConfig) -> FrontendConfig:
    """The front end the sidecar records, else `default`; a bad one is refused naming the sidecar."""
    if "frontend" not in sidecar:
        return default
    try:
        return FrontendConfig.from_dict(sidecar["frontend"])
    except (TypeError, ValueError) as exc:  # FrontendConfigError is a ValueError; TypeError: not a dict of fields
        raise ValueError(f"{sidecar_path(model_path)}: its frontend is not a valid front end ({exc}); restore the "
                         f"sidecar `basilar train` wrote beside {model_path}, which records the front end the model "
                         "was trained on") from None


def outputs_mismatch(model_path, outputs: int, labels) -> str:
    """What is wrong when a model's outputs are not its labels and the background, in that order."""
    return (f"{model_path} has {outputs} outputs, so it takes {outputs - 1} labels (its last output is the "
            f"background), but {len(labels)} labels were given: {','.join(labels)}")


def split_calibration(clips, seed: int = 0):
    """A few clips of every label to calibrate with; the rest are held out for the agreement report."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    calibration = [clips[i] for i in order[:CALIBRATION_CLIPS]]
    return calibration, [clips[i] for i in order[CALIBRATION_CLIPS:]]


def convert_into_bundle(model_path, calibration_clips, out_dir, config: FrontendConfig, labels, *,
                        provenance: dict, detector=None, evaluation=None, name="model", work_dir=None):
    frames = [dataset.clip_frames(config, dataset.read_labelled_clip(c, config.sample_rate))
              for c in calibration_clips]
    work = Path(work_dir or out_dir).parent
    step_path = work / f".{Path(out_dir).name}.step.tflite"
    try:
        report = convert_to_int8(model_path, frames, step_path)
        spec = report["spec"]
        if spec["classes"] != len(labels) + 1:  # `basilar convert` says so before converting; other callers here
            from firmware_tools.convert import ConversionError

            raise ConversionError(outputs_mismatch(model_path, spec["classes"], labels))
        bundler.check_destination(out_dir)  # a folder it refuses is never removed below
        earlier = (Path(out_dir) / MANIFEST).is_file()
        try:
            bundle = bundler.make_bundle(out_dir, step_path, config, labels, spec=spec, detector=detector,
                                         provenance=provenance, evaluation=evaluation, name=name)
        except Exception:
            if not earlier:  # no broken bundle left where the user expects one (an earlier one make_bundle keeps)
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
    finally:
        step_path.unlink(missing_ok=True)
    return bundle, report
