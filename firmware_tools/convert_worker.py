"""Child process of `basilar convert`: loads the Keras model, converts, lints, and writes a JSON report.

Usage: python -m firmware_tools.convert_worker MODEL CALIBRATION.npz OUT.tflite REPORT.json
"""
import json
import sys
from pathlib import Path

import numpy as np


def main(model_path, calibration_path, out_path, report_path) -> int:
    report_file = Path(report_path)
    try:
        import keras

        from firmware_tools import convert
        from firmware_tools.model import build_step_model

        convert.require_keras_file(model_path)
        try:
            model = keras.saving.load_model(model_path)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            raise convert.ConversionError(f"cannot load {model_path} as a Keras model ({exc}); pass a .keras "
                                          "file saved by keras.Model.save") from None
        if not isinstance(model, keras.Model):
            raise convert.ConversionError(f"{model_path} holds a single Keras layer, not a model; save the Keras "
                                          "model as .keras instead")
        window, spec = convert.canonical_window_model(model)
        with np.load(calibration_path) as z:
            sequences = [z[k] for k in z.files]
        samples = convert.representative_samples(window, spec, sequences)
        step = build_step_model(spec, window)
        Path(out_path).write_bytes(convert.convert_step_model(step, samples))
        problems = convert.lint_tflite(out_path)
        if problems:
            raise convert.ConversionError("the converted model is not fit for the device:\n  " +
                                          "\n  ".join(sorted(set(problems))))
        report = {"spec": spec.to_dict(), "size_bytes": Path(out_path).stat().st_size,
                  "calibration_samples": len(samples)}
        report_file.write_text(json.dumps(report))
        return 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which shows it
        # A ConversionError's message says what to change; any other's type tells what went wrong
        expected = type(exc).__name__ == "ConversionError"
        report_file.write_text(json.dumps({"error": str(exc) if expected else f"{type(exc).__name__}: {exc}"}))
        return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
