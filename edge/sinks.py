"""Where detections and health reports go: readable lines, JSON lines, or the serial telemetry link.

Every sink writes each event out (and flushes) as soon as it gets it, so an interrupted or failing run has
already delivered everything detected before the interruption. Sinks never reach back into the pipeline.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import sys
from typing import TextIO

from edge.detector import Detection


@dataclasses.dataclass(frozen=True)
class Health:
    uptime_s: float  # wall-clock seconds since the run started
    audio_s: float  # seconds of audio processed
    realtime_factor: float  # processing time / audio time (0.01 = 100x faster than real time)
    cpu_load: float  # CPU time / wall time, as a fraction of one core
    overruns: int  # audio blocks lost because processing fell behind
    detections: int

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        speed = f"{1 / self.realtime_factor:.0f}x real time" if self.realtime_factor > 0 else "idle"
        return (f"health: up {self.uptime_s:.0f} s, {self.audio_s:.1f} s audio, {speed}, "
                f"CPU {100 * self.cpu_load:.1f}% of one core, {self.overruns} overruns, "
                f"{self.detections} detections")


def iso_time(timestamp: float) -> str:
    """Unix time as ISO 8601 UTC with milliseconds."""
    moment = _dt.datetime.fromtimestamp(timestamp, tz=_dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class OutputError(OSError):
    """Standard output cannot take a detection (a full disk, a closed file): said as such, not as a failure of the
    processing. A reader that went away (BrokenPipeError) is not one: that ends the run quietly."""


@contextlib.contextmanager
def _writing(what: str):
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {what} to standard output: {exc.strerror or exc}") from exc


class Sink:
    def bundle(self, bundle_id: str, labels: list[str], sample_rate: int) -> None:
        """The bundle whose detections follow: at the start, and again when a new one is swapped in."""

    def detection(self, event: Detection) -> None:
        pass

    def health(self, health: Health) -> None:
        pass

    def log(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        """A problem the run goes on with, and that someone should fix (a muted microphone, lost audio)."""
        self.log(f"warning: {text}")

    def close(self) -> None:
        pass


class TextSink(Sink):
    """One readable line per detection on stdout; health and log lines on stderr."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def detection(self, event: Detection) -> None:
        when = f"  at {iso_time(event.timestamp)}" if event.timestamp is not None else ""
        with _writing("a detection"):
            self._out.write(f"{event.start_s:8.2f} -{event.end_s:8.2f} s  {event.label}  (score {event.score:.2f})"
                            f"{when}\n")
            self._out.flush()

    def health(self, health: Health) -> None:
        self.log(health.describe())

    def log(self, text: str) -> None:
        try:
            self._err.write(f"basilar: {text}\n")
            self._err.flush()
        except (OSError, ValueError):  # stderr's reader gone, a full disk, closed: the note is lost, not the run
            pass


class JsonSink(TextSink):
    """One JSON object per line per detection on stdout (label, score, start_s, end_s[, detected_s, timestamp,
    time])."""

    def detection(self, event: Detection) -> None:
        record = event.to_dict()
        if event.timestamp is not None:
            record["time"] = iso_time(record["timestamp"])  # the same millisecond as the rounded timestamp
        with _writing("a detection"):
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()


class TelemetrySink(Sink):
    """Detections and health over the serial telemetry protocol (edge.telemetry); never blocks the audio path."""

    def __init__(self, emitter, basilar_version: str):
        self._emitter = emitter
        self._version = basilar_version
        self._label_ids: dict[str, int] = {}

    def bundle(self, bundle_id: str, labels: list[str], sample_rate: int) -> None:
        # HELLO tells the host the label names that DETECTION messages refer to by index.
        self._label_ids = {label: i for i, label in enumerate(labels)}
        self._emitter.hello(self._version, bundle_id, labels, sample_rate)

    def detection(self, event: Detection) -> None:
        self._emitter.detection(self._label_ids[event.label], event.score, event.start_s, event.end_s)

    def health(self, health: Health) -> None:
        self._emitter.health(health.uptime_s, health.realtime_factor, health.cpu_load, health.overruns)

    def log(self, text: str) -> None:
        self._emitter.log(text)

    def warn(self, text: str) -> None:
        from edge.telemetry.protocol import LogLevel  # loaded with the emitter: a run without --serial never needs it

        self._emitter.log(text, LogLevel.WARNING)  # the host sees it as one by its level, `[warning] ...`

    def close(self) -> None:
        self._emitter.close()
