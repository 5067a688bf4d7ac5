"""The on-device run path at its edges: serial writes that time out part way, standard error that fails, overruns
in an error exit, a last HEALTH, option limits, steady loud noise and clipping in a short input."""
import io
import logging
import os
import subprocess
import sys
import time
import types

import click
import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

import edge.telemetry.emitter as emitter_module
from edge.detector import Detection
from edge.runloop import Pipeline, RunLoop
from edge.sinks import Sink, TextSink
from edge.sources import FileSource, SourceError
from edge.telemetry.emitter import TelemetryEmitter
from edge.telemetry.protocol import Detection as WireDetection
from edge.telemetry.protocol import Health, StreamDecoder
from firmware_tools.telemetry_reader import TelemetrySession
from tests.conftest import REPO, require
from tests.test_run import DEMO, basilar, louder_demo, parse_json, repo_env, run_over_serial


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class PartTakingPort:
    """A port whose writes time out after part of their bytes went out (as pyserial's write_timeout does) while
    `failing` says so; the bytes it took are on the line."""

    def __init__(self, failing):
        self.line, self.writes, self.failing = bytearray(), 0, failing

    def write(self, data):
        self.writes += 1
        if self.failing(self.writes):
            self.line += data[:len(data) * 3 // 4]
            raise TimeoutError("Write timeout")
        self.line += data
        return len(data)

    def flush(self):
        pass


@pytest.fixture
def no_backoff(monkeypatch):
    """No pause after each failed write (the emitter's own clock only)."""
    monkeypatch.setattr(emitter_module, "time", types.SimpleNamespace(sleep=lambda s: None, monotonic=time.monotonic))


def test_a_write_that_times_out_part_way_loses_only_the_frame_it_was_writing(no_backoff):
    """Every third write goes out in part: that frame is lost (once, as a gap), the ones behind it are sent, and
    the part that went out spoils no other frame."""
    port = PartTakingPort(lambda n: n % 3 == 0)
    emitter = TelemetryEmitter.from_stream(port, device_id="dev", queue_size=1000)
    for i in range(300):
        emitter.detection(0, 0.5, i, i + 1)
    emitter.close(timeout=10)
    session = TelemetrySession()
    records = session.feed(bytes(port.line))
    seqs = [f.seq for f in StreamDecoder().feed(bytes(port.line))]
    received = sum(r["type"] == "detection" for r in records)
    lost = session.counters()["lost_frames"]
    failed = port.writes // 3  # each write is one frame
    assert seqs == sorted(set(seqs)) and seqs[-1] < 300  # one number per message, none given twice
    assert received == 300 - failed and lost + emitter.unsent_at_close == failed, (received, lost, failed)
    assert emitter.dropped == 0 and session.counters()["device_restarts"] == 0


def test_frames_that_went_out_in_part_are_never_numbered_again(monkeypatch, no_backoff):
    """Past MAX_GAP frames lost in a row, messages are dropped, not numbered: the numbers already used (a part of
    their frames on the line) are never given again, which the host would read as a restart."""
    monkeypatch.setattr(emitter_module, "MAX_GAP", 50)
    port = PartTakingPort(lambda n: True)
    emitter = TelemetryEmitter.from_stream(port, device_id="dev", queue_size=1000)
    for i in range(200):
        emitter.detection(0, 0.5, i, i + 1)
    wait_for(lambda: emitter._unwritten + emitter.dropped == 200)  # noqa: SLF001 - every one tried or dropped
    port.failing = lambda n: False
    emitter.detection(0, 0.5, 500, 501)
    emitter.close(timeout=10)
    frames = StreamDecoder().feed(bytes(port.line))
    assert [(f.seq, f.message.start_ms) for f in frames] == [(50, 500_000)]  # after 0..49, lost in part
    assert emitter._unwritten == 0 and emitter.dropped == 150 and emitter.unsent_at_close == 0  # noqa: SLF001
    session = TelemetrySession()
    session.feed(bytes(port.line))
    assert session.counters()["device_restarts"] == 0


def test_what_a_part_taking_port_never_delivered_is_counted_exactly_at_close():
    port = PartTakingPort(lambda n: True)
    emitter = TelemetryEmitter.from_stream(port, device_id="dev", queue_size=1000)
    for i in range(40):
        emitter.detection(0, 0.5, i, i + 1)
    time.sleep(0.3)
    emitter.close(timeout=0.5)
    assert StreamDecoder().feed(bytes(port.line)) == []
    assert (emitter.unsent_at_close, emitter.dropped) == (40, 0)  # not one counted twice, nor one per write


def test_the_serial_links_own_warnings_carry_the_documented_prefix():
    from firmware_tools.run_cmd import _warn_through

    err = io.StringIO()
    with click.Context(click.Command("run")) as ctx:
        _warn_through(TextSink(out=io.StringIO(), err=err), ctx)
        logging.getLogger("edge.telemetry.link").warning("serial port %s failed (%s); reopening", "/dev/x", "EIO")
        logging.getLogger("edge.telemetry.link").info("serial port %s reopened", "/dev/x")  # as before: not shown
    logging.getLogger("edge.telemetry.link").warning("after the run")
    assert err.getvalue() == "basilar: warning: serial port /dev/x failed (EIO); reopening\n"


# ------------------------------------------------------------------------------ standard error that fails


def demo_pcm() -> bytes:
    samples, rate = soundfile.read(DEMO, dtype="int16")
    assert rate == 16000
    return samples.tobytes()


def test_standard_error_on_a_full_disk_stops_no_detection():
    require(os.path.exists("/dev/full"), "/dev/full")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "-", "--json", "--health-every",
                                 "0.01"], cwd=REPO, env=repo_env(), input=demo_pcm(), stdout=subprocess.PIPE,
                                stderr=full, timeout=120)
    assert result.returncode == 0
    assert len(parse_json(result.stdout)) == len(parse_json(basilar("run", "--json", DEMO).stdout)) >= 15


def test_standard_error_whose_reader_left_stops_no_detection():
    process = subprocess.Popen([sys.executable, "-m", "firmware_tools.cli", "run", "-", "--json", "--health-every",
                                "0.01"], cwd=REPO, env=repo_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stderr.close()  # its reader has gone: every write to it fails with EPIPE
    out, _ = process.communicate(demo_pcm(), timeout=120)
    assert process.returncode == 0
    assert len(parse_json(out)) == len(parse_json(basilar("run", "--json", DEMO).stdout)) >= 15


# ------------------------------------------------------------------------------ overruns and the last HEALTH


class OverrunningThenFailingSource(FileSource):
    """A live input that lost blocks (overruns), told less often than they came, and then fails."""

    live = True

    def chunks(self):
        for n, chunk in enumerate(super().chunks()):
            if n == 30:
                raise SourceError("the microphone went away; plug it in again")
            self.overruns += 1
            yield chunk


def test_an_error_exit_gives_the_overruns(monkeypatch):
    import firmware_tools.run_cmd as run_cmd
    from firmware_tools.cli import main

    monkeypatch.setattr(run_cmd, "_open_source",
                        lambda audio, rate, *args, **kwargs: OverrunningThenFailingSource(DEMO, rate))
    result = CliRunner().invoke(main, ["run", str(DEMO)])
    assert result.exit_code == 1, result.output
    assert "the microphone went away" in result.output and "30 audio overruns" in result.output, result.output


def test_a_last_health_goes_over_serial_as_the_run_ends():
    result, messages = run_over_serial("--health-every", 600, DEMO)  # no report falls due in the run itself
    assert result.returncode == 0, result.stderr.decode()
    health = [m for m in messages if isinstance(m, Health)]
    assert len(health) == 1 and messages[-1] == health[0] and health[0].uptime_s < 60
    assert sum(isinstance(m, WireDetection) for m in messages) >= 15
    _, quiet = run_over_serial("--health-every", 0, DEMO)
    assert not [m for m in quiet if isinstance(m, Health)]  # 0: no health at all, as documented


# ------------------------------------------------------------------------------ options


def test_a_device_id_too_long_for_hello_is_a_usage_error():
    from firmware_tools.run_cmd import device_id_option

    result = basilar("run", "--device-id", "é" * 128, DEMO)  # 256 bytes in UTF-8
    assert result.returncode == 2
    assert "256 bytes in UTF-8; the telemetry HELLO holds at most 255" in result.stderr.decode()
    assert device_id_option(None, None, "é" * 127 + "x") == "é" * 127 + "x"  # 255 bytes: taken


def test_a_label_given_twice_and_invalid_detector_values_are_usage_errors():
    twice = basilar("run", "--threshold-for", "7=0.8", "--threshold-for", "7=0.9", DEMO)
    assert twice.returncode == 2 and "label '7' is given twice (7=0.8 and 7=0.9)" in twice.stderr.decode()
    bad = basilar("run", "--threshold", "1.5", DEMO)
    assert bad.returncode == 2 and "--threshold 1.5: must be a number in (0, 1]" in bad.stderr.decode()
    unknown = basilar("run", "--threshold-for", "cat=0.5", DEMO)
    assert unknown.returncode == 2 and "threshold given for unknown label(s) 'cat'" in unknown.stderr.decode()


# ------------------------------------------------------------------------------ what the detector and watch say


class Collect(Sink):
    def __init__(self):
        self.events: list[Detection] = []
        self.warnings: list[str] = []

    def detection(self, event):
        self.events.append(event)

    def warn(self, text):
        self.warnings.append(text)


def test_a_word_in_loud_steady_noise_is_never_given_zero_length(tmp_path):
    """White noise at 0.1 RMS: every hop counts as quiet, and end-pointing found no span (start_s == end_s)."""
    samples, rate = soundfile.read(DEMO, dtype="float32")
    noise = np.random.default_rng(3).standard_normal(len(samples)).astype(np.float32) * 0.1
    noisy = tmp_path / "noisy.wav"
    soundfile.write(noisy, np.clip(samples + noise, -1, 1), rate, subtype="PCM_16")
    collect = Collect()
    pipeline = Pipeline.from_bundle("default")
    with FileSource(noisy, pipeline.sample_rate) as source:
        RunLoop(pipeline, source, [collect], health_every_s=0).run()
    assert len(collect.events) >= 10
    assert all(d.end_s > d.start_s for d in collect.events), [d for d in collect.events if d.end_s <= d.start_s]


def test_a_recording_shorter_than_the_clipping_window_that_clips_gets_the_warning(tmp_path):
    loud = louder_demo(tmp_path / "loud.wav", 10)
    samples, rate = soundfile.read(loud, dtype="int16")
    short = tmp_path / "short.wav"
    soundfile.write(short, samples[:6 * rate], rate)
    collect = Collect()
    pipeline = Pipeline.from_bundle("default")
    with FileSource(short, pipeline.sample_rate) as source:
        RunLoop(pipeline, source, [collect], health_every_s=0).run()
    assert len(collect.warnings) == 1 and "reached full scale in " in collect.warnings[0], collect.warnings
    assert " of its samples over 6 s: it clips" in collect.warnings[0]


def test_a_detection_standard_output_cannot_take_still_goes_over_the_serial_link():
    """`basilar run demo --serial PORT > /dev/full`: the text sink failed first, and the serial line got nothing;
    now it gets the detection the run stopped on, and the event still open as the run ends, exit code as before."""
    import select
    import threading

    require(os.path.exists("/dev/full"), "/dev/full")
    master, slave = os.openpty()
    received, done = bytearray(), threading.Event()

    def drain():
        while not done.is_set():
            if select.select([master], [], [], 0.1)[0]:
                received.extend(os.read(master, 65536))

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        with open("/dev/full", "w") as full:
            result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "--serial", os.ttyname(slave),
                                     DEMO], cwd=REPO, env=repo_env(), stdout=full, stderr=subprocess.PIPE, text=True,
                                    timeout=120)
        time.sleep(1.0)  # the pty may still hold frames
    finally:
        done.set()
        reader.join()
        os.close(master)
        os.close(slave)
    assert result.returncode == 1 and "cannot write a detection to standard output" in result.stderr, result.stderr
    wire = [f.message for f in StreamDecoder().feed(bytes(received)) if isinstance(f.message, WireDetection)]
    assert len(wire) >= 1


class _Failing(Sink):
    def detection(self, event):
        raise BrokenPipeError


class _Keeping(Sink):
    def __init__(self):
        self.events = []

    def detection(self, event):
        self.events.append(event)


def test_every_sink_gets_every_detection_even_the_flushed_one_when_an_earlier_sink_fails():
    pipeline = Pipeline.from_bundle("default")
    kept = _Keeping()
    loop = RunLoop(pipeline, FileSource(DEMO, pipeline.sample_rate), [_Failing(), kept])
    flushed = Detection("7", 0.9, 1.0, 1.2)
    loop.pipeline.flush = lambda: [flushed]  # the event still open when the run ends on the failure
    with pytest.raises(BrokenPipeError):
        loop.run()
    assert len(kept.events) >= 2 and kept.events[-1] == flushed
    assert loop.stats.detections == 0  # counted once written everywhere: the error message quotes it


@pytest.mark.parametrize("options, needs", [(["--keep", "5"], "--serial and --root"), (["--baud", "9600"], "--serial"),
                                            (["--device-id", "x"], "--serial"),
                                            (["--keep", "5", "--serial", "/dev/null"], "--root")])
def test_serial_options_without_the_link_they_act_through_are_refused(options, needs):
    result = basilar("run", *options, DEMO)
    assert result.returncode == 2, result.stderr.decode()
    assert f"{options[0]} " in result.stderr.decode() and f"add {needs}, or leave {options[0]} out" in \
        result.stderr.decode()


def test_the_service_never_writes_a_serial_option_without_its_link():
    from firmware_tools.run_cmd import unit_text

    plain = unit_text(executable="/usr/bin/basilar", root="/opt/basilar", audio="mic", user="basilar", serial=None,
                      baud=9600, as_json=False)
    assert "--baud" not in plain and "--keep" not in plain and "--device-id" not in plain


def test_a_detector_option_error_names_the_option_given_and_where_the_other_setting_came_from():
    """It said "max_duration_ms=3000.0: must exceed min_duration_ms=3000.0", settings no one can type."""
    result = basilar("run", "--min-duration-ms", "3000", DEMO)
    assert result.returncode == 2
    said = " ".join(result.stderr.decode().split())
    assert ("max_duration_ms=3000.0 (the default, which no option changes): must exceed --min-duration-ms 3000; "
            "change --min-duration-ms") in said, said
    assert "min_duration_ms=" not in said
    quiet = " ".join(basilar("run", "--end-quiet-ms", "5000", DEMO).stderr.decode().split())
    assert "--end-quiet-ms 5000: must be 0 (off) or a pause shorter than max_duration_ms=3000.0" in quiet, quiet
