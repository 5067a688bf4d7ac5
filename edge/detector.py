"""Turn the model's per-hop label posteriors into discrete detections.

The model emits, every hop, one posterior per label (background excluded). The labels are mutually exclusive
classes (one word at a time), so the detector runs a single event state machine over all of them:

1. Smoothing: each label's posterior is averaged over the last `smoothing_ms` (causal moving average).
2. Onset: with `trigger="label"`, an event opens on the first hop where some label's smoothed score reaches that
   label's threshold; with `trigger="word"`, where the smoothed scores of all labels together (how sure the model
   is that some word is there, whichever) reach `threshold`. Not while the previous event ended less than
   `refractory_ms` ago (unless a pause ended it: step 5).
3. Hysteresis: the event stays open while that score stays at or above `threshold * release_ratio`, so a dip
   mid-word does not split it. An event longer than `max_duration_ms` is closed anyway, so a sustained sound still
   gets reported; with end-pointing, so is one whose word a pause ended (step 5).
4. Decision: when the event closes, it is reported with the label whose peak smoothed score rose furthest above its
   own threshold ("label"), or whose smoothed score summed over the event is largest relative to its threshold
   ("word": a word the model hesitates between two labels on is still found, and named by where most of the
   posterior went, as a clip is classified); the score is that label's peak. Events shorter than
   `min_duration_ms` are dropped, and so are events whose score stays under `min_score`: the model was sure that
   some word was there, but not which.
5. End-pointing (`end_quiet_ms` > 0; edge/endpoint.py): an event is reported only if the input's level fell back
   to a pause for `end_quiet_ms` in a row while it was open, so a word is heard on its own, not inside running
   speech. The end of the stream counts as a pause.
6. Word times: with end-pointing, a detection's start and end are where its word is, found in the same levels (it
   ends where the pause begins, and begins where its sound rose out of the quiet before it); `detected_s` is when
   the event closed. Without end-pointing, start and end are the event's own hops.

Times are seconds of audio from the start of the stream: hop i covers [i * hop, (i + 1) * hop).
"""
from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge import endpoint

# Defaults used when a bundle's manifest leaves a key out.
DEFAULTS = {
    "smoothing_ms": 100.0,
    "threshold": 0.6,
    "release_ratio": 0.5,
    "refractory_ms": 500.0,
    "min_duration_ms": 30.0,
    "max_duration_ms": 3000.0,
    "trigger": "label",
    "end_quiet_ms": 0.0,  # off: bundles from before end-pointing behave as they did
    "end_quiet_db": 20.0,
    "min_score": 0.0,  # off: bundles from before it behave as they did
}
TRIGGERS = ("label", "word")
# Upper bounds: the detector keeps this much history per label, so a mistyped value must not ask for gigabytes.
MAX_SMOOTHING_MS = 2000.0
MAX_EVENT_MS = 60000.0


class DetectorSettingsError(ValueError):
    """Detector settings that cannot work; the message names the setting and the valid range."""


def same_label(name: str) -> str:
    """A label as labels are compared: in one Unicode form (NFC), so that a Mac's "é" (e and a combining mark,
    typed or in a file name) names the label "é" a bundle trained elsewhere has."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def _per_label(thresholds) -> dict:
    """A copy of the per-label thresholds, refused by name when they are no label: threshold object (dict() of a
    list says "cannot convert dictionary update sequence element #0")."""
    if not isinstance(thresholds, Mapping):
        raise DetectorSettingsError(f"thresholds={thresholds!r}: must be an object of per-label thresholds, as "
                                    '{"yes": 0.8}')
    return {same_label(label): value for label, value in thresholds.items()}


@dataclasses.dataclass(frozen=True)
class Detection:
    label: str
    score: float  # peak smoothed posterior of `label` during the event, 0..1
    start_s: float  # where the word began, seconds from stream start
    end_s: float  # where it ended
    timestamp: float | None = None  # wall-clock Unix time when it was detected (live sources only)
    detected_s: float | None = None  # when the detector reported it, seconds from stream start

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "score": round(self.score, 4),
               "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3)}
        if self.detected_s is not None:
            out["detected_s"] = round(self.detected_s, 3)
        if self.timestamp is not None:
            out["timestamp"] = round(self.timestamp, 3)
        return out


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    hop_ms: float
    smoothing_ms: float = DEFAULTS["smoothing_ms"]
    threshold: float = DEFAULTS["threshold"]
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)  # per-label, override `threshold`
    release_ratio: float = DEFAULTS["release_ratio"]
    refractory_ms: float = DEFAULTS["refractory_ms"]
    min_duration_ms: float = DEFAULTS["min_duration_ms"]
    max_duration_ms: float = DEFAULTS["max_duration_ms"]
    trigger: str = DEFAULTS["trigger"]
    end_quiet_ms: float = DEFAULTS["end_quiet_ms"]
    end_quiet_db: float = DEFAULTS["end_quiet_db"]
    min_score: float = DEFAULTS["min_score"]

    def __post_init__(self):
        object.__setattr__(self, "thresholds", _per_label(self.thresholds))
        self.validate()

    @classmethod
    def from_manifest(cls, detector: Mapping[str, Any] | None, *, hop_ms: float,
                      **overrides: Any) -> DetectorSettings:
        """Settings from a bundle manifest's "detector" object, then `overrides` (None means "keep").

        `overrides["thresholds"]` is merged into the manifest's per-label thresholds. Unknown manifest keys are
        ignored so that newer bundles still load.
        """
        if detector is not None and not isinstance(detector, Mapping):
            raise DetectorSettingsError(f"the detector settings must be a JSON object, not {type(detector).__name__}")
        fields = cls.manifest_keys()
        values = {k: v for k, v in (detector or {}).items() if k in fields}
        changes = {k: v for k, v in overrides.items() if v is not None}
        try:
            if "thresholds" in changes:
                changes["thresholds"] = {**_per_label(values.get("thresholds") or {}), **changes["thresholds"]}
            return cls(hop_ms=hop_ms, **{**values, **changes})
        except (TypeError, ValueError) as err:
            raise DetectorSettingsError(f"the detector settings are invalid: {err}") from err

    @classmethod
    def manifest_keys(cls) -> set[str]:
        """The settings a manifest's "detector" object may hold (the hop comes from the front end)."""
        return {f.name for f in dataclasses.fields(cls)} - {"hop_ms"}

    def with_overrides(self, **overrides: Any) -> DetectorSettings:
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "thresholds" in changes:
            changes["thresholds"] = {**self.thresholds, **changes["thresholds"]}
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DetectorSettingsError(f"{name}={value!r}: must be a finite number")
            return value

        if number("hop_ms") <= 0:
            raise DetectorSettingsError(f"hop_ms={self.hop_ms}: must be positive")
        for name in ("smoothing_ms", "refractory_ms", "min_duration_ms"):
            if number(name) < 0:
                raise DetectorSettingsError(f"{name}={getattr(self, name)}: must be 0 or more milliseconds")
        if self.smoothing_ms > MAX_SMOOTHING_MS:
            raise DetectorSettingsError(f"smoothing_ms={self.smoothing_ms}: must be at most {MAX_SMOOTHING_MS:g} "
                                        "milliseconds (a word lasts well under a second)")
        if number("max_duration_ms") > MAX_EVENT_MS:
            raise DetectorSettingsError(f"max_duration_ms={self.max_duration_ms}: must be at most {MAX_EVENT_MS:g} "
                                        "milliseconds")
        if not 0 <= number("end_quiet_ms") < self.max_duration_ms:
            raise DetectorSettingsError(f"end_quiet_ms={self.end_quiet_ms}: must be 0 (off) or a pause shorter "
                                        f"than max_duration_ms={self.max_duration_ms}")
        if self.end_quiet_ms > 0 and self.frames(self.end_quiet_ms) == 0:  # end-pointing silently off
            raise DetectorSettingsError(f"end_quiet_ms={self.end_quiet_ms}: a pause of at least one hop "
                                        f"({self.hop_ms:g} ms; rounded to whole hops), or 0 (off)")
        if not 0 < number("end_quiet_db") <= 60:
            raise DetectorSettingsError(f"end_quiet_db={self.end_quiet_db}: must be in (0, 60] dB, how far below "
                                        "the word a pause must fall")
        if not 0 <= number("min_score") <= 1:
            raise DetectorSettingsError(f"min_score={self.min_score}: must be in [0, 1], the lowest peak score of "
                                        "the reported label (0: off)")
        if number("max_duration_ms") <= self.min_duration_ms:
            raise DetectorSettingsError(f"max_duration_ms={self.max_duration_ms}: must exceed "
                                        f"min_duration_ms={self.min_duration_ms}")
        if not 0 < number("release_ratio") <= 1:
            raise DetectorSettingsError(f"release_ratio={self.release_ratio}: must be in (0, 1]; the event ends "
                                        "when the score falls below threshold * release_ratio")
        if self.trigger not in TRIGGERS:
            raise DetectorSettingsError(f"trigger={self.trigger!r}: must be 'label' (a label's own score opens an "
                                        "event) or 'word' (all labels' scores together do)")
        for label, value in [("threshold", self.threshold), *self.thresholds.items()]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                what = "threshold" if label == "threshold" else f"threshold for label {label!r}"
                raise DetectorSettingsError(f"{what}={value!r}: must be a number in (0, 1]")

    def threshold_for(self, label: str) -> float:
        return float(self.thresholds.get(same_label(label), self.threshold))

    def frames(self, ms: float) -> int:
        """A duration in whole hops (rounded)."""
        return int(round(ms / self.hop_ms))


class Detector:
    """Streaming detector: feed posteriors in chunks of any size; the detections do not depend on the chunking."""

    def __init__(self, settings: DetectorSettings, labels: Sequence[str]):
        unknown = sorted(set(settings.thresholds) - {same_label(label) for label in labels})
        if unknown:
            raise DetectorSettingsError(f"threshold given for unknown label(s) {', '.join(map(repr, unknown))}; "
                                        f"this bundle's labels are {', '.join(map(repr, labels))}")
        self.settings = settings
        self.labels = list(labels)
        self._hop_s = settings.hop_ms / 1000.0
        self._smooth_frames = max(1, settings.frames(settings.smoothing_ms))
        self._refractory_frames = settings.frames(settings.refractory_ms)
        self._min_frames = settings.frames(settings.min_duration_ms)
        self._max_frames = max(1, settings.frames(settings.max_duration_ms))
        self._thresholds = np.array([settings.threshold_for(label) for label in self.labels], dtype=np.float64)
        self._quiet_hops = settings.frames(settings.end_quiet_ms)
        self._sure_quiet_hops = max(1, round(self._quiet_hops * endpoint.SURE_PAUSE_SHARE)) if self._quiet_hops else 0
        self._before_hops = settings.frames(endpoint.BEFORE_S * 1000)
        self._word_gap_hops = max(1, settings.frames(endpoint.WORD_GAP_S * 1000))
        self._floor_hops = settings.frames(endpoint.FLOOR_S * 1000)
        self._keep_levels = max(self._floor_hops, self._before_hops + self._max_frames) + 1
        self.reset()

    def reset(self, at_frame: int = 0) -> None:
        """Forget the stream; `at_frame` continues the stream clock (a new bundle swapped in mid-stream)."""
        # The last (smooth_frames - 1) posteriors, zero before the stream starts.
        self._history = np.zeros((self._smooth_frames - 1, len(self.labels)), dtype=np.float64)
        self._frame = at_frame  # index of the next hop
        self._open = False
        self._onset = 0
        self._peaks = np.zeros(len(self.labels), dtype=np.float64)  # per-label peak smoothed score, open event
        self._mass = np.zeros(len(self.labels), dtype=np.float64)  # per-label summed smoothed score, open event
        self._quiet_from = at_frame  # first hop at which a new event may open (refractory)
        self._levels = np.zeros(0, dtype=np.float64)  # recent input levels (dBFS), for end-pointing
        self._levels_from = at_frame  # the hop of self._levels[0]
        self._last_word_end = at_frame  # a word's start is looked for after the last reported word's end
        self._lingering: int | None = None  # the label of a word that a pause ended, while its score lingers on
        self._after_word = False  # the open event began while it did ...
        self._heard_own = False  # ... and its other labels have since reached the trigger by themselves

    @property
    def frames_seen(self) -> int:
        return self._frame

    @property
    def uses_levels(self) -> bool:
        """Whether `update` needs the input's per-hop levels (end-pointing is on)."""
        return self._quiet_hops > 0

    def update(self, posteriors: np.ndarray, levels: np.ndarray | None = None) -> list[Detection]:
        """Feed (frames, labels) posteriors for the next hops, and the input's level (dBFS) at each hop
        (endpoint.HopLevels; needed when `end_quiet_ms` > 0); returns the events that closed in them."""
        posteriors = np.asarray(posteriors, dtype=np.float64)
        if posteriors.ndim == 1:
            posteriors = posteriors[None, :]
        if posteriors.ndim != 2 or posteriors.shape[1] != len(self.labels):
            raise ValueError(f"posteriors must have shape (frames, {len(self.labels)}), got {posteriors.shape}")
        if len(posteriors) == 0:
            return []
        if not ((posteriors >= 0) & (posteriors <= 1)).all():  # one pass; NaN fails both comparisons
            # A broken model: NaN would hold events open, pass min_score and reach the sinks as invalid JSON.
            posteriors = np.clip(np.nan_to_num(posteriors, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        if self._quiet_hops:
            if levels is None or len(levels) != len(posteriors):
                raise ValueError(f"end_quiet_ms={self.settings.end_quiet_ms} needs the input's level at each of the "
                                 f"{len(posteriors)} hops (edge.endpoint.HopLevels), got "
                                 f"{'none' if levels is None else len(levels)}; or set end_quiet_ms to 0")
            self._levels = np.concatenate([self._levels, np.asarray(levels, dtype=np.float64)])
        smoothed = self._smooth(posteriors)
        best = self._ratios(smoothed).tolist()

        release = self.settings.release_ratio
        events: list[Detection] = []
        for i, ratio in enumerate(best):
            hop = self._frame + i
            if self._open and (ratio < release or hop - self._onset >= self._max_frames):
                after_word = self._after_word
                event = self._close(hop)
                if event:
                    events.append(event)
                elif after_word:  # it held only the last word's lingering score: no refractory time after that
                    self._quiet_from = hop
            elif self._open and self._quiet_hops and self._next_word_begins(hop):
                event = self._close(hop)  # the pause ended the word
                if event:
                    events.append(event)
                    self._lingering = self.labels.index(event.label)
                self._quiet_from = hop  # the next word may follow at once
            scores = smoothed[i]
            if self._lingering is not None:  # the model stays sure of a word for a while after it, into the next
                if scores[self._lingering] < release * self._thresholds[self._lingering]:
                    self._lingering = None
                else:
                    scores = scores.copy()
                    scores[self._lingering] = 0.0
            if not self._open and ratio >= 1.0 and hop >= self._quiet_from:
                self._open, self._onset = True, hop
                self._after_word, self._heard_own = self._lingering is not None, False
                self._peaks[:] = 0.0
                self._mass[:] = 0.0
            if self._open:  # hop by hop, so neither depends on the chunking
                np.maximum(self._peaks, scores, out=self._peaks)
                self._mass += scores
                if self._after_word and not self._heard_own:
                    self._heard_own = self._ratios(scores[None])[0] >= 1.0
        self._frame += len(posteriors)
        if len(self._levels) > self._keep_levels:  # enough for the longest event and the background before it
            self._levels_from += len(self._levels) - self._keep_levels
            self._levels = self._levels[-self._keep_levels:]
        return events

    def flush(self) -> list[Detection]:
        """End of stream (or shutdown): report the event still open, if it is long enough."""
        if not self._open:
            return []
        event = self._close(self._frame, at_end=True)
        return [event] if event else []

    def _ratios(self, smoothed: np.ndarray) -> np.ndarray:
        """Each hop's measure for opening and holding an event, relative to its threshold (1: at it)."""
        if self.settings.trigger == "word":
            return smoothed.sum(axis=1) / self.settings.threshold  # some word, whichever
        return (smoothed / self._thresholds).max(axis=1)  # the best label, each relative to its own threshold

    def _smooth(self, posteriors: np.ndarray) -> np.ndarray:
        n = self._smooth_frames
        if n == 1:
            return posteriors
        joined = np.concatenate([self._history, posteriors])
        self._history = joined[len(joined) - (n - 1):].copy()
        # Each window is summed on its own, oldest hop first (not by differencing a cumulative sum), so the result
        # is the same bit for bit however the stream is chunked; one add per offset keeps it vectorised over hops.
        count = len(posteriors)
        total = joined[:count].copy()
        for offset in range(1, n):
            total += joined[offset:offset + count]
        return total / n

    def _close(self, end_hop: int, at_end: bool = False) -> Detection | None:
        self._open = False
        if end_hop - self._onset < max(1, self._min_frames):
            return None
        self._quiet_from = end_hop + self._refractory_frames
        start_hop, word_end_hop = self._onset, end_hop
        if self._quiet_hops:
            start_hop, pause_hop = self._word_bounds(end_hop)
            if pause_hop is None and not at_end:
                return None  # inside running speech
            word_end_hop = end_hop if pause_hop is None else pause_hop
            if word_end_hop <= start_hop:  # every hop "quiet" (loud steady noise): the levels give no span
                start_hop, word_end_hop = self._onset, end_hop
            self._last_word_end = word_end_hop
        evidence = self._mass if self.settings.trigger == "word" else self._peaks
        best = int(np.argmax(evidence / self._thresholds))
        if self._peaks[best] < self.settings.min_score:
            return None  # sure of a word, not of which: on words that only resemble one
        if self._after_word and not self._heard_own:
            return None  # the last word's lingering score opened it, and no other word reached the trigger in it
        # Reported once hop `end_hop` was processed, i.e. after the audio up to its end (at the end of the stream,
        # end_hop is already the number of hops).
        detected_hop = end_hop if at_end else end_hop + 1
        return Detection(label=self.labels[best], score=float(self._peaks[best]), start_s=start_hop * self._hop_s,
                         end_s=word_end_hop * self._hop_s, detected_s=detected_hop * self._hop_s)

    def _next_word_begins(self, hop: int) -> bool:
        """Whether, at `hop`, the input rises out of a pause that the open event already holds: the pause ended
        the word, and the next one begins (the event, ended here, finds that pause in `_word_bounds`)."""
        at = hop - self._levels_from
        if at < 1 or self._levels[at] <= self._levels[at - 1]:
            return False  # not rising: the cheap test first, since this runs on every hop of an open event
        quiet = self._quiet_level(hop)
        if not self._levels[at - 1] <= quiet + endpoint.NEW_WORD_RISE_DB < self._levels[at]:
            return False
        return endpoint.pause_start(self._kept_levels(self._onset, hop), quiet, self._pause_hops()) is not None

    def _kept_levels(self, first: int, last: int) -> np.ndarray:
        """The input levels of hops [first, last) that are still kept."""
        return self._levels[max(0, first - self._levels_from):max(0, last - self._levels_from)]

    def _quiet_level(self, end_hop: int) -> float:
        """The level under which a hop of the open event, ending at `end_hop`, is quiet (edge/endpoint.py)."""
        word = self._kept_levels(self._onset - self._before_hops, end_hop)
        background = self._kept_levels(end_hop - self._floor_hops, end_hop)
        return endpoint.quiet_level(word, background, self.settings.end_quiet_db)

    def _pause_hops(self) -> int:
        """How many quiet hops in a row make a pause after the open event's word."""
        return self._sure_quiet_hops if self._peaks.max() >= endpoint.SURE_SCORE else self._quiet_hops

    def _word_bounds(self, end_hop: int) -> tuple[int, int | None]:
        """From the input's levels: the hop where the word began, and the hop where the pause after it began (None
        if the event holds no pause: the word ran on into other sound)."""
        levels = self._kept_levels
        quiet = self._quiet_level(end_hop)
        before = levels(max(self._onset - self._before_hops, self._last_word_end), self._onset)
        start = self._onset - len(before) + endpoint.sound_start(before, quiet, self._word_gap_hops)
        event = levels(self._onset, end_hop)
        hops = self._pause_hops()
        pause = endpoint.pause_start(event, quiet, hops)
        if pause is None:  # no quiet: perhaps a room still ringing with the word
            tail = endpoint.smoothed(levels(self._onset - endpoint.TAIL_SMOOTH_HOPS + 1, end_hop))
            tail = tail[len(tail) - len(event):]  # the event's hops, smoothed over the hops before them too
            tail_top = float(levels(self._onset - self._before_hops, end_hop).max()) - endpoint.TAIL_DROP_DB
            pause = endpoint.pause_start(event, quiet, hops, tail, tail_top)
        return start, None if pause is None else self._onset + pause
