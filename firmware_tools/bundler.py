"""Make bundles: the int8 step model, the manifest that ties it to its front end, and the attribution."""
import dataclasses
import datetime
import json
import shutil
import tempfile
from pathlib import Path

from edge import __version__
from edge.bundle import MANIFEST, MANIFEST_KEYS, SCHEMA_VERSION, BundleError, archive_manifest, file_sha256, load_bundle
from edge.frontend import OUTPUT_SCALE_DB, OUTPUT_ZERO_POINT, FrontendConfig
from firmware_tools.dataset import BACKGROUND

STEP_MODEL = "model_step.tflite"
ATTRIBUTION = "ATTRIBUTION.md"

# Tuned on held-out speakers' streams (README, docs/models.md): "word" finds the words the model hesitates on, with
# 150 ms smoothing. End-pointing (a word counts only when a 150 ms pause, 25 dB below it or near the background,
# follows it): on four fold bundles (each speaker held out in turn, 1,760 stream words) it found the same words and
# cut false alarms in the speech of voices the model never heard by 82%. Threshold 0.92 for the shipped recipe, whose
# background class hears recorded speech and whose word scores are lower: its fold bundles find 28 more of those
# words than at 0.95, with about 1 false alarm per minute in two real people's speech (docs/models.md).
DEFAULT_DETECTOR = {
    "trigger": "word",
    "smoothing_ms": 150.0,
    "threshold": 0.92,
    "thresholds": {},
    "release_ratio": 0.5,
    "refractory_ms": 400.0,
    "min_duration_ms": 30.0,
    "end_quiet_ms": 150.0,
    "end_quiet_db": 25.0,
}

FSDD_PROVENANCE = {
    "training_data": "Free Spoken Digit Dataset (Zohar Jackson and contributors), speakers jackson, nicolas, "
                     "theo, yweweler; git commit 26eb9aaf76e81b692f806f9140c2d2777410d7a1",
    "license": "CC BY-SA 4.0",
    "attribution": "Trained on recordings from the Free Spoken Digit Dataset by Zohar Jackson and contributors, "
                   "licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). This model is a "
                   "derivative work and is shared under the same license.",
    "synthetic_data": "Extra digits and non-target speech synthesized with espeak-ng and flite; noise and other "
                      "sounds (notes, chords, bells, sweeps, knocks) synthesized with numpy.",
}


def tflite_quantization(model_path) -> dict:
    from edge.runner import _find_tensors, _quant, make_interpreter

    interpreter, _ = make_interpreter(model_path)
    frame, state, scores, new_state = _find_tensors(interpreter)
    as_dict = lambda d: dict(zip(("scale", "zero_point"), _quant(d)), shape=[int(v) for v in d["shape"]])
    return {"frame": as_dict(frame), "state": as_dict(state), "new_state": as_dict(new_state),
            "scores": as_dict(scores)}


def attribution_text(provenance: dict) -> str:
    lines = ["# Attribution", "", provenance.get("attribution", "No attribution recorded."), ""]
    for key in ("training_data", "license", "synthetic_data", "recorded_speech"):
        if key in provenance:
            lines.append(f"- {key.replace('_', ' ')}: {provenance[key]}")
    return "\n".join(lines) + "\n"


def foreign_manifest(data: bytes) -> str | None:
    """Why a manifest.json is not basilar's (a web app's, an extension's); None when it reads as a bundle manifest.
    Only its keys are asked for: an earlier bundle, however damaged its files, may be replaced."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return f"its {MANIFEST} is not JSON"
    missing = [key for key in MANIFEST_KEYS if key not in manifest] if isinstance(manifest, dict) else MANIFEST_KEYS
    if missing:
        return f"its {MANIFEST} is another program's: it lacks {', '.join(map(repr, missing))}"
    return None


def check_destination(out_dir) -> None:
    """A bundle may replace an earlier bundle (once the new one loads: make_bundle), never a folder of other
    things, even one with a manifest.json of its own."""
    out = Path(out_dir)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not (out / MANIFEST).is_file():
        why = f"it has no {MANIFEST}"
    else:
        try:
            why = foreign_manifest((out / MANIFEST).read_bytes())
        except OSError as exc:
            why = f"its {MANIFEST} cannot be read: {exc.strerror or exc}"
    if why:
        raise ValueError(f"{out} already exists and is not a basilar bundle ({why}); nothing was written: write the "
                         "bundle to a new folder")


def check_archive_destination(archive) -> None:
    """As check_destination, for a bundle archive: it may replace an earlier bundle archive (or an empty file),
    never another file, even an archive with a manifest.json of its own."""
    out = Path(archive)
    if not out.exists() or (out.is_file() and out.stat().st_size == 0):
        return
    why = "it is not a file"
    if out.is_file():
        try:
            why = foreign_manifest(archive_manifest(out))  # its manifest only: a bundle archive, however damaged
        except BundleError:
            why = f"no {MANIFEST} can be read from it: another file, or an archive cut off while it was written"
    if why:
        raise ValueError(f"{out} already exists and is not a basilar bundle archive ({why}); nothing was written: "
                         "write the archive to a new file, or remove that one first")


def make_bundle(out_dir, step_model_path, config: FrontendConfig, labels: list[str], *, spec: dict,
                detector: dict | None = None, provenance: dict | None = None, evaluation: dict | None = None,
                name: str = "model"):
    """Write a bundle directory and check it loads; returns the loaded Bundle. It is written and checked beside
    `out_dir`, and replaces an earlier bundle there only once it loads: a failure never costs the earlier bundle. One
    that fails its check is left at `out_dir` only where there was no bundle (for the caller to look at or remove)."""
    out = Path(out_dir)
    check_destination(out)
    earlier = (out / MANIFEST).is_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # beside it, so that renames are moves
    new = work / "bundle"
    try:
        _write_bundle(new, step_model_path, config, labels, spec=spec, detector=detector, provenance=provenance,
                      evaluation=evaluation, name=name)
        try:
            checked = load_bundle(new)
        except BundleError as exc:
            if not earlier:
                _move_into_place(new, out, work)
            kept = f"; the new bundle was not written, and the earlier bundle at {out} is as it was" if earlier else ""
            raise BundleError(str(exc).replace(str(new), str(out)) + kept) from None
        _move_into_place(new, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dataclasses.replace(checked, path=out)


def _move_into_place(new: Path, out: Path, work: Path) -> None:
    """Rename `new` to `out`; what was at `out` goes into `work` (to be deleted with it), and back if that fails."""
    if out.exists():
        out.rename(work / "old")
    try:
        new.rename(out)
    except OSError:
        if (work / "old").exists():
            (work / "old").rename(out)
        raise


def _write_bundle(out: Path, step_model_path, config: FrontendConfig, labels: list[str], *, spec: dict,
                  detector: dict | None, provenance: dict | None, evaluation: dict | None, name: str) -> None:
    out.mkdir()
    shutil.copyfile(step_model_path, out / STEP_MODEL)
    provenance = dict(provenance or {})
    (out / ATTRIBUTION).write_text(attribution_text(provenance))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "basilar_version": __version__,
        "created": datetime.date.today().isoformat(),
        "labels": list(labels),
        "classes": list(labels) + [BACKGROUND],
        "frontend": {
            "config": config.to_dict(),
            "hash": config.hash(),
            "output": {"dtype": "int8", "scale_db": OUTPUT_SCALE_DB, "zero_point": OUTPUT_ZERO_POINT,
                       "meaning": "level re the normaliser's reference; zero_point = as loud as the reference"},
        },
        "models": {"step": {"file": STEP_MODEL, "spec": spec,
                            "receptive_field_frames": 1 + (spec["kernel"] - 1) * sum(spec["dilations"])}},
        "quantization": tflite_quantization(out / STEP_MODEL),
        "detector": {**DEFAULT_DETECTOR, **(detector or {})},
        "provenance": provenance,
        "files": {STEP_MODEL: file_sha256(out / STEP_MODEL), ATTRIBUTION: file_sha256(out / ATTRIBUTION)},
    }
    if evaluation:
        manifest["evaluation"] = evaluation
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
