"""Clip evaluation exactly as the device streams: integer front end, then the int8 step model frame by frame.

A clip is played with EVAL_LEAD_S of silence before and EVAL_TAIL_S after it, through a fresh front end and
model state; its label is the one with the most posterior mass while it plays (training.clip_decision; with one
label, none when the background outweighs it).
"""
import numpy as np

from edge.runner import StepRunner
from firmware_tools import dataset


def stream_clip(runner: StepRunner, frames: np.ndarray) -> np.ndarray:
    """Posteriors (frames, labels) of the step model over a clip's frames, from a fresh state."""
    runner.reset()
    return runner.run(frames)


def evaluate_bundle(bundle, clips, progress=None, noise_floor_dbfs: float | None = None) -> dict:
    """Clip accuracy, per-label recall and confusion of a bundle on labelled clips.

    noise_floor_dbfs: play each clip over steady white noise at this level instead of digital silence
    (dataset.clip_frames), seeded by the clip's index so that runs repeat.
    """
    from firmware_tools.training import MISSED, clip_decision, clip_report, read_clips

    labels = bundle.labels
    unknown = sorted({c.label for c in clips} - set(labels))
    if unknown:
        raise ValueError(f"clips carry labels the bundle does not know: {unknown}; the bundle's labels are "
                         f"{labels}")
    from edge.runloop import Pipeline

    config = bundle.frontend_config
    words = read_clips(clips, config)  # a clip that cannot be read stops the run now, not after scoring the others
    pipeline = Pipeline.for_bundle(bundle)
    truth, predicted, detected, as_other = [], [], 0, 0
    items = progress(clips) if progress else clips
    for index, clip in enumerate(items):
        audio = dataset.clip_audio(config, words[clip], noise_floor_dbfs=noise_floor_dbfs, seed=index)
        pipeline.reset()  # each clip from rest
        scores = pipeline.posteriors(audio)
        truth.append(labels.index(clip.label))
        predicted.append(clip_decision(scores))
        # The same posteriors through the detector at the bundle's settings, as `basilar run` would report them: a
        # clip named right whose word score stays under the threshold counts in accuracy, and is never detected.
        events = pipeline.detector.update(scores, pipeline.input_levels(audio)) + pipeline.flush()
        heard = {event.label for event in events}
        detected += clip.label in heard
        as_other += bool(heard) and clip.label not in heard
    report = clip_report(labels, truth, predicted)
    report["predicted"] = [None if p == MISSED else labels[p] for p in predicted]
    report["noise_floor_dbfs"] = noise_floor_dbfs
    report["detected"] = {"clips": detected, "only_as_another_label": as_other,
                          "fraction": detected / len(clips) if clips else None}
    return report


def float_int8_agreement(window_model, bundle, clips) -> dict:
    """How often the float window model and the int8 step model pick the same label, and their accuracies."""
    from firmware_tools.training import classify_frames, clip_decision

    labels = bundle.labels
    config = bundle.frontend_config
    frames = [dataset.clip_frames(config, dataset.read_labelled_clip(c, config.sample_rate)) for c in clips]
    float_pred = classify_frames(window_model, frames)
    runner = StepRunner(bundle)
    int8_pred = np.array([clip_decision(stream_clip(runner, f)) for f in frames])
    truth = np.array([labels.index(c.label) for c in clips])
    return {"clips": int(len(clips)), "agreement": float(np.mean(float_pred == int8_pred)),
            "float_accuracy": float(np.mean(float_pred == truth)),
            "int8_accuracy": float(np.mean(int8_pred == truth))}


def format_report(report: dict) -> str:
    labels = report["labels"]
    floor = report.get("noise_floor_dbfs")
    lines = [f"clips: {report['clips']}   accuracy: {report['accuracy'] * 100:.1f}%"
             + (f"   (over a {floor:g} dBFS noise floor)" if floor is not None else "")]
    found = report.get("detected")
    if found and report["clips"]:
        missed = report["clips"] - found["clips"] - found["only_as_another_label"]
        lines.append(f"detected at the bundle's detector settings (as `basilar run` reports words): {found['clips']} "
                     f"of {report['clips']} ({found['fraction'] * 100:.1f}%); {found['only_as_another_label']} only "
                     f"as another label, {missed} not at all")
    if "missed" in report:  # one label: the clips the background outweighed it in count against it
        lines.append(f"named {labels[0]!r}: {report['clips'] - report['missed']} of {report['clips']}; "
                     f"{report['missed']} heard as background (missed)")
    lines += ["", "recall per label:"]
    lines += [f"  {lab:>12}: " + (f"{report['recall'][lab] * 100:5.1f}%" if report["recall"][lab] is not None
                                  else "  n/a (no clips)") for lab in labels]
    width = max(4, max(len(l) for l in labels) + 1)
    lines += ["", "confusion (rows: truth, columns: predicted):",
              " " * width + "".join(f"{l:>{width}}" for l in labels)]
    for lab, row in zip(labels, report["confusion"]):
        lines.append(f"{lab:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
