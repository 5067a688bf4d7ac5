"""Stream evaluation: the matching rule, the truth file, and `basilar eval-stream` on the demo."""
import json
import math
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import soxr
from click.testing import CliRunner

from edge.detector import Detection
from firmware_tools.cli import main
from firmware_tools.stream_eval import NON_TARGET_HEADER, TruthFileError, TruthWord, read_truth, score_stream
from tests.conftest import REPO

DEMO = REPO / "edge" / "demo" / "demo.wav"
DEMO_TRUTH = REPO / "edge" / "demo" / "demo_truth.csv"
DEMO_NON_TARGET = REPO / "edge" / "demo" / "demo_non_target.csv"


def det(label, start, end, score=0.9):
    return Detection(label, score, start, end)


WORDS = [TruthWord("3", 1.0, 1.5), TruthWord("7", 4.0, 4.4), TruthWord("3", 8.0, 8.6)]


def test_a_detection_just_after_its_word_is_a_hit_with_its_latency():
    score = score_stream([det("3", 1.3, 1.75), det("7", 4.3, 4.6), det("3", 8.5, 8.9)], WORDS, duration_s=10)
    assert (len(score.hits), len(score.misses), len(score.false_alarms)) == (3, 0, 0)
    assert score.latencies_s == pytest.approx([0.25, 0.2, 0.3])
    assert score.hit_rate == 1.0


def test_latency_runs_to_when_a_detection_was_reported_and_timing_compares_the_word_times():
    words = [TruthWord("3", 1.0, 1.5), TruthWord("7", 4.0, 4.4)]
    detections = [Detection("3", 0.9, 1.02, 1.45, detected_s=1.95), Detection("7", 0.9, 4.1, 4.4, detected_s=4.9)]
    score = score_stream(detections, words, duration_s=10)
    assert score.latencies_s == pytest.approx([0.45, 0.5])
    timing = score.to_dict()["timing"]
    assert timing["start_error_s"] == {"median": 0.06, "p90": 0.092, "max": 0.1}
    assert timing["end_error_s"] == {"median": 0.025, "p90": 0.045, "max": 0.05}
    assert score_stream([], words, 10).to_dict()["timing"] is None


def test_the_matching_window_runs_from_word_start_to_word_end_plus_tolerance():
    word = [TruthWord("3", 1.0, 1.5)]
    assert len(score_stream([det("3", 2.49, 2.8)], word, 10).hits) == 1  # starts 0.99 s after the word
    assert len(score_stream([det("3", 2.5, 2.8)], word, 10).hits) == 0  # starts 1.0 s after: too late
    assert len(score_stream([det("3", 2.5, 2.8)], word, 10, tolerance_s=1.5).hits) == 1
    assert len(score_stream([det("3", 0.2, 1.01)], word, 10).hits) == 1  # ends inside the word
    assert len(score_stream([det("3", 0.2, 1.0)], word, 10).hits) == 0  # ends as the word starts


def test_a_wrong_label_on_a_word_is_a_miss_and_a_false_alarm():
    score = score_stream([det("8", 1.2, 1.6)], [TruthWord("3", 1.0, 1.5)], 10)
    assert [w.label for w in score.misses] == ["3"]
    assert [d.label for d in score.false_alarms] == ["8"]
    assert score.wrong_label == 1


def test_a_miss_is_heard_as_the_highest_scoring_false_alarm_on_it_or_nothing():
    words = [TruthWord("3", 1.0, 1.5), TruthWord("7", 4.0, 4.4), TruthWord("9", 8.0, 8.6), TruthWord("9", 12.0, 12.5)]
    detections = [det("8", 1.1, 1.5, score=0.93), det("5", 1.2, 1.6, score=0.97),  # two on the "3"
                  det("7", 4.1, 4.4),  # a hit: not what any miss was heard as
                  det("5", 8.5, 8.7, score=0.99),  # on the first "9"
                  det("4", 9.5, 9.7, score=0.99),  # within the tolerance after it, but not on it
                  det("2", 30.0, 30.2)]  # on no word
    score = score_stream(detections, words, 40)
    assert [(w.label, getattr(score.heard_as(w), "label", None)) for w in score.misses] == \
        [("3", "5"), ("9", "5"), ("9", None)]
    assert score.confusions() == {"3": {"5": 1}, "9": {"5": 1, "nothing": 1}}
    report = score.to_dict()
    assert report["misses_heard_as_another_label"] == 2
    assert report["wrong_label"] == 3  # the "8" and "5" on the "3", the "5" on the "9"; not the "4" after it
    assert report["missed"][0] == {"label": "3", "start_s": 1.0, "end_s": 1.5,
                                   "heard_as": {"label": "5", "score": 0.97, "start_s": 1.2, "end_s": 1.6}}
    assert report["missed"][2]["heard_as"] is None
    assert score_stream([det("3", 1.2, 1.5)], words[:1], 10).to_dict()["confusions"] == {}


def test_a_false_alarm_is_heard_as_only_for_the_word_under_it_and_for_one_miss():
    # make_demo leaves 0.9-1.4 s between items: a "7" said over the next word is not what the "3" before was heard as
    score = score_stream([det("7", 2.0, 2.5)], [TruthWord("3", 1.0, 1.5), TruthWord("5", 2.45, 2.9)], 60)
    report = score.to_dict()
    assert report["misses_heard_as_another_label"] == 1
    assert report["confusions"] == {"3": {"nothing": 1}, "5": {"7": 1}}
    assert report["wrong_label"] == 1
    # one false alarm over two missed words is what the one it overlaps most was heard as; ties go to the earlier
    words = [TruthWord("3", 1.0, 1.5), TruthWord("5", 1.5, 2.5)]
    assert score_stream([det("7", 1.25, 2.25)], words, 60).to_dict()["confusions"] == \
        {"3": {"nothing": 1}, "5": {"7": 1}}
    assert score_stream([det("7", 1.25, 1.75)], words, 60).to_dict()["confusions"] == \
        {"3": {"7": 1}, "5": {"nothing": 1}}
    # a false alarm that only follows a word, within the matching tolerance, is neither on it nor a wrong label
    score = score_stream([det("7", 1.6, 1.9)], [TruthWord("3", 1.0, 1.5)], 60)
    assert score.heard_as(score.misses[0]) is None and score.wrong_label == 0
    # the tolerance still holds for the matching of hits
    assert len(score_stream([det("3", 1.6, 1.9)], [TruthWord("3", 1.0, 1.5)], 60).hits) == 1


def test_the_help_says_latency_runs_to_when_the_detection_is_reported():
    text = " ".join(CliRunner().invoke(main, ["eval-stream", "--help"]).output.split())
    assert "detected_s" in text and "to the detection's end" not in text


def test_each_word_takes_one_detection_and_extras_are_false_alarms():
    doubled = [det("3", 1.2, 1.6), det("3", 1.9, 2.1)]
    score = score_stream(doubled, [TruthWord("3", 1.0, 1.5)], 3600)
    assert len(score.hits) == 1 and score.hits[0][1].start_s == 1.2  # the earliest one is the hit
    assert len(score.false_alarms) == 1 and score.wrong_label == 0
    assert score.false_alarms_per_hour == pytest.approx(1.0)


def test_a_detection_on_a_word_is_that_words_not_an_earlier_missed_ones():
    """Two "3"s 0.6 s apart, the first missed: the detection on the second lies within the tolerance after the first
    too, and once went to it, making the second the miss (with a latency of 1.3 s)."""
    words = [TruthWord("3", 1.0, 1.4), TruthWord("3", 2.0, 2.4)]
    score = score_stream([Detection("3", 0.9, 2.05, 2.38, detected_s=2.9)], words, 10)
    assert [w for w, _ in score.hits] == words[1:] and score.misses == words[:1]
    assert score.latencies_s == pytest.approx([0.5]) and score.false_alarms == []
    # The tolerance still gives a word a detection just after it that lies on no word of its label
    score = score_stream([det("3", 1.5, 1.9), det("3", 2.05, 2.38)], words, 10)
    assert [d.start_s for _, d in score.hits] == [1.5, 2.05] and score.misses == []
    # ... but not one on a word of its label that already has its detection: that one is a false alarm
    score = score_stream([det("3", 2.05, 2.2), det("3", 2.25, 2.38)], words, 10)
    assert [(w, d.start_s) for w, d in score.hits] == [(words[1], 2.05)] and score.misses == words[:1]
    assert [d.start_s for d in score.false_alarms] == [2.25] and score.wrong_label == 0


def test_false_alarms_in_silence_and_per_hour():
    score = score_stream([det("1", 20.0, 20.3), det("2", 40.0, 40.2)], WORDS, duration_s=60)
    assert len(score.misses) == 3 and len(score.false_alarms) == 2
    assert score.false_alarms_per_hour == pytest.approx(120.0)
    report = score.to_dict()
    assert report["latency"] is None and report["hit_rate"] == 0.0
    assert report["per_label"] == {"3": {"hits": 0, "misses": 2}, "7": {"hits": 0, "misses": 1}}


def test_report_as_dict():
    report = score_stream([det("3", 1.3, 1.75), det("9", 6.0, 6.2)], WORDS, duration_s=36).to_dict()
    assert {k: report[k] for k in ("words", "detections", "hits", "misses", "false_alarms")} == \
        {"words": 3, "detections": 2, "hits": 1, "misses": 2, "false_alarms": 1}
    assert report["false_alarms_per_hour"] == 100.0
    assert report["latency"]["median_s"] == 0.25
    assert report["false_alarm_events"] == [{"label": "9", "score": 0.9, "start_s": 6.0, "end_s": 6.2}]


def test_false_alarms_are_counted_per_minute_of_non_target_speech():
    others = [TruthWord("speech", 10.0, 40.0), TruthWord("noise", 50.0, 52.0), TruthWord("speech", 60.0, 90.0)]
    detections = [det("3", 1.3, 1.75),  # a hit
                   det("5", 20.0, 20.4), det("5", 90.5, 90.8),  # in speech (the second within the tolerance)
                   det("6", 51.0, 51.2), det("2", 95.0, 95.2)]  # on the noise, and in quiet
    report = score_stream(detections, WORDS, 120, non_target=others).to_dict()
    assert report["false_alarms"] == 4 and report["off_word_false_alarms"] == 4
    assert report["non_target_speech_s"] == 60.0
    assert report["false_alarms_in_speech"] == 2
    assert report["false_alarms_per_speech_minute"] == 2.0
    assert "false_alarms_in_speech" not in score_stream(detections, WORDS, 120).to_dict()


def test_minutes_of_non_target_speech_are_the_union_of_the_stretches_within_the_recording():
    others = [TruthWord("speech", 10.0, 40.0), TruthWord("speech", 10.0, 40.0),  # a row repeated
              TruthWord("speech", 30.0, 50.0),  # overlapping the first by 10 s
              TruthWord("noise", 45.0, 70.0),  # not speech
              TruthWord("speech", 100.0, 150.0)]  # running 30 s past the end of a 120 s recording
    report = score_stream([det("5", 20.0, 20.4), det("5", 110.0, 110.3)], WORDS, 120, non_target=others).to_dict()
    assert report["non_target_speech_s"] == 60.0  # 10-50 s and 100-120 s
    assert report["false_alarms_in_speech"] == 2 and report["false_alarms_per_speech_minute"] == 2.0
    assert score_stream([], WORDS, 120, non_target=[TruthWord("speech", 0.0, 0.0)]).speech_s == 0.0


def test_read_truth(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("label,start_s,end_s\n7,4.0,4.4\n3, 1.0 ,1.5\n\n")
    assert read_truth(path) == [TruthWord("3", 1.0, 1.5), TruthWord("7", 4.0, 4.4)]
    assert len(read_truth(DEMO_TRUTH)) == 20
    # As a spreadsheet may save it: a byte-order mark, the columns in another order, and one more
    path.write_bytes("\ufeffspeaker,end_s,label,start_s\r\nann,4.4,7,4.0\r\nbob,1.5,3,1.0\r\n".encode("utf-8"))
    assert read_truth(path) == [TruthWord("3", 1.0, 1.5), TruthWord("7", 4.0, 4.4)]
    # words of different labels may overlap (sound events), and one may start where the last of its label ended
    path.write_text("label,start_s,end_s\n7,1.0,2.0\n3,1.5,2.5\n7,2.0,2.4\n")
    assert read_truth(path) == [TruthWord("7", 1.0, 2.0), TruthWord("3", 1.5, 2.5), TruthWord("7", 2.0, 2.4)]
    # non-target stretches may overlap: their minutes are the union
    path.write_text("kind,start_s,end_s\nspeech,1.0,3.0\nspeech,2.0,4.0\n")
    assert len(read_truth(path, header=NON_TARGET_HEADER)) == 2


@pytest.mark.parametrize("content, message", [
    ("start,end\n1,2\n", "first line must be the header 'label,start_s,end_s'"),
    ("label,start_s,end_s\n3,1.0\n", "line 2: expected label,start_s,end_s"),
    ("label,start_s,end_s\n3,1.0,1.5\n3,soon,2\n", "line 3: expected label,start_s,end_s"),
    ("label,start_s,end_s\n3,2.0,1.5\n", "line 2: need a label and 0 <= start_s <= end_s"),
    ("label,start_s,end_s\n,1.0,1.5\n", "line 2: need a label"),
    # decimal commas: '3,7,360,7,554' is not ('3', 7.0, 360.0)
    ("label,start_s,end_s\n3,1.0,1.5\n3,7,360,7,554\n", "line 3: 5 fields under a header of 3"),
    # a row pasted twice, or two words of one label that overlap: one detection can be only one of them
    ("label,start_s,end_s\n3,1.0,1.5\n4,2.0,2.5\n3,1.0,1.5\n", r"lines 2 and 4: two '3' words overlap \(1-1.5 s"),
    ("label,start_s,end_s\n5,2.0,3.0\n5,0.5,2.5\n", r"lines 2 and 3: two '5' words overlap \(0.5-2.5 s and 2-3 s\)"),
])
def test_bad_truth_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TruthFileError, match=message):
        read_truth(path)


def test_a_missing_truth_file(tmp_path):
    with pytest.raises(TruthFileError, match="truth file not found"):
        read_truth(tmp_path / "none.csv")


def test_eval_stream_on_the_demo_with_the_default_bundle():
    result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["words"] == 20
    assert report["hits"] + report["misses"] == 20
    assert report["detections"] == report["hits"] + report["false_alarms"]
    assert report["hit_rate"] >= 0.8
    assert report["false_alarms"] <= 3
    assert report["duration_s"] == pytest.approx(55.3, abs=0.1)
    assert 0 < report["latency"]["median_s"] < 1.0
    assert report["timing"]["start_error_s"]["max"] <= 0.15 and report["timing"]["end_error_s"]["max"] <= 0.15

    text = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH)])
    assert text.exit_code == 0, text.output
    assert f"hits            {report['hits']:2d}" in text.output
    assert "false alarms" in text.output and "latency" in text.output and "word times" in text.output
    assert f"({report['misses_heard_as_another_label']} heard as another label" in text.output


def test_a_word_the_truth_invents_takes_no_detection_from_the_real_word_after_it(tmp_path):
    """The demo's truth with a '9' added 0.6 s before its first word, a real '9': the invented word is the miss, and
    the real one keeps its detection and its latency."""
    rows = DEMO_TRUTH.read_text().splitlines()
    assert rows[1].startswith("9,1.000,")
    truth = tmp_path / "invented.csv"
    truth.write_text("\n".join([rows[0], "9,0.200,0.400", *rows[1:]]) + "\n")
    reports = [json.loads(CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(path),
                                                    "--json"]).output) for path in (DEMO_TRUTH, truth)]
    assert (reports[1]["hits"], reports[1]["misses"], reports[1]["false_alarms"]) == (reports[0]["hits"], 1, 0)
    assert reports[1]["missed"] == [{"label": "9", "start_s": 0.2, "end_s": 0.4, "heard_as": None}]
    assert reports[1]["latency"] == reports[0]["latency"] and reports[1]["timing"] == reports[0]["timing"]
    text = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(truth)]).output
    assert "missed        '9' at 0.20-0.40 s: not detected" in text and "1.00-1.35" not in text


@pytest.mark.parametrize("gain_db", [-40, 12])
def test_the_demo_is_heard_whatever_the_input_gain(tmp_path, gain_db):
    # The level normaliser takes the microphone's gain: the demo 40 dB quieter (words near -64 dBFS) or 12 dB louder
    # (its peaks clipped) gives every digit, as at its own level (README, "input level").
    audio, rate = soundfile.read(DEMO, dtype="float64")
    scaled = tmp_path / "scaled.wav"
    soundfile.write(scaled, np.clip(audio * 10 ** (gain_db / 20), -1, 32767 / 32768), rate, subtype="PCM_16")
    result = CliRunner().invoke(main, ["eval-stream", "default", str(scaled), "--truth", str(DEMO_TRUTH), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["hits"] == 20 and report["false_alarms"] == 0


def test_eval_stream_says_what_each_missed_word_was_heard_as(tmp_path):
    """The demo's truth with every label moved one on: each word is missed and heard as its real label."""
    rows = DEMO_TRUTH.read_text().splitlines()
    moved = [rows[0]] + [f"{(int(label) + 1) % 10},{rest}" for label, rest in (r.split(",", 1) for r in rows[1:])]
    truth = tmp_path / "moved.csv"
    truth.write_text("\n".join(moved) + "\n")
    report = json.loads(CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(truth),
                                                  "--json"]).output)
    assert report["hits"] == 0 and report["misses"] == 20
    real = {(w.start_s, w.end_s): w.label for w in read_truth(DEMO_TRUTH)}
    heard = [(real[(m["start_s"], m["end_s"])], (m["heard_as"] or {}).get("label")) for m in report["missed"]]
    assert sum(r == h for r, h in heard) == report["misses_heard_as_another_label"] >= 18
    assert sum(sum(row.values()) for row in report["confusions"].values()) == 20
    text = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(truth)]).output
    first = report["missed"][0]
    assert (f"missed        {first['label']!r} at {first['start_s']:.2f}-{first['end_s']:.2f} s: heard as "
            f"{first['heard_as']['label']!r}") in text


def test_both_triggers_run_from_the_command_line_and_differ_on_the_demo():
    """The option reaches the detector: at a low threshold the two triggers make different events on the demo."""
    reports = {}
    for trigger in ("label", "word"):
        result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH), "--json",
                                           "--trigger", trigger, "--threshold", "0.3"])
        assert result.exit_code == 0, result.output
        reports[trigger] = json.loads(result.output)
    assert reports["word"] != reports["label"]
    bad = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH), "--trigger", "x"])
    assert bad.exit_code == 2 and "'label'" in bad.output


def test_the_word_demo_scores_the_shipped_demo_against_its_own_files(tmp_path, monkeypatch):
    """As `basilar run demo` plays it: an install from a wheel has the demo's files in site-packages only."""
    monkeypatch.chdir(tmp_path)
    explicit = ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH), "--non-target", str(DEMO_NON_TARGET),
                "--json"]
    short = CliRunner().invoke(main, ["eval-stream", "default", "demo", "--json"])
    assert short.exit_code == 0, short.output
    assert json.loads(short.output) == json.loads(CliRunner().invoke(main, explicit).output)
    missing = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO)])
    assert missing.exit_code == 2 and "Missing option '--truth'" in missing.output


def test_eval_stream_counts_false_alarms_in_the_demos_non_target_speech():
    args = ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH), "--non-target", str(DEMO_NON_TARGET)]
    report = json.loads(CliRunner().invoke(main, args + ["--json"]).output)
    assert report["non_target_speech_s"] == pytest.approx(10.4, abs=0.1)  # six phrases, without their silent ends
    speech = [w for w in read_truth(DEMO_NON_TARGET, header=NON_TARGET_HEADER) if w.label == "speech"]
    in_speech = [e for e in report["false_alarm_events"]
                 if any(e["start_s"] < w.end_s + 1.0 and e["end_s"] > w.start_s for w in speech)]
    assert report["false_alarms_in_speech"] == len(in_speech) <= report["off_word_false_alarms"]
    assert report["false_alarms_per_speech_minute"] == pytest.approx(len(in_speech) / (10.424 / 60), abs=0.01)
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0 and "of non-target speech:" in text.output


def test_a_non_target_file_with_the_wrong_header_is_a_clear_error():
    result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH),
                                       "--non-target", str(DEMO_TRUTH)])
    assert result.exit_code == 1 and "header 'kind,start_s,end_s'" in result.output


def test_eval_stream_refuses_truth_labels_the_bundle_does_not_know(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("label,start_s,end_s\nhello,1.0,1.5\n")
    result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(truth)])
    assert result.exit_code == 1
    assert "label(s) 'hello' that the bundle does not know" in result.output


def test_a_truth_file_that_runs_past_the_recording_is_refused(tmp_path):
    samples, rate = soundfile.read(DEMO, dtype="int16")
    first10 = tmp_path / "first10.wav"
    soundfile.write(first10, samples[:10 * rate], rate)
    result = CliRunner().invoke(main, ["eval-stream", "default", str(first10), "--truth", str(DEMO_TRUTH)])
    after = [w for w in read_truth(DEMO_TRUTH) if w.start_s >= 10.0]
    assert result.exit_code == 1
    assert (f"{DEMO_TRUTH} has {len(after)} word(s) starting at or after the end of {first10} (10.00 s long; the "
            f"last starts at {after[-1].start_s:.2f} s)") in result.output
    words = tmp_path / "words.csv"  # the truth that fits, with the whole demo's non-target file
    words.write_text("label,start_s,end_s\n" + "".join(f"{w.label},{w.start_s},{w.end_s}\n"
                                                      for w in read_truth(DEMO_TRUTH) if w.end_s < 10.0))
    others = [w for w in read_truth(DEMO_NON_TARGET, header=NON_TARGET_HEADER) if w.start_s >= 10.0]
    result = CliRunner().invoke(main, ["eval-stream", "default", str(first10), "--truth", str(words),
                                       "--non-target", str(DEMO_NON_TARGET)])
    assert result.exit_code == 1 and f"{DEMO_NON_TARGET} has {len(others)} stretch(es) starting at or after" in \
        result.output


def test_eval_stream_warns_about_audio_below_the_bundles_rate(tmp_path):
    samples, rate = soundfile.read(DEMO, dtype="float32")
    low = tmp_path / "low.wav"
    soundfile.write(low, soxr.resample(samples, rate, 4000), 4000, subtype="PCM_16")
    result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "eval-stream", "default", str(low),
                             "--truth", str(DEMO_TRUTH), "--json"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"basilar: warning: {low} is sampled at 4000 Hz, below the bundle's 8000 Hz" in result.stderr
    assert json.loads(result.stdout)["words"] == 20  # the warning stays out of the JSON


def test_eval_stream_with_a_bad_truth_file_is_a_clear_error(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("word,when\n")
    result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(truth)])
    assert result.exit_code == 1 and "header 'label,start_s,end_s'" in result.output


def test_the_text_report_rounds_each_rate_once():
    from firmware_tools.eval_stream_cmd import format_report

    speech = [TruthWord("speech", 0.0, 735.96)]  # 10 false alarms in it: 0.8153 per minute
    alarms = [det("1", 10.0 + 60 * i, 10.5 + 60 * i) for i in range(10)]
    score = score_stream(alarms, [TruthWord("3", 740.0, 740.5)], 800.0, non_target=speech)
    assert score.to_dict()["false_alarms_per_speech_minute"] == 0.815  # the JSON keeps three decimals
    text = format_report(score, "a.wav", "0" * 64)
    assert "(in 736.0 s of non-target speech: 0.82 per minute)" in text
    assert "0.0%" in text and "(45.0 per hour;" in text


def test_a_missing_non_target_file_is_a_clear_error(tmp_path):
    args = ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH), "--non-target"]
    result = CliRunner().invoke(main, args + [str(tmp_path / "none.csv")])
    assert result.exit_code == 1 and f"non-target file not found: {tmp_path / 'none.csv'}" in result.output


def test_trailing_empty_fields_of_a_spreadsheet_are_read(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("label,start_s,end_s\n3,1.0,1.5,\n4,2.0,2.5,,\n")
    assert [(w.label, w.start_s, w.end_s) for w in read_truth(path)] == [("3", 1.0, 1.5), ("4", 2.0, 2.5)]


def test_a_non_target_kind_is_speech_or_noise_in_any_case(tmp_path):
    path = tmp_path / "others.csv"
    path.write_text("kind,start_s,end_s\nSpeech,1.0,2.0\n NOISE ,3.0,4.0\n")
    assert read_truth(path, header=NON_TARGET_HEADER) == [TruthWord("speech", 1.0, 2.0), TruthWord("noise", 3.0, 4.0)]
    path.write_text("kind,start_s,end_s\nspeech,1.0,2.0\nspeach,3.0,4.0\n")  # a typo would hide the speech
    with pytest.raises(TruthFileError, match="line 3: unknown kind 'speach'; the kinds are speech, noise"):
        read_truth(path, header=NON_TARGET_HEADER)
    path.write_text("kind,start_s,end_s\nSpeech,0,50\n")
    result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(DEMO_TRUTH),
                                       "--non-target", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["non_target_speech_s"] == 50.0


def test_a_rate_with_nothing_to_divide_by_is_none_not_zero():
    from firmware_tools.eval_stream_cmd import format_report

    score = score_stream([det("3", 1.0, 1.5)], [], 60.0, non_target=[])  # no words, and no other sound listed
    report = score.to_dict()
    assert report["words"] == 0 and report["hit_rate"] is None and report["false_alarms_per_hour"] == 60.0
    assert report["latency"] is None and report["timing"] is None
    assert (report["non_target_speech_s"], report["false_alarms_in_speech"],
            report["false_alarms_per_speech_minute"]) == (0.0, 0, None)
    text = format_report(score, "a.wav", "0" * 64)
    assert "hits             0  (-)" in text and "(60.0 per hour;" in text
    assert "(in 0.0 s of non-target speech: - per minute)" in text
    nothing = score_stream([], [], 0.0)  # no audio
    assert nothing.to_dict()["false_alarms_per_hour"] is None
    assert "(- per hour;" in format_report(nothing, "a.wav", "0" * 64)
    assert "non_target_speech_s" not in nothing.to_dict()  # no non-target file given: no such figures


def test_header_only_truth_and_non_target_files_are_both_accepted(tmp_path):
    """A stream with no words, or no other sound, still measures false alarms."""
    (tmp_path / "words.csv").write_text("label,start_s,end_s\n")
    (tmp_path / "others.csv").write_text("kind,start_s,end_s\n")
    args = ["eval-stream", "default", str(DEMO), "--truth", str(tmp_path / "words.csv"),
            "--non-target", str(tmp_path / "others.csv")]
    result = CliRunner().invoke(main, args + ["--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["words"] == 0 and report["hit_rate"] is None and report["latency"] is None
    assert report["false_alarms"] == report["detections"] > 0 and report["false_alarms_per_hour"] > 0
    assert report["non_target_speech_s"] == 0.0 and report["false_alarms_per_speech_minute"] is None
    text = CliRunner().invoke(main, args).output
    assert "(-)" in text and "- per minute" in text


def test_eval_stream_refuses_an_empty_recording_and_live_input(tmp_path):
    """A recording of no samples has nothing to score (it once gave a report of nothing, exit 0); standard input and
    a microphone, which `basilar run` listens to, were looked for as files."""
    (tmp_path / "words.csv").write_text("label,start_s,end_s\n")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.int16), 16000)
    result = CliRunner().invoke(main, ["eval-stream", "default", str(empty), "--truth", str(tmp_path / "words.csv")])
    assert result.exit_code == 1 and f"{empty} holds no audio (0 samples); give the recording that" in result.output
    for audio, what in (("-", "raw PCM on standard input"), ("mic", "a microphone"), ("mic:2", "a microphone")):
        result = CliRunner().invoke(main, ["eval-stream", "default", audio, "--truth", str(DEMO_TRUTH)])
        assert result.exit_code == 2 and f"eval-stream scores a recorded file, not {what}" in result.output
        assert "record the words to a file first" in result.output and "not found" not in result.output


@pytest.mark.parametrize("data, found", [
    ("label,start_s,end_s\n3,1.0,1.5\n".encode("utf-16"), "is UTF-16 text"),  # as a spreadsheet saves "Unicode"
    ("label,start_s,end_s\n3,1.0,1.5\n".encode("utf-16-le"), "holds NUL bytes (UTF-16 text?)"),  # no byte-order mark
    ("label,start_s,end_s\n\u00e9,1.0,1.5\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at position 20)"),
])
def test_a_truth_file_that_is_not_utf8_says_to_save_it_as_utf8(tmp_path, data, found):
    path = tmp_path / "truth.csv"
    path.write_bytes(data)
    with pytest.raises(TruthFileError, match=re.escape(f"truth file {path} {found}; save it as UTF-8 (or plain CSV)")):
        read_truth(path)
    result = CliRunner().invoke(main, ["eval-stream", "default", str(DEMO), "--truth", str(path)])
    assert result.exit_code == 1 and "save it as UTF-8 (or plain CSV)" in result.output


def reference_score(detections, truth, tolerance_s, speech):
    """The scorer as first written, every detection against every word: slow on long recordings, but plain enough to
    be the golden model for the sweeps that replaced it. Returns what the score is built from."""
    def overlaps(d, w, tolerance=tolerance_s):
        return d.start_s < w.end_s + tolerance and d.end_s > w.start_s

    def on(d, w):
        return max(0.0, min(d.end_s, w.end_s) - max(d.start_s, w.start_s))

    def on_its_label(d):
        return any(w.label == d.label and overlaps(d, w, 0.0) for w in truth)

    pending = sorted(detections, key=lambda d: (d.start_s, d.end_s))
    words = sorted(truth, key=lambda w: (w.start_s, w.end_s))
    used = [False] * len(pending)
    matched = {}
    # A detection on a word first; then, with the tolerance, those on no word of their label
    for tolerance, may_take in ((0.0, lambda d: True), (tolerance_s, lambda d: not on_its_label(d))):
        for at, word in enumerate(words):
            for i, detection in enumerate(pending):
                if at not in matched and not used[i] and detection.label == word.label and may_take(detection) \
                        and overlaps(detection, word, tolerance):
                    used[i] = True
                    matched[at] = detection
    hits = [(words[at], detection) for at, detection in sorted(matched.items())]
    misses = [word for at, word in enumerate(words) if at not in matched]
    false_alarms = [d for d, taken in zip(pending, used) if not taken]
    wrong_label = sum(any(w.label != d.label and on(d, w) > 0 for w in truth) for d in false_alarms)
    given = {}
    for detection in false_alarms:
        overlap, at = max(((on(detection, w), -i) for i, w in enumerate(misses)), default=(0.0, 0))
        if overlap > 0:
            given.setdefault(-at, []).append(detection)
    heard = {word: max(given[i], key=lambda d: d.score) if i in given else None for i, word in enumerate(misses)}
    in_speech = sum(any(overlaps(d, s) for s in speech) for d in false_alarms)
    return hits, misses, false_alarms, wrong_label, heard, in_speech


def random_stream(rng):
    """Words that may overlap or touch, detections anywhere and on the matching window's edges, few labels (so
    wrong labels and ties), on a 0.25 s grid half the time (equal times) or at any float."""
    grid = rng.random() < 0.5

    def span(longest):
        start, length = rng.uniform(0, 20), rng.uniform(0, longest)
        if grid:
            start, length = round(start * 4) / 4, round(length * 4) / 4
        return start, start + length

    tolerance = rng.choice([0.0, 0.5, 1.0])
    labels = "123"[:rng.randint(1, 3)]
    truth = [TruthWord(rng.choice(labels), *span(2.0)) for _ in range(rng.randint(0, 12))]
    detections = [Detection(rng.choice(labels), rng.choice([0.9, 0.9, rng.random()]), *span(1.5))
                  for _ in range(rng.randint(0, 12))]
    for word in rng.sample(truth, min(len(truth), 3)):  # just inside or outside the window, or on its edge
        start = rng.choice([word.end_s + tolerance, math.nextafter(word.end_s + tolerance, 0), word.start_s])
        end = rng.choice([word.start_s, math.nextafter(word.start_s, 99), max(start, word.end_s)])
        detections.append(Detection(rng.choice(labels), 0.9, min(start, end), max(start, end), detected_s=end + 0.1))
    others = [TruthWord(rng.choice(["speech", "noise"]), *span(4.0)) for _ in range(rng.randint(0, 4))]
    return detections, truth, tolerance, others


def test_the_scorer_gives_what_the_plain_every_pair_scorer_gives():
    rng = random.Random(7)
    seen = [0] * 6
    for case in range(200):
        detections, truth, tolerance, others = random_stream(rng)
        score = score_stream(detections, truth, 30.0, tolerance, others)
        hits, misses, false_alarms, wrong_label, heard, in_speech = reference_score(
            detections, truth, tolerance, [s for s in others if s.label == "speech"])
        assert [(w, id(d)) for w, d in score.hits] == [(w, id(d)) for w, d in hits], case  # the very same detections
        assert score.misses == misses, case
        assert [id(d) for d in score.false_alarms] == [id(d) for d in false_alarms], case
        assert score.wrong_label == wrong_label, case
        assert {w: id(score.heard_as(w)) for w in score.misses} == {w: id(d) for w, d in heard.items()}, case
        assert score.false_alarms_in_speech == in_speech, case
        for i, count in enumerate([len(hits), len(misses), len(false_alarms), wrong_label,
                                   sum(d is not None for d in heard.values()), in_speech]):
            seen[i] += count
    assert min(seen) > 50, seen  # the cases had hits, misses, false alarms, wrong labels, heard-as and speech


def test_a_long_recording_is_scored_in_full():
    """Eleven hours: 20,000 words 2 s apart, each detected with the wrong label, a stretch of speech after each.
    (Every false alarm against every miss once took minutes here.)"""
    n = 20_000
    words = [TruthWord(str(i % 10), 2.0 * i, 2.0 * i + 0.5) for i in range(n)]
    detections = [det(str((i + 1) % 10), 2.0 * i + 0.1, 2.0 * i + 0.6) for i in range(n)]
    speech = [TruthWord("speech", 2.0 * i + 0.55, 2.0 * i + 1.0) for i in range(n)]
    report = score_stream(detections, words, 2.0 * n, non_target=speech).to_dict()
    assert report["hits"] == 0 and report["misses"] == report["false_alarms"] == report["wrong_label"] == n
    assert report["misses_heard_as_another_label"] == report["false_alarms_in_speech"] == n
    assert report["confusions"]["3"] == {"4": n // 10}
    assert report["missed"][-1]["heard_as"]["start_s"] == 2.0 * (n - 1) + 0.1


def test_labels_typed_in_another_unicode_form_name_the_bundles_label(tmp_path):
    """A truth file or --threshold-for written on a Mac spells "sept" with an e and a combining mark: it was refused
    as a label 'sépt' the bundle does not know, 'sépt' among the bundle's labels."""
    import shutil
    import unicodedata

    bundle = shutil.copytree(REPO / "edge" / "default_bundle", tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["labels"][7] = "s\u00e9pt"  # composed: as basilar train names a label
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    decomposed = unicodedata.normalize("NFD", "s\u00e9pt")
    truth = tmp_path / "truth.csv"
    truth.write_text(re.sub(r"(?m)^7,", decomposed + ",", DEMO_TRUTH.read_text()), encoding="utf-8")
    result = CliRunner().invoke(main, ["eval-stream", str(bundle), str(DEMO), "--truth", str(truth),
                                       "--non-target", str(DEMO_NON_TARGET), "--threshold-for", f"{decomposed}=0.9",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["hits"], report["misses"]) == (20, 0), report
    twice = CliRunner().invoke(main, ["run", "--bundle", str(bundle), "demo", "--threshold-for",
                                      f"{decomposed}=0.9", "--threshold-for", "s\u00e9pt=0.8"])
    assert twice.exit_code == 2 and "is given twice" in twice.output, twice.output


def test_a_detector_value_out_of_range_is_a_usage_error_as_in_basilar_run():
    """The bundle's own settings are fine, the value given is not: exit 2 (it was 1, as for a damaged bundle)."""
    result = CliRunner().invoke(main, ["eval-stream", "default", "demo", "--threshold-for", "7=1.5"])
    assert result.exit_code == 2 and "--threshold-for 7=1.5: must be a number in (0, 1]" in result.output


def test_a_recording_cut_short_is_scored_on_what_was_heard_then_fails(tmp_path):
    """It printed only the read error, every detection lost, while saying the audio "was processed"."""
    cut = tmp_path / "cut.wav"
    data = DEMO.read_bytes()
    cut.write_bytes(data[:len(data) // 2])  # the header still declares the whole demo
    heard_s = soundfile.info(cut).frames / soundfile.info(cut).samplerate
    words = read_truth(DEMO_TRUTH)
    whole = [w for w in words if w.end_s <= heard_s]
    assert 0 < len(whole) < len(words)
    result = CliRunner().invoke(main, ["eval-stream", "default", str(cut), "--truth", str(DEMO_TRUTH), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout.splitlines()[0])
    assert (report["words"], report["hits"]) == (len(whole), len(whole))  # the demo's words are all found
    assert report["cut_short"]["words_not_heard"] == len(words) - len(whole)
    assert f"{len(words) - len(whole)} word(s) of {DEMO_TRUTH} after that were not heard" in result.output
    text = CliRunner().invoke(main, ["eval-stream", "default", str(cut), "--truth", str(DEMO_TRUTH)])
    assert text.exit_code == 1 and f"{len(whole)} words, {len(whole)} detections" in text.output
