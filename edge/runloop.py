"""The device's main loop: source -> front end -> one model step per frame -> detector -> sinks.

`Pipeline` is everything built from one bundle (front end, step runner, detector); it is the only place that
touches the bundle, front-end and runner interfaces. `RunLoop` drives a pipeline from an audio source, writes
every detection to the sinks the moment it closes, reports health periodically, and stops cleanly when its
StopFlag is set (SIGINT/SIGTERM), flushing the event still open.
"""
from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge.detector import Detection, Detector, DetectorSettings, DetectorSettingsError
from edge.endpoint import HopLevels
from edge.input_watch import InputWatch
from edge.sinks import Health, Sink
from edge.sources import AudioSource, StopFlag


class PipelineError(Exception):
    """The bundle cannot run here; the message says what does not match and how to fix it."""


class DetectorOptionError(PipelineError):
    """The detector values given to override the bundle's are invalid (the bundle's own are fine): a usage error."""


class Pipeline:
    """Front end + streaming step model + detector for one bundle, with state carried across chunks."""

    def __init__(self, bundle: Any, frontend: Any, runner: Any, detector: Detector):
        self.bundle, self.frontend, self.runner, self.detector = bundle, frontend, runner, detector
        config = frontend.config if hasattr(frontend, "config") else bundle.frontend_config
        self.sample_rate = int(config.sample_rate)
        self.hop_samples = int(config.hop_samples)
        self.labels = list(bundle.labels)
        self._frames = np.zeros((64, config.features), dtype=np.int8)
        self.levels = HopLevels(self.hop_samples)  # the input's level at each hop, for the detector's end-pointing

    @classmethod
    def from_bundle(cls, bundle_ref: Any, *, detector_overrides: Mapping[str, Any] | None = None,
                    num_threads: int = 1, trusted_keys: Sequence | None = None) -> Pipeline:
        """Load a bundle (a path, an archive or "default") and build its pipeline.

        load_bundle refuses a bundle whose front-end hash does not match its config under this basilar version
        (a model trained on other features) or whose model input does not fit the front end.
        """
        from edge.bundle import BundleError, load_bundle

        try:
            # The model is checked in for_bundle, by building the runner that will run it.
            bundle = load_bundle(bundle_ref, trusted_keys=trusted_keys, check_model=False)
        except BundleError as err:
            raise PipelineError(str(err)) from err
        return cls.for_bundle(bundle, detector_overrides=detector_overrides, num_threads=num_threads,
                              name=bundle_ref)

    @classmethod
    def for_bundle(cls, bundle: Any, *, detector_overrides: Mapping[str, Any] | None = None, num_threads: int = 1,
                   name: Any = None) -> Pipeline:
        """The pipeline of a bundle already loaded; `name`: how errors name it (its path by default)."""
        from edge.frontend import Frontend
        from edge.runner import RuntimeUnavailable, StepRunner

        bundle_ref = bundle.path if name is None else name
        config = bundle.frontend_config
        try:
            settings = DetectorSettings.from_manifest(bundle.manifest.get("detector"), hop_ms=config.hop_ms,
                                                      **dict(detector_overrides or {}))
            detector = Detector(settings, bundle.labels)
        except DetectorSettingsError as err:
            raise _blame(err, bundle, config.hop_ms, detector_overrides) from err
        try:
            runner = StepRunner(bundle, num_threads=num_threads)
        except RuntimeUnavailable as err:
            raise PipelineError(f"{err}; or install basilar's runtime extra: pip install 'basilar[runtime]'") from err
        except ValueError as err:  # the model does not fit the bundle's front end or labels
            raise PipelineError(f"bundle {bundle_ref}: {err}") from err
        return cls(bundle, Frontend(config), runner, detector)

    def process(self, samples: np.ndarray) -> list[Detection]:
        """Feed int16 samples; returns the detections that closed within them."""
        return self.detector.update(self.posteriors(samples), self.input_levels(samples))

    def posteriors(self, samples: np.ndarray) -> np.ndarray:
        """The model's scores for the frames these samples complete (front end and model step, no detector)."""
        count = self.frontend.frames_for(len(samples))
        if count > len(self._frames):  # the buffer grows to the largest chunk seen, then stays
            self._frames = np.zeros((count, self._frames.shape[1]), dtype=np.int8)
        frames = self._frames[:count]
        self.frontend.process_into(samples, frames)
        return self.runner.run(frames)

    def input_levels(self, samples: np.ndarray) -> np.ndarray | None:
        """The samples' per-hop levels for the detector's end-pointing; None (nothing metered) when it is off."""
        return self.levels.process(samples) if self.detector.uses_levels else None

    def flush(self) -> list[Detection]:
        return self.detector.flush()

    def reset(self, at_frame: int = 0) -> None:
        """Start from rest, as a stream begins; `at_frame` is where the detector's clock goes on from."""
        self.frontend.reset()
        self.runner.reset()
        self.levels.reset()
        self.detector.reset(at_frame)


def _blame(err: DetectorSettingsError, bundle: Any, hop_ms: float,
           overrides: Mapping[str, Any] | None) -> PipelineError:
    """A DetectorOptionError if the overrides made the settings invalid, else (the bundle's own) a PipelineError."""
    if any(value is not None for value in (overrides or {}).values()):
        try:
            Detector(DetectorSettings.from_manifest(bundle.manifest.get("detector"), hop_ms=hop_ms), bundle.labels)
        except DetectorSettingsError:
            return PipelineError(str(err))
        return DetectorOptionError(_in_options(str(err), overrides, bundle.manifest.get("detector") or {}))
    return PipelineError(str(err))


# The command-line option that sets each detector setting; the others (max_duration_ms) only a manifest sets
OPTION_OF = {name: "--" + name.replace("_", "-") for name in (
    "threshold", "smoothing_ms", "refractory_ms", "release_ratio", "min_duration_ms", "trigger", "end_quiet_ms",
    "end_quiet_db", "min_score")} | {"thresholds": "--threshold-for"}
_SETTING = re.compile(r"\b(?P<name>[a-z]+(?:_[a-z]+)*)=(?P<value>'[^']*'|[^\s:;,]+)")


def _in_options(message: str, overrides: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    """A detector settings error in the terms of the command line: a setting the user gave is named by its option
    (`--min-duration-ms 3000`, not min_duration_ms=3000.0), one they did not by where it came from."""
    given = {name for name, value in overrides.items() if value is not None}
    named: list[str] = []

    def say(found: re.Match) -> str:
        name = found["name"]
        if name in given and name in OPTION_OF:
            value = overrides[name]
            named.append(OPTION_OF[name])
            return f"{OPTION_OF[name]} {value:g}" if isinstance(value, float) else f"{OPTION_OF[name]} {value}"
        if name not in DetectorSettings.manifest_keys():
            return found[0]
        where = "the bundle's manifest's" if name in manifest else "the default"
        settable = "" if name in OPTION_OF else ", which no option changes"
        return f"{found[0]} ({where}{settable})"

    told = _SETTING.sub(say, message)
    for label, value in (overrides.get("thresholds") or {}).items():  # said by label by DetectorSettings
        said = f"threshold for label {label!r}={value!r}"
        if said in told:
            told = told.replace(said, f"{OPTION_OF['thresholds']} {label}={value:g}" if isinstance(value, float)
                                else f"{OPTION_OF['thresholds']} {label}={value}")  # as typed: --threshold-for 7=1.5
            named.append(OPTION_OF["thresholds"])
    change = named or sorted(OPTION_OF[name] for name in given if name in OPTION_OF)
    return f"{told}; change {' or '.join(dict.fromkeys(change))}"


@dataclasses.dataclass
class RunStats:
    audio_s: float = 0.0  # seconds of audio processed
    wall_s: float = 0.0  # seconds the run took
    busy_s: float = 0.0  # seconds spent in front end + model + detector
    cpu_s: float = 0.0  # process CPU time (user + system)
    overruns: int = 0
    detections: int = 0
    runtime: str = ""  # the TFLite interpreter that ran the model: speed depends on it (docs/models.md)

    def describe(self) -> str:
        speed = f", {self.audio_s / self.busy_s:.0f}x real time on {self.runtime}" if self.busy_s > 0 else ""
        return (f"{self.audio_s:.1f} s of audio in {self.wall_s:.1f} s{speed}, {self.detections} detections, "
                f"{self.overruns} overruns")


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class RunLoop:
    """Drive `pipeline` from `source` into `sinks` until the source ends, fails, or `stop` is set."""

    def __init__(self, pipeline: Pipeline, source: AudioSource, sinks: Sequence[Sink], *,
                 health_every_s: float = 60.0, stop: StopFlag | None = None):
        if source.sample_rate != pipeline.sample_rate:
            raise PipelineError(f"the audio source delivers {source.sample_rate} Hz but the bundle needs "
                                f"{pipeline.sample_rate} Hz; open the source at the bundle's rate")
        self.pipeline = pipeline
        self.source = source
        self.sinks = list(sinks)
        self.stop = stop or source.stop
        self.health_every_s = health_every_s
        self.stats = RunStats(runtime=pipeline.runner.runtime)
        self._next_pipeline: Pipeline | None = None
        self._swap_lock = threading.Lock()
        self._samples = 0  # audio samples processed
        self._lost = 0  # audio samples a live input lost (overruns): stream time runs on over them
        self._overruns_told = 0
        self._overruns_told_at = -1e9
        self._start_wall = time.monotonic()
        self._last_report = _Report(self._start_wall, _cpu_seconds())
        self._input_watch = InputWatch(source, pipeline.sample_rate)

    def swap_pipeline(self, pipeline: Pipeline) -> None:
        """Replace the pipeline (a newly deployed bundle) between two chunks, without reopening the audio input.

        Safe to call from another thread. The new bundle must run at the same sample rate.
        """
        if pipeline.sample_rate != self.pipeline.sample_rate:
            raise PipelineError(f"the new bundle runs at {pipeline.sample_rate} Hz but the audio input is open at "
                                f"{self.pipeline.sample_rate} Hz, and a running input cannot change its rate; a "
                                "bundle at another rate is deployed over SSH (`basilar deploy` restarts the "
                                "service), or made current on the device (`python3 -m edge.releases activate "
                                "ROOT ID`) before `basilar run` is restarted")
        with self._swap_lock:
            self._next_pipeline = pipeline

    def run(self) -> RunStats:
        """Process the stream; exceptions propagate after every detection made so far has been written."""
        start_wall, start_cpu = time.monotonic(), _cpu_seconds()
        self._start_wall, self._last_report = start_wall, _Report(start_wall, start_cpu)
        self._samples = 0
        self._announce_bundle()
        try:
            for chunk in self.source.chunks():
                if len(chunk):  # empty: a live source with nothing to hand over; health is still due on time
                    self._process(chunk)
                if time.monotonic() - self._last_report.wall >= self.health_every_s > 0:
                    self._last_report = self._report_health(self._last_report, start_wall)
                if self.source.overruns > self._overruns_told:
                    self._tell_overruns()
                if self.stop.is_set():
                    break
        except BaseException:
            try:
                self._emit(self.pipeline.flush())
            except Exception:  # a broken sink must not hide the original failure
                pass
            raise
        finally:
            self.stats.wall_s = time.monotonic() - start_wall
            self.stats.cpu_s = _cpu_seconds() - start_cpu
            self.stats.overruns = self.source.overruns
        self._emit(self.pipeline.flush())
        for notice in self._input_watch.finish():  # the last part-window, too short to be judged before
            (self._warn if notice.warning else self._log)(notice.text)
        return self.stats

    def _process(self, chunk) -> None:
        self._take_new_pipeline()
        self._skip_lost_audio(self.source.take_gap())
        began = time.perf_counter()
        events = self.pipeline.process(chunk)
        self.stats.busy_s += time.perf_counter() - began
        self._samples += len(chunk)
        self.stats.audio_s = self._samples / self.pipeline.sample_rate
        self._emit(events)
        if self._samples == len(chunk):  # the first chunk: a WAV stream's rate is known by now
            self._tell_low_rate()
            if self.source.layout_note:
                self._warn(self.source.layout_note)
        for notice in self._input_watch.check(chunk):
            (self._warn if notice.warning else self._log)(notice.text)

    def _take_new_pipeline(self) -> None:
        if self._next_pipeline is None:
            return
        with self._swap_lock:
            new, self._next_pipeline = self._next_pipeline, None
        self._emit(self.pipeline.flush())
        # Keep stream time continuous: the new detector's clock starts at the audio processed so far (to within
        # a hop: the old front end's partial hop is dropped with it).
        new.detector.reset(at_frame=round((self._samples + self._lost) / new.hop_samples))
        self.pipeline = new
        self._announce_bundle()
        self._log(f"switched to bundle {new.bundle.id[:12]} without stopping the audio input")

    def _skip_lost_audio(self, samples: int) -> None:
        """After an overrun: a word open across the gap ends there; what follows starts from rest, as a stream
        does (the model's memory of the audio before the gap would name a word again), and the clock jumps the
        lost audio, so that every later detection's times (and a serial line's) stay those of the stream."""
        if samples <= 0:
            return
        self._emit(self.pipeline.flush())
        self._lost += samples
        self.pipeline.reset(at_frame=round((self._samples + self._lost) / self.pipeline.hop_samples))

    def _announce_bundle(self) -> None:
        for sink in self.sinks:
            sink.bundle(self.pipeline.bundle.id, self.pipeline.labels, self.pipeline.sample_rate)

    def _tell_overruns(self) -> None:
        """Say so when audio was lost, at most every 5 s, so a slow device is never silently deaf."""
        now = time.monotonic()
        if now - self._overruns_told_at < 5.0:
            return
        self._overruns_told, self._overruns_told_at = self.source.overruns, now
        self._warn(f"audio overruns: {self._overruns_told} blocks lost so far (processing fell behind the input; "
                   "lower the load on this device or use a lighter bundle)")

    def _tell_low_rate(self) -> None:
        """Upsampling cannot put back the band the input never had, which the model was trained to hear."""
        rate, needed = self.source.input_rate, self.pipeline.sample_rate
        if rate and rate < needed:
            self._warn(f"{self.source.name} is sampled at {rate} Hz, below the bundle's {needed} Hz: it is "
                       f"resampled, but holds nothing above {rate // 2} Hz, where the model was trained to hear; "
                       "expect fewer detections. Record at the bundle's rate if you can")

    def _log(self, text: str) -> None:
        for sink in self.sinks:
            sink.log(text)

    def _warn(self, text: str) -> None:
        for sink in self.sinks:
            sink.warn(text)

    def _emit(self, events: list[Detection]) -> None:
        """Every sink gets every event even when another fails (standard output on a full disk must not keep a
        detection off the serial line); the first failure is raised once they all have had it."""
        failed: dict[Sink, Exception] = {}  # in the order they failed
        for event in events:
            if self.source.live:
                event = dataclasses.replace(event, timestamp=time.time())
            for sink in self.sinks:
                if sink in failed:
                    continue  # one failure a sink is enough: its next write would fail the same way
                try:
                    sink.detection(event)
                except Exception as err:
                    failed[sink] = err
            if not failed:
                self.stats.detections += 1  # counted once written: an error message quotes it
        if failed:
            raise next(iter(failed.values()))

    def final_health(self) -> Health:
        """Health since the last report, for a last one as the run ends (a serial host has no summary line)."""
        return self._health(self._last_report, self._start_wall)[0]

    def _report_health(self, last: _Report, start_wall: float) -> _Report:
        health, now = self._health(last, start_wall)
        for sink in self.sinks:
            sink.health(health)
        return now

    def _health(self, last: _Report, start_wall: float) -> tuple[Health, _Report]:
        now = _Report(time.monotonic(), _cpu_seconds(), self.stats.audio_s, self.stats.busy_s)
        audio = now.audio_s - last.audio_s
        health = Health(uptime_s=now.wall - start_wall, audio_s=self.stats.audio_s,
                        realtime_factor=(now.busy_s - last.busy_s) / audio if audio > 0 else 0.0,
                        cpu_load=(now.cpu - last.cpu) / max(now.wall - last.wall, 1e-9),
                        overruns=self.source.overruns, detections=self.stats.detections)
        return health, now


@dataclasses.dataclass
class _Report:
    wall: float
    cpu: float
    audio_s: float = 0.0
    busy_s: float = 0.0
