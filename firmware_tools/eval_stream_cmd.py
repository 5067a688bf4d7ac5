"""`basilar eval-stream BUNDLE AUDIO --truth TRUTH.csv`: how well a bundle detects words in a continuous stream."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from firmware_tools.cli_types import FloatRange
from firmware_tools.run_cmd import INPUTS_DESCRIBED, demo_audio, detector_options, detector_overrides, input_kind
from firmware_tools.stream_eval import DEFAULT_TOLERANCE_S


@click.command()
@click.argument("bundle")
@click.argument("audio", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV with the header label,start_s,end_s: where each word really is [AUDIO demo: its own].")
@click.option("--non-target", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV kind,start_s,end_s of the other sounds in AUDIO (kind 'speech' for non-target speech, "
                   "'noise' for other sounds): adds false alarms per minute of non-target speech. make_demo writes "
                   "one [AUDIO demo: its own].")
@click.option("--tolerance-s", type=FloatRange(0, 10), default=DEFAULT_TOLERANCE_S, show_default=True,
              help="A detection on no word of its label may start this long after a word ended and still count "
                   "for it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@detector_options
def eval_stream(bundle, audio, truth, non_target, tolerance_s, as_json, **detector):
    """Stream AUDIO through BUNDLE ('default': the shipped one) as `basilar run` does and score the detections.

    A detection is a hit when it has a truth word's label and overlaps the word, or, overlapping no word of its
    label, starts before the word's end + tolerance and ends after the word's start; detections matching no word
    are false alarms. Latency is the time from the word's end to when the detection is reported (its detected_s),
    which may be later than the detection's end.
    AUDIO `demo` is the shipped demo recording, scored against its own truth unless --truth is given.
    """
    demo = demo_audio(str(audio))  # installed from a wheel, its files are in site-packages
    if demo:
        audio = demo
        truth = truth or demo.with_name("demo_truth.csv")
        non_target = non_target or demo.with_name("demo_non_target.csv")
    kind = input_kind(str(audio))
    if kind != "file" and not audio.exists():  # `basilar run` listens to these; a score needs the whole recording
        raise click.BadParameter(f"{audio}: eval-stream scores a recorded file, not {INPUTS_DESCRIBED[kind]}; record "
                                 "the words to a file first (e.g. `arecord -f S16_LE -r 16000 -c 1 -d 60 words.wav`) "
                                 "and give that file", param_hint="AUDIO")
    if truth is None:
        raise click.UsageError("Missing option '--truth': the CSV of where each word in AUDIO really is")
    from edge.detector import same_label
    from edge.runloop import DetectorOptionError, Pipeline, PipelineError
    from edge.sources import SourceError
    from firmware_tools.stream_eval import NON_TARGET_HEADER, TruthFileError, detect_heard, read_truth, score_stream

    try:
        words = read_truth(truth)
        # A file with only its header says the stream has no other sound: 0 s of speech, no rate, as with no words
        others = read_truth(non_target, header=NON_TARGET_HEADER) if non_target else None
        pipeline = Pipeline.from_bundle(bundle, detector_overrides=detector_overrides(**detector))
        spelled = {same_label(label): label for label in pipeline.labels}  # a truth file's "é" may be e and a mark
        words = [dataclasses.replace(w, label=spelled.get(same_label(w.label), w.label)) for w in words]
        unknown = sorted({w.label for w in words} - set(pipeline.labels))
        if unknown:
            raise click.ClickException(f"{truth} has label(s) {', '.join(map(repr, unknown))} that the bundle "
                                       f"does not know; its labels are {', '.join(map(repr, pipeline.labels))}")
        detections, duration, cut = detect_heard(pipeline, audio)
    except DetectorOptionError as err:  # the values given, not the bundle: exit 2, as `basilar run` says it
        raise click.UsageError(str(err)) from err
    except (TruthFileError, PipelineError, SourceError) as err:
        raise click.ClickException(str(err)) from err
    if not duration:  # no hour to count false alarms per, no word to find: a score of nothing
        raise click.ClickException(str(cut) if cut else f"{audio} holds no audio (0 samples); give the recording "
                                   f"that {truth} describes")
    unheard = []
    if cut:  # a file that ends early: the words it holds are scored, those after the cut were never heard
        unheard = [w for w in words if w.end_s > duration]
        words = [w for w in words if w.end_s <= duration]
        others = None if others is None else [w for w in others if w.start_s < duration]
    for path, rows, what in ((truth, words, "word(s)"), (non_target, others or [], "stretch(es)")):
        beyond = [w for w in rows if w.start_s >= duration]
        if beyond:
            raise click.ClickException(f"{path} has {len(beyond)} {what} starting at or after the end of {audio} "
                                       f"({duration:.2f} s long; the last starts at {beyond[-1].start_s:.2f} s): "
                                       "the file does not belong to this recording")
    score = score_stream(detections, words, duration, tolerance_s, others)
    if as_json:
        click.echo(json.dumps({"bundle": pipeline.bundle.id, "audio": str(audio), **score.to_dict(),
                               **({"cut_short": {"heard_s": round(duration, 3), "words_not_heard": len(unheard)}}
                                  if cut else {})}))
    else:
        click.echo(format_report(score, audio, pipeline.bundle.id))
    if cut:  # the score above covers what was heard; the exit code says the recording was not whole
        raise click.ClickException(f"{cut}; the score covers its first {duration:.2f} s, and {len(unheard)} word(s) "
                                   f"of {truth} after that were not heard")


def format_report(score, audio, bundle_id: str) -> str:
    """The text report. Rates come from the score itself: the JSON's rounded figures, rounded again for the
    text, could differ from it in the last digit (0.8153 -> 0.815 -> "0.81")."""
    report = score.to_dict()
    # A rate of None had nothing to divide by (no words, no audio): "-", as per minute of no speech below
    hit_rate = "-" if score.hit_rate is None else f"{100 * score.hit_rate:.1f}%"
    per_hour = "-" if score.false_alarms_per_hour is None else f"{score.false_alarms_per_hour:.1f}"
    lines = [f"{audio}: {report['duration_s']:.1f} s, {report['words']} words, "
             f"{report['detections']} detections (bundle {bundle_id[:12]})",
             f"  hits          {report['hits']:4d}  ({hit_rate})"]
    named_wrong = report["misses_heard_as_another_label"]
    lines.append(f"  misses        {report['misses']:4d}  ({named_wrong} heard as another label, "
                 f"{report['misses'] - named_wrong} not detected)")
    lines.append(f"  false alarms  {report['false_alarms']:4d}  ({per_hour} per hour; "
                 f"{report['wrong_label']} with the wrong label on a word)")
    if score.non_target is not None:
        per_minute = score.false_alarms_per_speech_minute
        lines.append(f"  in speech     {score.false_alarms_in_speech:4d}  (in {score.speech_s:.1f} s of non-target "
                     f"speech: {'-' if per_minute is None else f'{per_minute:.2f}'} per minute)")
    if report["latency"]:
        lat = report["latency"]
        lines.append(f"  latency       median {1000 * lat['median_s']:.0f} ms, p90 {1000 * lat['p90_s']:.0f} ms, "
                     f"max {1000 * lat['max_s']:.0f} ms (word end to detection)")
    if report["timing"]:
        start, end = report["timing"]["start_error_s"], report["timing"]["end_error_s"]
        lines.append(f"  word times    start off by median {1000 * start['median']:.0f} ms "
                     f"(p90 {1000 * start['p90']:.0f}), end by {1000 * end['median']:.0f} ms "
                     f"(p90 {1000 * end['p90']:.0f})")
    for word in score.misses:
        heard = score.heard_as(word)
        what = "not detected" if heard is None else f"heard as {heard.label!r} (score {heard.score:.2f})"
        lines.append(f"  missed        {word.label!r} at {word.start_s:.2f}-{word.end_s:.2f} s: {what}")
    for event in score.false_alarms:
        lines.append(f"  false alarm   {event.label!r} at {event.start_s:.2f}-{event.end_s:.2f} s "
                     f"(score {event.score:.2f})")
    return "\n".join(lines)
