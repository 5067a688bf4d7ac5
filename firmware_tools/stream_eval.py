"""Score a continuous stream's detections against where the words really are.

Matching rule: a detection matches a truth word when it has the word's label, starts before the word's end plus
`tolerance_s` (1 s: the model may only be sure once the word is over), and ends after the word's start. Each word
takes at most one detection and each detection serves at most one word. A detection goes first to a word it overlaps
(span on span, no tolerance): words in time order, each to the earliest such detection. Only then does the tolerance
count, for the words left and the detections that overlap no word of their label, again words in time order, each to
the earliest detection that qualifies; so a word's own detection is never taken by an earlier word that was missed.
Then:

- hit: a word with a matching detection; miss: a word without one;
- false alarm: a detection that matches no word. Those on a word of another label (their span overlaps the word's
  own span: no tolerance here, as the next word may follow within it) are also counted as `wrong_label`;
- heard as: what a missed word was taken for, the highest-scoring false alarm on it (span overlapping span, no
  tolerance; none: nothing was detected there). Each false alarm is the heard-as of at most one miss, the one it
  overlaps most (ties: the earlier). It tells a word the model named wrong from one the detector never reported;
  `confusions` counts them per word label;
- latency: when the detection was reported (its `detected_s`; its end for detections without one) minus the
  word's end;
- timing: how far the hits' start and end times are from the word's (absolute errors).

Optionally, the stretches of other sound in the stream (rows `kind,start_s,end_s` in the same CSV format, kind
`speech` for non-target speech or `noise` for other sounds, as make_demo writes them, in any case): false alarms
that overlap a `speech` stretch by the same rule (with the tolerance) are counted per minute of non-target speech,
the measure a keyword spotter is usually held to. The minutes are those of the union of the `speech` stretches,
clipped to the recording: overlapping or repeated rows count once, and a stretch running past the end counts only up
to it.

A rate with nothing to divide by (the hit rate of a stream with no words, false alarms per hour of no audio, per
minute of no non-target speech) is None, not 0: a stream with no words still measures false alarms.
"""
from __future__ import annotations

import bisect
import codecs
import csv
import dataclasses
import functools
import heapq
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.detector import Detection
from edge.sinks import Sink

DEFAULT_TOLERANCE_S = 1.0
SPEECH = "speech"  # the kind of a non-target stretch that is speech
NON_TARGET_KINDS = (SPEECH, "noise")  # the kinds make_demo writes; another is a typo that would hide speech
NOTHING = "nothing"  # in `confusions`: a missed word with no detection on it


class TruthFileError(ValueError):
    """A truth CSV that cannot be read; the message names the file, the line and the fix."""


@dataclasses.dataclass(frozen=True)
class TruthWord:
    label: str
    start_s: float
    end_s: float


TRUTH_HEADER = ("label", "start_s", "end_s")
NON_TARGET_HEADER = ("kind", "start_s", "end_s")


def read_truth(path: str | Path, header: tuple[str, str, str] = TRUTH_HEADER) -> list[TruthWord]:
    """Rows of `label,start_s,end_s` (with that header; or another first column name), sorted by start time.
    The columns may come in any order and among others (ignored), as a spreadsheet may write them."""
    path = Path(path)
    what = "non-target file" if header == NON_TARGET_HEADER else "truth file"
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not a column name
    except FileNotFoundError:
        raise TruthFileError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as err:  # a spreadsheet's "Unicode text" is UTF-16
        byte, at = err.object[err.start], err.start
        utf16 = err.object[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
        found = "UTF-16 text" if utf16 else f"not UTF-8 text (byte 0x{byte:02x} at position {at})"
        raise TruthFileError(f"{what} {path} is {found}; save it as UTF-8 (or plain CSV)") from None
    except OSError as err:
        raise TruthFileError(f"cannot read {what} {path}: {err}") from None
    if "\0" in text:  # UTF-16 without its byte-order mark reads as UTF-8 with a NUL after each letter
        raise TruthFileError(f"{what} {path} holds NUL bytes (UTF-16 text?); save it as UTF-8 (or plain CSV)")
    rows = csv.reader(text.splitlines())
    found = [h.strip() for h in next(rows, [])]
    names = ",".join(header)
    if not set(header) <= set(found):
        raise TruthFileError(f"{path}: the first line must be the header '{names}' (got {','.join(found)!r})")
    at = [found.index(name) for name in header]
    words = []
    for line, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        while len(row) > len(found) and not row[-1].strip():  # a spreadsheet's trailing empty columns
            row = row[:-1]
        if len(row) > len(found):
            raise TruthFileError(f"{path} line {line}: {len(row)} fields under a header of {len(found)} "
                                 f"({','.join(found)}), got {','.join(row)!r}; write times with a decimal point "
                                 "(7.360, not 7,360) and quote any field holding a comma")
        try:
            label, start, end = (row[at[0]].strip(), float(row[at[1]]), float(row[at[2]]))
        except (IndexError, ValueError):
            raise TruthFileError(f"{path} line {line}: expected {names} with times in seconds, got "
                                 f"{','.join(row)!r}") from None
        if not label or not (math.isfinite(start) and math.isfinite(end)) or not 0 <= start <= end:
            raise TruthFileError(f"{path} line {line}: need a {header[0]} and 0 <= start_s <= end_s, got "
                                 f"{','.join(row)!r}")
        if header == NON_TARGET_HEADER:
            if label.lower() not in NON_TARGET_KINDS:
                raise TruthFileError(f"{path} line {line}: unknown kind {label!r}; the kinds are "
                                     f"{', '.join(NON_TARGET_KINDS)} (in any case)")
            label = label.lower()  # "Speech", as a spreadsheet may capitalise it, is speech
        words.append((TruthWord(label, start, end), line))
    words.sort(key=lambda pair: (pair[0].start_s, pair[0].end_s))
    if header == TRUTH_HEADER:
        _refuse_overlapping_words(path, words)
    return [word for word, _ in words]


def _refuse_overlapping_words(path: Path, words: list[tuple[TruthWord, int]]) -> None:
    """Two words of one label that overlap (a row pasted twice, say) cannot both be hit: the detector reports a
    label once at a time, so one of them would always count as a miss."""
    last: dict[str, tuple[TruthWord, int]] = {}
    for word, line in words:  # in start order
        before = last.get(word.label)
        if before and word.start_s < before[0].end_s:
            raise TruthFileError(
                f"{path} lines {min(line, before[1])} and {max(line, before[1])}: two {word.label!r} words overlap "
                f"({before[0].start_s:g}-{before[0].end_s:g} s and {word.start_s:g}-{word.end_s:g} s), and one "
                "detection can be only one of them; remove the repeated row, or make them one word")
        last[word.label] = (word, line)


def _overlaps(detection: Detection, word: TruthWord, tolerance_s: float) -> bool:
    return detection.start_s < word.end_s + tolerance_s and detection.end_s > word.start_s


def _on(detection: Detection, word: TruthWord) -> float:
    """How long `detection`'s span overlaps `word`'s own span (no tolerance); 0 when they do not overlap."""
    return max(0.0, min(detection.end_s, word.end_s) - max(detection.start_s, word.start_s))


def _union_s(stretches: Sequence[TruthWord], duration_s: float) -> float:
    """Seconds covered by `stretches` within [0, duration_s], each moment counted once."""
    total, reach = 0.0, 0.0
    for start, end in sorted((max(0.0, s.start_s), min(duration_s, s.end_s)) for s in stretches):
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


@dataclasses.dataclass
class StreamScore:
    """As score_stream makes it: the misses and false alarms in start order, which the look-ups below rely on."""

    duration_s: float
    tolerance_s: float
    hits: list[tuple[TruthWord, Detection]]
    misses: list[TruthWord]
    false_alarms: list[Detection]
    wrong_label: int  # false alarms on (span overlapping span, no tolerance) a word of another label
    non_target: Sequence[TruthWord] | None = None  # stretches of other sound (None: not given; [] lists none)

    @property
    def speech(self) -> list[TruthWord]:
        return [s for s in self.non_target or () if s.label == SPEECH]

    @property
    def speech_s(self) -> float:
        """Seconds of non-target speech: the union of the stretches, clipped to the recording."""
        return _union_s(self.speech, self.duration_s)

    @functools.cached_property
    def false_alarms_in_speech(self) -> int:
        speech = sorted(self.speech, key=lambda s: s.start_s)
        return sum(any(_overlaps(d, speech[i], self.tolerance_s) for i in near)
                   for d, near in zip(self.false_alarms, _near(self.false_alarms, speech, self.tolerance_s)))

    @property
    def false_alarms_per_speech_minute(self) -> float | None:
        seconds = self.speech_s
        return self.false_alarms_in_speech / (seconds / 60) if seconds else None

    @property
    def words(self) -> int:
        return len(self.hits) + len(self.misses)

    @property
    def hit_rate(self) -> float | None:
        return len(self.hits) / self.words if self.words else None

    @property
    def false_alarms_per_hour(self) -> float | None:
        return len(self.false_alarms) * 3600.0 / self.duration_s if self.duration_s > 0 else None

    @property
    def latencies_s(self) -> list[float]:
        return [(detection.end_s if detection.detected_s is None else detection.detected_s) - word.end_s
                for word, detection in self.hits]

    def timing(self) -> dict | None:
        """How far the hits' start and end times are from the truth's (absolute errors, seconds)."""
        if not self.hits:
            return None
        return {"start_error_s": _spread(np.abs([d.start_s - w.start_s for w, d in self.hits])),
                "end_error_s": _spread(np.abs([d.end_s - w.end_s for w, d in self.hits]))}

    def heard_as(self, word: TruthWord) -> Detection | None:
        """What a missed word was taken for: the highest-scoring of the false alarms given to it (None for a word
        that is not a miss)."""
        return self._heard.get(word)

    @functools.cached_property
    def _heard(self) -> dict[TruthWord, Detection | None]:
        """Each miss's `heard_as`, found once for the report, the confusions and the text lines. Each false alarm
        goes to the miss whose span it overlaps most (no tolerance; ties: the earlier miss), so one false alarm is
        never the heard-as of two misses, nor of a word it only follows."""
        given: dict[int, list[Detection]] = {}
        for detection, near in zip(self.false_alarms, _near(self.false_alarms, self.misses)):
            overlap, at = max(((_on(detection, self.misses[i]), -i) for i in near), default=(0.0, 0))
            if overlap > 0:
                given.setdefault(-at, []).append(detection)
        return {word: max(given[i], key=lambda d: d.score) if i in given else None
                for i, word in enumerate(self.misses)}

    def confusions(self) -> dict[str, dict[str, int]]:
        """Per missed word's label, what those words were heard as (NOTHING: no detection)."""
        table: dict[str, Counter] = {}
        for word in self.misses:
            heard = self.heard_as(word)
            table.setdefault(word.label, Counter())[NOTHING if heard is None else heard.label] += 1
        return {label: dict(sorted(row.items(), key=lambda item: (-item[1], item[0])))
                for label, row in sorted(table.items())}

    def per_label(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for word, _ in self.hits:
            table.setdefault(word.label, {"hits": 0, "misses": 0})["hits"] += 1
        for word in self.misses:
            table.setdefault(word.label, {"hits": 0, "misses": 0})["misses"] += 1
        return dict(sorted(table.items()))

    def to_dict(self) -> dict:
        latencies = self.latencies_s
        latency = ({"mean_s": round(float(np.mean(latencies)), 3), **_spread(latencies, suffix="_s")}
                   if latencies else None)
        hit_rate, per_hour = self.hit_rate, self.false_alarms_per_hour
        return {
            "duration_s": round(self.duration_s, 3),
            "words": self.words,
            "detections": len(self.hits) + len(self.false_alarms),
            "hits": len(self.hits),
            "misses": len(self.misses),
            "hit_rate": None if hit_rate is None else round(hit_rate, 4),
            "false_alarms": len(self.false_alarms),
            "wrong_label": self.wrong_label,
            "false_alarms_per_hour": None if per_hour is None else round(per_hour, 2),
            "off_word_false_alarms": len(self.false_alarms) - self.wrong_label,
            "latency": latency,
            "timing": self.timing(),
            "tolerance_s": self.tolerance_s,
            "per_label": self.per_label(),
            "misses_heard_as_another_label": sum(self.heard_as(w) is not None for w in self.misses),
            "confusions": self.confusions(),
            "missed": [self._miss_dict(w) for w in self.misses],
            "false_alarm_events": [d.to_dict() for d in self.false_alarms],
            **self._speech_dict(),
        }

    def _miss_dict(self, word: TruthWord) -> dict:
        heard = self.heard_as(word)
        return {**dataclasses.asdict(word), "heard_as": None if heard is None else heard.to_dict()}

    def _speech_dict(self) -> dict:
        if self.non_target is None:
            return {}
        per_minute = self.false_alarms_per_speech_minute
        return {"non_target_speech_s": round(self.speech_s, 3), "false_alarms_in_speech": self.false_alarms_in_speech,
                "false_alarms_per_speech_minute": None if per_minute is None else round(per_minute, 3)}


def score_stream(detections: Sequence[Detection], truth: Sequence[TruthWord], duration_s: float,
                 tolerance_s: float = DEFAULT_TOLERANCE_S,
                 non_target: Sequence[TruthWord] | None = None) -> StreamScore:
    """Match detections to truth words by the rule in this module's docstring. `non_target`: the stretches of other
    sound (None: none given, so no figures for non-target speech)."""
    pending = sorted(detections, key=lambda d: (d.start_s, d.end_s))
    words = sorted(truth, key=lambda w: (w.start_s, w.end_s))
    # First each word takes a detection on it: within the tolerance after a missed word the next word of its label
    # may have started, and the detection on that word is that word's own.
    matched = _match(words, range(len(words)), pending, range(len(pending)), 0.0)
    taken = set(matched.values())
    free = [i for i in range(len(pending)) if i not in taken]
    # Then the tolerance, for the words left and the detections on no word of their label (one on a word is that
    # word's, or one too many for it: a false alarm)
    off_words = [i for i, near in zip(free, _near([pending[i] for i in free], words))
                 if not any(words[w].label == pending[i].label and _overlaps(pending[i], words[w], 0.0) for w in near)]
    matched.update(_match(words, [w for w in range(len(words)) if w not in matched], pending, off_words, tolerance_s))
    hits = [(words[w], pending[i]) for w, i in sorted(matched.items())]
    misses = [word for w, word in enumerate(words) if w not in matched]
    used = set(matched.values())
    false_alarms = [d for i, d in enumerate(pending) if i not in used]
    wrong_label = sum(any(words[i].label != d.label and _on(d, words[i]) > 0 for i in near)
                      for d, near in zip(false_alarms, _near(false_alarms, words)))
    return StreamScore(duration_s, tolerance_s, hits, misses, false_alarms, wrong_label,
                       None if non_target is None else list(non_target))


def _match(words: Sequence[TruthWord], word_ids, detections: Sequence[Detection], detection_ids,
           tolerance_s: float) -> dict[int, int]:
    """Words `word_ids` (indices into `words`, in time order), each to the earliest of the detections
    `detection_ids` (indices into `detections`, in start order) of its label that starts before the word's end plus
    `tolerance_s` and ends after its start; returns {word index: detection index}."""
    by_label: dict[str, list[int]] = {}  # each label's detections, in start order
    for i in detection_ids:
        by_label.setdefault(detections[i].label, []).append(i)
    passed = dict.fromkeys(by_label, 0)  # per label, how many of its detections no later word can take
    matched = {}
    for w in word_ids:
        # Those passed over end before this word starts, so before every later word does too: each detection is
        # looked at once, not once per word.
        word = words[w]
        queue, at = by_label.get(word.label, []), passed.get(word.label, 0)
        while at < len(queue) and detections[queue[at]].start_s < word.end_s + tolerance_s:
            i, at = queue[at], at + 1
            if detections[i].end_s > word.start_s:
                matched[w] = i
                break
        passed[word.label] = at
    return matched


def _near(events: Sequence[Detection], spans: Sequence[TruthWord], tolerance_s: float = 0.0):
    """For each of `events` (sorted by start), the indices of the `spans` (sorted by start) it may overlap: every
    span that starts before the event ends and ends (plus `tolerance_s`) after it starts, and maybe a few more, for
    the caller's own rule to weed out. A sweep, so the cost is the pairs found, not events x spans."""
    starts = [s.start_s for s in spans]
    begun, ongoing = 0, []  # spans starting before the event; a heap of (end + tolerance, index) of those not over
    for event in events:
        while begun < len(spans) and spans[begun].start_s < event.start_s:
            heapq.heappush(ongoing, (spans[begun].end_s + tolerance_s, begun))
            begun += 1
        while ongoing and ongoing[0][0] <= event.start_s:  # over before this event starts, so before later ones
            heapq.heappop(ongoing)
        yield [i for _, i in ongoing] + list(range(begun, bisect.bisect_left(starts, event.end_s)))


class _Collect(Sink):
    """A sink that keeps the detections, and passes the run's warnings (e.g. audio below the bundle's rate) on to
    standard error as `basilar run` does."""

    def __init__(self):
        self.detections: list[Detection] = []

    def detection(self, event: Detection) -> None:
        self.detections.append(event)

    def log(self, text: str) -> None:
        print(f"basilar: {text}", file=sys.stderr, flush=True)


def detect_file(pipeline, audio_path: str | Path) -> tuple[list[Detection], float]:
    """Stream a file through a pipeline exactly as `basilar run` does; returns (detections, audio seconds)."""
    detections, seconds, error = detect_heard(pipeline, audio_path)
    if error is not None:
        raise error
    return detections, seconds


def detect_heard(pipeline, audio_path: str | Path):
    """As detect_file, for a file that may end early (cut short, damaged): (detections, seconds of audio heard, the
    SourceError that ended the reading, or None), the detections those seconds gave."""
    from edge.runloop import RunLoop
    from edge.sources import FileSource, SourceError

    collect = _Collect()
    with FileSource(audio_path, pipeline.sample_rate) as source:
        loop = RunLoop(pipeline, source, [collect], health_every_s=0)
        try:
            loop.run()
            error = None
        except SourceError as err:  # the run loop wrote out every detection before raising
            error = err
    return collect.detections, loop.stats.audio_s, error


def _spread(values, suffix: str = "") -> dict[str, float]:
    """Median, 90th percentile and maximum of `values`, rounded to the millisecond."""
    return {f"median{suffix}": round(float(np.median(values)), 3),
            f"p90{suffix}": round(float(np.percentile(values, 90)), 3), f"max{suffix}": round(float(np.max(values)), 3)}
