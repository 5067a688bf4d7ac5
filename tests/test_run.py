"""`basilar run` end to end with the shipped default bundle: the demo, JSON, stdin PCM, shutdown, bad input,
serial telemetry, a device root, the microphone path, and the systemd unit."""
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from edge.detector import Detection
from edge.runloop import Pipeline, PipelineError, RunLoop
from edge.sinks import Sink
from edge.sources import FileSource, StopFlag
from edge.telemetry.protocol import Log, LogLevel, StreamDecoder
from firmware_tools.stream_eval import read_truth, score_stream
from tests.conftest import REPO, require, require_program
from tests.test_sources import alsa_file_device, alsa_test_device

DEMO = REPO / "edge" / "demo" / "demo.wav"
TRUTH = read_truth(REPO / "edge" / "demo" / "demo_truth.csv")
DEMO_SECONDS = soundfile.info(DEMO).duration
TEXT_LINE = re.compile(r"^\s*(?P<start>\d+\.\d+) -\s*(?P<end>\d+\.\d+) s  (?P<label>\S+)  \(score (?P<score>[\d.]+)\)")


def repo_env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def basilar(*args, input=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "firmware_tools.cli", *map(str, args)], cwd=REPO, input=input,
                          capture_output=True, timeout=timeout, env=env or repo_env())


def parse_text(stdout: bytes) -> list[Detection]:
    found = []
    for line in stdout.decode().splitlines():
        match = TEXT_LINE.match(line)
        assert match, f"unexpected output line {line!r}"
        found.append(Detection(match["label"], float(match["score"]), float(match["start"]), float(match["end"])))
    return found


def parse_json(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


class Collect(Sink):
    def __init__(self):
        self.events = []

    def detection(self, event):
        self.events.append(event)


@pytest.fixture(scope="module")
def demo_detections() -> list[Detection]:
    """The default bundle's detections on the demo, streamed in-process exactly as `basilar run` does."""
    collect = Collect()
    pipeline = Pipeline.from_bundle("default")
    with FileSource(DEMO, pipeline.sample_rate) as source:
        RunLoop(pipeline, source, [collect], health_every_s=0).run()
    return collect.events


def assert_matches_truth(detections, min_hit_rate=0.8, max_false_alarms=3):
    score = score_stream(detections, TRUTH, DEMO_SECONDS)
    summary = {k: v for k, v in score.to_dict().items() if k in ("hits", "missed", "false_alarm_events")}
    assert score.hit_rate >= min_hit_rate, summary
    assert len(score.false_alarms) <= max_false_alarms, summary


def test_run_on_the_demo_prints_detections_that_match_the_truth(demo_detections):
    result = basilar("run", DEMO)
    assert result.returncode == 0, result.stderr.decode()
    printed = parse_text(result.stdout)
    assert_matches_truth(printed)
    assert [(d.label, d.start_s, d.end_s) for d in printed] == \
        [(d.label, round(d.start_s, 2), round(d.end_s, 2)) for d in demo_detections]
    assert f"done: {DEMO_SECONDS:.1f} s of audio" in result.stderr.decode()
    assert re.search(r"\d+x real time on ai-edge-litert, 20 detections", result.stderr.decode())  # CI's runtime
    assert re.search(r"0 overruns; bundle digits [0-9a-f]{12}\n", result.stderr.decode())  # which model heard it
    assert "Traceback" not in result.stderr.decode()
    assert "XNNPACK" not in result.stderr.decode()  # the runtime's notice is not the first line users see


def test_json_output_has_one_object_per_detection(demo_detections):
    result = basilar("run", "--json", DEMO)
    assert result.returncode == 0, result.stderr.decode()
    records = parse_json(result.stdout)
    assert [(r["label"], r["start_s"], r["end_s"]) for r in records] == \
        [(d.label, round(d.start_s, 3), round(d.end_s, 3)) for d in demo_detections]
    assert all(0 < r["score"] <= 1 and "timestamp" not in r for r in records)  # a file has no wall clock


def test_a_json_detections_timestamp_and_time_name_the_same_millisecond():
    import io

    from edge.sinks import JsonSink

    out = io.StringIO()
    JsonSink(out).detection(Detection("3", 0.97, 1.0, 1.4, timestamp=1796464727.2796, detected_s=1.9))
    record = json.loads(out.getvalue())
    assert record["timestamp"] == 1796464727.28 and record["time"] == "2026-12-05T09:58:47.280Z"


def test_min_score_on_the_command_line_keeps_the_detections_that_reach_it(demo_detections):
    floor = sorted(d.score for d in demo_detections)[len(demo_detections) // 2]  # drops about half of them
    result = basilar("run", "--json", "--min-score", floor, DEMO)
    assert result.returncode == 0, result.stderr.decode()
    kept = [(d.label, round(d.start_s, 3)) for d in demo_detections if d.score >= floor]
    assert 0 < len(kept) < len(demo_detections)
    assert [(r["label"], r["start_s"]) for r in parse_json(result.stdout)] == kept


def test_raw_pcm_on_stdin_in_other_formats_rates_and_channels(demo_detections):
    audio, rate = soundfile.read(DEMO, dtype="float32")
    s16 = np.round(audio * 32767).astype("<i2").tobytes()
    result = basilar("run", "--json", "-", input=s16)
    assert result.returncode == 0, result.stderr.decode()
    records = parse_json(result.stdout)
    # float -> int16 here may differ from the file reader by one LSB: a boundary may move by one 10 ms hop
    assert [r["label"] for r in records] == [d.label for d in demo_detections]
    assert all(abs(r["start_s"] - d.start_s) <= 0.011 for r, d in zip(records, demo_detections))
    assert all(abs(r["timestamp"] - time.time()) < 120 and r["time"].endswith("Z") for r in records)  # live

    stereo48k = soxr.resample(audio, rate, 48000)
    s32 = np.round(np.stack([stereo48k, stereo48k], axis=1) * (2**31 - 1)).astype("<i4").tobytes()
    result = basilar("run", "--format", "S32_LE", "--rate", 48000, "--channels", 2, "-", input=s32)
    assert result.returncode == 0, result.stderr.decode()
    assert_matches_truth(parse_text(result.stdout))


@pytest.mark.parametrize("args, message", [
    ([DEMO, "--channels", 2], "--channels is for raw PCM on standard input ('-') or a microphone (mic[:DEVICE]), "
                              "not a file: a file is read by its own header"),
    (["demo", "--rate", 48000], "--rate is for raw PCM on standard input ('-'), not a file"),
    ([DEMO, "--format", "S32_LE"], "`basilar run - --format F --rate R --channels N < FILE`"),
    (["mic", "--rate", 16000], "--rate is for raw PCM on standard input ('-'), not a microphone"),
    (["mic:2", "--format", "FLOAT_LE"], "a microphone is opened at a rate and format it supports"),
    (["mic", "--realtime"], "--realtime is for a file, not a microphone: a microphone is live already"),
    (["-", "--realtime"], "--realtime is for a file, not standard input"),
])
def test_run_refuses_input_options_that_do_not_describe_its_input(args, message):
    """A stereo file's `--channels 2` or a file's `--rate` changed nothing without a word; now they are refused
    before anything is opened (no microphone is needed to refuse `mic --rate`)."""
    result = basilar("run", *args, input=b"")
    assert result.returncode == 2 and message in result.stderr.decode(), result.stderr.decode()
    assert result.stdout == b""


def test_a_wav_stream_whose_header_differs_from_the_options_given_is_read_by_its_header_and_said_so(
        demo_detections):
    """`sox IN -t wav - | basilar run - --rate 48000` plays the header's 16 kHz (the options would misread the
    samples), and says that the options given were not used; options that agree, and none, get no word."""
    wav = DEMO.read_bytes()
    result = basilar("run", "--json", "-", "--rate", 48000, "--channels", 2, input=wav)
    assert result.returncode == 0, result.stderr.decode()
    assert [(r["label"], round(r["start_s"], 3)) for r in parse_json(result.stdout)] == [
        (d.label, round(d.start_s, 3)) for d in demo_detections]
    assert ("warning: standard input starts with a WAV header, and its layout is used: rate 16000, channels 1, not "
            "--rate 48000 --channels 2 as given") in result.stderr.decode()
    for agreeing in (["--rate", 16000, "--format", "S16_LE"], []):
        result = basilar("run", "-", *agreeing, input=wav)
        assert result.returncode == 0 and "WAV header" not in result.stderr.decode(), result.stderr.decode()


def test_arecord_piped_into_run_as_the_readme_shows_hears_what_the_file_holds(tmp_path, demo_detections):
    """`arecord -f S16_LE -r 16000 -c 1 | basilar run -` with an ALSA device that plays the demo: arecord's WAV
    header is read, not played, so the detections are the file's, to the score."""
    arecord = require_program("arecord")
    samples, rate = soundfile.read(DEMO, dtype="int16")
    assert rate == 16000
    env = alsa_file_device(tmp_path, samples)
    recorder = subprocess.Popen([arecord, "-q", "-D", "basilar_test_mic", "-f", "S16_LE", "-r", "16000", "-c", "1",
                                 "-s", str(len(samples))], stdout=subprocess.PIPE, env=env)
    try:
        result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "--json", "-"], cwd=REPO,
                                stdin=recorder.stdout, capture_output=True, timeout=120, env=env)
    finally:
        recorder.kill()
        recorder.wait()
    assert result.returncode == 0, result.stderr.decode()
    heard = [(r["label"], r["score"], r["start_s"], r["end_s"]) for r in parse_json(result.stdout)]
    assert heard == [(d.label, round(d.score, 4), round(d.start_s, 3), round(d.end_s, 3)) for d in demo_detections]


def test_standard_input_that_is_a_terminal_is_refused_at_once():
    """`basilar run -` typed at a prompt would wait for audio nobody can type: a real pseudo-terminal as stdin."""
    controller, terminal = os.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "-"], cwd=REPO, stdin=terminal,
                                capture_output=True, timeout=60, env=repo_env())
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "standard input, which is a terminal here; pipe it in" in result.stderr.decode()


def test_standard_output_that_is_closed_or_full_is_said_to_be_so():
    """Not "processing failed (AttributeError ...)": the audio was fine, the output was not."""
    closed = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m firmware_tools.cli run demo >&-'], cwd=REPO,
                            env=repo_env(), capture_output=True, text=True, timeout=60)
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr, closed.stderr
    require(Path("/dev/full").exists(), "/dev/full")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "demo"], cwd=REPO,
                                env=repo_env(), stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot write a detection to standard output: No space left on device" in result.stderr, result.stderr
    assert "processing failed" not in result.stderr


def test_standard_input_that_is_closed_is_refused_at_once():
    result = subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m firmware_tools.cli run - <&-'], cwd=REPO,
                            capture_output=True, timeout=60, env=repo_env())
    assert result.returncode == 2 and "standard input, which is closed here" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_audio_sampled_below_the_bundles_rate_is_run_with_a_warning(tmp_path):
    audio, rate = soundfile.read(DEMO, dtype="float32")
    low = tmp_path / "low.wav"
    soundfile.write(low, soxr.resample(audio, rate, 4000), 4000, subtype="PCM_16")
    warning = "is sampled at 4000 Hz, below the bundle's 8000 Hz: it is resampled, but holds nothing above 2000 Hz"
    result = basilar("run", low)
    assert result.returncode == 0 and f"warning: {low} {warning}" in result.stderr.decode()
    piped = basilar("run", "-", input=low.read_bytes())  # a WAV stream's rate is known once its header is read
    assert piped.returncode == 0 and f"warning: standard input (WAV: S16_LE, 4000 Hz, 1 channel) {warning}" in \
        piped.stderr.decode()
    assert "warning" not in basilar("run", DEMO).stderr.decode()  # 16 kHz for an 8 kHz bundle: nothing missing


def test_a_live_input_of_digital_silence_is_said_to_be_muted_and_its_return_is_said_too(tmp_path):
    """A muted capture, or a microphone on the other channel of a stereo input, gives exact zeros without an
    error: through arecord's pipe 12 s of them, then sound with two digits, then zeros again."""
    arecord = require_program("arecord")
    demo, rate = soundfile.read(DEMO, dtype="int16")
    samples = np.concatenate([np.zeros(12 * rate, np.int16), demo[:3 * rate], np.zeros(3 * rate, np.int16)])
    env = alsa_file_device(tmp_path, samples)
    recorder = subprocess.Popen([arecord, "-q", "-D", "basilar_test_mic", "-f", "S16_LE", "-r", str(rate), "-c", "1",
                                 "-s", str(len(samples))], stdout=subprocess.PIPE, env=env)
    try:
        result = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "-"], cwd=REPO,
                                stdin=recorder.stdout, capture_output=True, timeout=120, env=env)
    finally:
        recorder.kill()
        recorder.wait()
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    source = "standard input (WAV: S16_LE, 16000 Hz, 1 channel)"
    warning = f"basilar: warning: {source} has given only digital silence (every sample 0) for 10 s, so nothing can"
    assert stderr.count(warning) == 1 and "is its capture muted" in stderr, stderr
    assert stderr.count(f"basilar: {source} gives sound again, after 12 s of digital silence") == 1, stderr
    assert stderr.index(warning) < stderr.index("gives sound again")
    assert [(d.label, round(d.start_s)) for d in parse_text(result.stdout)] == [("9", 13), ("1", 14)]
    # 3 s of zeros at the end are not 10; and a file is no live input: its silence is the recording's
    silent_file = tmp_path / "silent.wav"
    soundfile.write(silent_file, samples, rate, subtype="PCM_16")
    played = basilar("run", silent_file)
    assert played.returncode == 0 and "digital silence" not in played.stderr.decode()


def louder_demo(path: Path, gain: float) -> Path:
    """The demo recorded with `gain` times the gain, clipped at full scale as an ADC does."""
    audio, rate = soundfile.read(DEMO, dtype="float32")
    soundfile.write(path, np.clip(audio * gain, -1, 1), rate, subtype="PCM_16")
    return path


def test_a_recording_that_clips_is_run_with_a_warning_and_one_at_a_sound_level_is_not(tmp_path):
    loud = louder_demo(tmp_path / "loud.wav", 10)  # 20 dB of gain too many
    result = basilar("run", loud)
    stderr = result.stderr.decode()
    assert result.returncode == 0 and stderr.count("warning:") == 1, stderr
    assert re.search(rf"warning: {loud} reached full scale in \d\.\d% of its samples over 10 s: it clips, which "
                     r"flattens the words and costs detections; record it again with less gain", stderr), stderr
    assert len(parse_text(result.stdout)) >= 15  # run to its end all the same
    quieter = louder_demo(tmp_path / "quieter.wav", 3)  # about 10 dB louder: a few peaks reach full scale
    assert "warning" not in basilar("run", quieter).stderr.decode()


def signal_once(args, env, ready, sig):
    """Start `basilar ARGS`, send it `sig` once its stderr so far satisfies `ready` (or after 60 s), and return
    its exit code, stdout (bytes) and all of its stderr (text)."""
    process = subprocess.Popen([sys.executable, "-m", "firmware_tools.cli", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        err = b""
        deadline = time.monotonic() + 60
        while not ready(err) and time.monotonic() < deadline:
            if select.select([process.stderr], [], [], 1)[0]:
                err += os.read(process.stderr.fileno(), 4096)
        process.send_signal(sig)
        out, rest = process.communicate(timeout=20)
    finally:
        process.kill()
    return process.returncode, out, (err + rest).decode()


def test_sigterm_stops_a_realtime_run_cleanly_with_exit_code_0():
    # Let it run paced for a while (its first health report comes after 0.5 s), then stop it.
    returncode, out, stderr = signal_once(["run", "--realtime", "--json", "--health-every", "0.5", str(DEMO)],
                                          repo_env(), lambda err: err.count(b"health: up") >= 4, signal.SIGTERM)
    assert returncode == 0, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    seconds = float(re.search(r"stopped by SIGTERM: ([\d.]+) s of audio", stderr).group(1))
    assert 1.5 < seconds < DEMO_SECONDS / 2  # it stopped early, paced like a live source
    assert all(record["end_s"] <= seconds for record in parse_json(out))


def test_health_is_reported_on_time_while_standard_input_is_quiet():
    """A producer that stalls (a recorder waiting for its device) must not silence the health reports: the device
    would look alive and say nothing. The pipe stays open and empty; SIGTERM then stops the run cleanly."""
    process = subprocess.Popen([sys.executable, "-m", "firmware_tools.cli", "run", "-", "--rate", "8000",
                                "--health-every", "0.5"], cwd=REPO, env=repo_env(), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        err, deadline = b"", time.monotonic() + 20
        while err.count(b"health: up") < 3 and time.monotonic() < deadline:
            if select.select([process.stderr], [], [], 1)[0]:
                err += os.read(process.stderr.fileno(), 4096)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=20)
    finally:
        process.kill()
    stderr = (err + rest).decode()
    assert stderr.count("health: up") >= 3, stderr
    assert process.returncode == 0 and "stopped by SIGTERM: 0.0 s of audio" in stderr


def test_a_stop_signal_while_the_bundle_loads_ends_the_run_cleanly(tmp_path):
    """systemd may stop a service while it is still starting: the run ends with exit code 0, not killed."""
    script = tmp_path / "stopped_while_loading.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from edge.runloop import Pipeline
        from firmware_tools.cli import main

        load = Pipeline.from_bundle.__func__

        def load_and_get_stopped(cls, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the bundle is being loaded
            return load(cls, *args, **kwargs)

        Pipeline.from_bundle = classmethod(load_and_get_stopped)
        sys.exit(main(["run", "demo"]))
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, env=repo_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "stopped by SIGTERM: 0.0 s of audio" in done.stderr and done.stdout == ""


def test_stopping_mid_word_flushes_the_open_event(demo_detections):
    """The event still open at shutdown is written, reported at the shutdown time."""
    first = demo_detections[0]
    # Halfway between the word's end and the event's close: the model is sure of the word by then (the event opens
    # near the word's end and closes about half a second later), and the event is still open.
    stop_at = int((first.end_s + first.detected_s) / 2 * 10) / 10
    require(stop_at > first.end_s, "a first detection that closes more than a chunk after its word")

    class StopAfter(FileSource):
        sent = 0

        def chunks(self):
            for chunk in super().chunks():
                self.sent += len(chunk)
                if self.sent >= stop_at * self.sample_rate:
                    self.stop.set()  # the loop stops after this chunk
                yield chunk

    collect = Collect()
    stop = StopFlag()
    pipeline = Pipeline.from_bundle("default")
    with StopAfter(DEMO, pipeline.sample_rate, stop=stop) as source:
        RunLoop(pipeline, source, [collect], health_every_s=0, stop=stop).run()
    stopped_at = source.sent // pipeline.hop_samples * pipeline.hop_samples / pipeline.sample_rate
    assert stopped_at < first.detected_s
    assert [(e.label, e.start_s, e.detected_s) for e in collect.events] == \
        [(first.label, first.start_s, pytest.approx(stopped_at))]
    assert first.end_s <= collect.events[0].end_s <= stopped_at  # the word's end, or the stream's if no pause yet


def test_a_corrupt_file_fails_clearly_after_writing_the_detections_before_the_damage(tmp_path, demo_detections):
    samples, rate = soundfile.read(DEMO, dtype="int16")
    damaged = tmp_path / "damaged.flac"
    soundfile.write(damaged, samples, rate)
    data = bytearray(damaged.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = bytes(3000)
    damaged.write_bytes(bytes(data))

    result = basilar("run", damaged)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "is corrupt" in stderr and "Traceback" not in stderr
    failed_at = float(re.search(r"stopped after ([\d.]+) s of audio", stderr).group(1))
    assert 10 < failed_at < DEMO_SECONDS - 10
    printed = parse_text(result.stdout)
    before = [d for d in demo_detections if d.end_s <= failed_at - 0.2]
    assert len(before) >= 5
    assert [(d.label, d.start_s) for d in printed[:len(before)]] == [(d.label, round(d.start_s, 2)) for d in before]
    assert f"{len(printed)} detections were written" in stderr


def test_a_wav_cut_short_fails_clearly_after_writing_what_its_audio_held(tmp_path, demo_detections):
    data = DEMO.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:len(data) // 2])  # an interrupted copy: the header still declares the whole demo
    result = basilar("run", cut)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert f"{cut} is cut short: its header declares {DEMO_SECONDS:.2f} s of audio" in stderr
    assert "Traceback" not in stderr
    present = float(re.search(r"the file holds ([\d.]+) s", stderr).group(1))
    assert present == pytest.approx(DEMO_SECONDS / 2, abs=0.01)
    printed = parse_text(result.stdout)
    before = [d for d in demo_detections if d.end_s <= present - 0.2]
    assert len(before) >= 5
    assert [(d.label, d.start_s) for d in printed[:len(before)]] == [(d.label, round(d.start_s, 2)) for d in before]
    assert f"{len(printed)} detections were written" in stderr


def copy_default_bundle(tmp_path, edit):
    from edge.bundle import DEFAULT_BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("edit", [
    lambda m: m["frontend"].update(hash="0" * 64),
    lambda m: m["frontend"]["config"].update(sample_rate=8000, f_high=3500.0),
], ids=["front-end hash", "sample rate"])
def test_a_bundle_that_does_not_match_the_front_end_is_refused(tmp_path, edit):
    bundle = copy_default_bundle(tmp_path, edit)
    result = basilar("run", "--bundle", bundle, DEMO)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "front-end hash does not match" in stderr and "Traceback" not in stderr
    assert result.stdout == b""


@pytest.mark.parametrize("args, message", [
    (["run", "missing.wav"], "audio file not found: missing.wav"),
    (["run", "--threshold-for", "seven=0.5", str(DEMO)], "threshold given for unknown label(s) 'seven'"),
    (["run", "--threshold-for", "7", str(DEMO)], "write LABEL=VALUE"),
    (["run", "--threshold", "1.5", str(DEMO)], "--threshold 1.5: must be a number in (0, 1]"),
    (["run", "--min-score", "2", str(DEMO)], "--min-score 2: must be in [0, 1]"),
    (["run", "--bundle", "no/such/bundle", str(DEMO)], "no bundle at no/such/bundle"),
    (["run", "--bundle", "default", "--root", "/tmp", str(DEMO)], "either --bundle or --root"),
    (["run"], "say what to listen to"),
    (["run", "--serial", "/dev/no-such-tty", str(DEMO)], "cannot open serial port /dev/no-such-tty"),
])
def test_bad_input_is_a_clear_error_with_a_non_zero_exit(args, message):
    result = basilar(*args)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert message in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("breakage", ["release removed", "model damaged"])
def test_a_device_whose_active_bundle_cannot_run_is_told_its_previous_one_can(tmp_path, breakage):
    """At boot an unattended device would restart on a broken `current` every 2 s: the message gives the rollback
    that brings it back up at once, when `previous` is intact (and that rollback works)."""
    from edge.bundle import DEFAULT_BUNDLE, pack_bundle
    from edge.releases import ReleaseStore
    from tests.bundle_variants import tamper_file, variant

    root = tmp_path / "device"
    store = ReleaseStore(root)
    ids = []
    for n in (1, 2):
        archive = tmp_path / f"v{n}.tar.gz"
        pack_bundle(variant(DEFAULT_BUNDLE, tmp_path / f"v{n}", n), archive)
        ids.append(store.install(archive, None))
        store.activate(ids[-1])
    old, new = ids
    if breakage == "release removed":
        shutil.rmtree(root / "releases" / new)
        expected = f"{root}/current points at releases/{new}, which is no installed release"
    else:
        tamper_file(root / "releases" / new)
        expected = f"the active bundle {new[:12]} under {root} is damaged"
    result = basilar("run", "--root", root, DEMO)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and expected in stderr, stderr
    hint = (f"go back to the previous bundle {old[:12]}, which is intact: `cd / && {sys.executable} -m edge.releases "
            f"rollback {root}`")
    assert hint in stderr
    rollback = subprocess.run([sys.executable, "-m", "edge.releases", "rollback", str(root)], capture_output=True)
    assert rollback.returncode == 0, rollback.stderr
    assert basilar("run", "--root", root, DEMO).returncode == 0


def test_run_from_a_device_root_uses_its_current_bundle(tmp_path, demo_detections):
    from edge.bundle import DEFAULT_BUNDLE, pack_bundle
    from edge.releases import ReleaseStore

    root = tmp_path / "device"
    result = basilar("run", "--root", root, DEMO)
    assert result.returncode == 1 and "no bundle is active under" in result.stderr.decode()
    # the device tool as this Python runs it (a bare python3 may lack basilar), from / (not a checkout's sources)
    assert f"`cd / && {sys.executable} -m edge.telemetry.agent PORT --root {root}` here" in result.stderr.decode()

    store = ReleaseStore(root)
    bundle_id = pack_bundle(DEFAULT_BUNDLE, tmp_path / "default.tar.gz")
    store.activate(store.install(tmp_path / "default.tar.gz", None))
    assert store.current() == bundle_id
    result = basilar("run", "--root", root, "--json", DEMO)
    assert result.returncode == 0, result.stderr.decode()
    assert len(parse_json(result.stdout)) == len(demo_detections)


def run_over_serial(*args):
    """`basilar run --serial PTY ARGS` on a real pseudo-terminal: its result and the messages the host end read."""
    master, slave = os.openpty()
    received = bytearray()
    done = threading.Event()
    last_read = [time.monotonic()]

    def drain():
        while not done.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    received.extend(os.read(master, 65536))
                except OSError:
                    return
                last_read[0] = time.monotonic()

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        result = basilar("run", "--serial", os.ttyname(slave), *args)
        while time.monotonic() - last_read[0] < 1.0:  # the pty may still hold frames: read until it is quiet
            time.sleep(0.05)
    finally:
        done.set()
        reader.join()
        os.close(master)
        os.close(slave)
    return result, [frame.message for frame in StreamDecoder().feed(bytes(received))]


def test_serial_telemetry_carries_hello_and_every_detection(demo_detections):
    from edge.telemetry.protocol import Detection as WireDetection
    from edge.telemetry.protocol import Hello

    result, messages = run_over_serial("--baud", 115200, "--device-id", "test-pi", DEMO)
    assert result.returncode == 0, result.stderr.decode()
    hello = [m for m in messages if isinstance(m, Hello)]
    assert hello and hello[0].device_id == "test-pi"
    assert hello[0].sample_rate == Pipeline.from_bundle("default").sample_rate
    wire = [m for m in messages if isinstance(m, WireDetection)]
    assert [(m.label_id, m.start_ms) for m in wire] == \
        [(int(d.label), round(d.start_s * 1000)) for d in demo_detections]
    assert not [m for m in messages if isinstance(m, Log) and m.level == LogLevel.WARNING]


def test_a_warning_reaches_the_host_as_a_warning(tmp_path):
    """A recording that clips: the host reads the warning at its level, as stderr gives it with its prefix."""
    loud = louder_demo(tmp_path / "loud.wav", 10)
    result, messages = run_over_serial(loud)
    assert result.returncode == 0, result.stderr.decode()
    warnings = [m.text for m in messages if isinstance(m, Log) and m.level == LogLevel.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{loud} reached full scale in "), warnings
    assert f"basilar: warning: {warnings[0]}\n" in result.stderr.decode()


class LosingSource(FileSource):
    """The demo as a live input would deliver it on a device that fell behind: the chunks from 20 s to 25 s
    never arrive, and the source says so before the next one (as MicSource does after an overrun)."""

    def __init__(self, path, sample_rate):
        super().__init__(path, sample_rate)
        self.lost = (20 * sample_rate, 25 * sample_rate)
        self._gap = 0

    def chunks(self):
        at = 0
        for chunk in super().chunks():
            at += len(chunk)
            if self.lost[0] < at <= self.lost[1]:
                self._gap += len(chunk)
                continue
            yield chunk

    def take_gap(self):
        gap, self._gap = self._gap, 0
        return gap


def test_audio_lost_to_an_overrun_does_not_shift_the_times_of_later_detections(demo_detections):
    collect = Collect()
    pipeline = Pipeline.from_bundle("default")
    RunLoop(pipeline, LosingSource(DEMO, pipeline.sample_rate), [collect], health_every_s=0).run()
    before = [d for d in demo_detections if d.end_s < 19.5]
    after = [d for d in demo_detections if d.start_s > 26.0]
    assert [d for d in collect.events if d.end_s < 19.5] == before
    later = [d for d in collect.events if d.start_s > 25.0]
    assert [d.label for d in later] == [d.label for d in after] and len(after) >= 8
    for got, expected in zip(later, after):  # to within a hop or two: the front end runs on across the gap
        assert abs(got.start_s - expected.start_s) <= 0.03 and abs(got.end_s - expected.end_s) <= 0.03


def test_microphone_run_reports_overruns_and_stops_cleanly(tmp_path):
    """A real PortAudio input (an ALSA device with no clock, so it overwhelms any consumer)."""
    env = alsa_test_device(tmp_path, np.zeros(16000, np.int16))
    devices = basilar("devices", env=env)
    assert devices.returncode == 0 and "basilar_test_mic" in devices.stdout.decode()

    returncode, _, stderr = signal_once(["run", "mic:basilar_test_mic"], env,
                                        lambda err: b"audio overruns" in err, signal.SIGINT)
    assert "audio overruns:" in stderr and "processing fell behind" in stderr
    assert returncode == 0 and "stopped by SIGINT" in stderr
    overruns = int(re.search(r"(\d+) overruns; bundle ", stderr.strip()).group(1))
    assert overruns > 0


def test_service_writes_the_documented_systemd_unit(tmp_path):
    result = basilar("service", "--exec", "/usr/local/bin/basilar")
    assert result.returncode == 0
    assert result.stdout.decode() == (REPO / "docs" / "basilar.service").read_text()
    unit = result.stdout.decode()
    assert "ExecStart=/usr/local/bin/basilar run --root /opt/basilar --json mic" in unit
    assert "Restart=on-failure" in unit and "WantedBy=multi-user.target" in unit

    path = tmp_path / "basilar.service"
    result = basilar("service", "--exec", sys.executable, "--user", "root", "--serial", "/dev/ttyAMA0",
                     "--input", "mic:USB Audio", "--channels", 2, "-o", path)
    assert result.returncode == 0
    assert '--serial /dev/ttyAMA0 --baud 115200 --channels 2 "mic:USB Audio"' in path.read_text()
    analyze = require_program("systemd-analyze")
    check = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_service_quotes_its_paths_and_refuses_inputs_a_service_cannot_use(tmp_path):
    """A root with a space stays one path for systemd; a relative file is made absolute (a service starts in /);
    standard input is refused (systemd gives a service none); a program the service user cannot reach is named."""
    unit = tmp_path / "spaced.service"
    result = basilar("service", "--exec", sys.executable, "--root", str(tmp_path / "my root"), "--input",
                     "rec.wav", "-o", unit)
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    assert f'ReadWritePaths="{tmp_path}/my root"' in text and f" {REPO}/rec.wav" in text
    named_like_a_mic = basilar("service", "--exec", sys.executable, "--input", "mic_kitchen.wav")
    assert f" {REPO}/mic_kitchen.wav" in named_like_a_mic.stdout.decode()  # a file, not mic[:DEVICE]
    analyze = require_program("systemd-analyze")
    check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "ReadWritePaths" not in check.stderr, check.stderr
    in_tmp = basilar("service", "--exec", sys.executable, "--input", str(tmp_path / "rec.wav"))
    assert in_tmp.returncode == 2 and "PrivateTmp=yes" in in_tmp.stderr.decode()  # the service's /tmp is its own
    result = basilar("service", "--exec", sys.executable, "--input", "-")
    assert result.returncode == 2 and "systemd gives a service no standard input" in result.stderr.decode()

    home = Path(tempfile.mkdtemp(prefix="basilar-home-"))  # under /tmp, which every user may enter (pytest's is 0700)
    try:
        (home / "venv" / "bin").mkdir(parents=True)
        program = home / "venv" / "bin" / "basilar"
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
        home.chmod(0o700)  # as adduser makes a home on Debian
        result = basilar("service", "--exec", program, "--user", "nobody")
        assert result.returncode == 0 and f"ExecStart={program} run" in result.stdout.decode()
        assert f"who cannot run {program}: {home} (mode 0700) is not open to it" in result.stderr.decode()
        home.chmod(0o755)
        assert "warning" not in basilar("service", "--exec", program, "--user", "nobody").stderr.decode()
    finally:
        shutil.rmtree(home)


def test_service_needs_an_absolute_program_path():
    result = basilar("service", "--exec", "basilar")
    assert result.returncode == 2 and "absolute path" in result.stderr.decode()
    result = basilar("service", "--exec", "/usr/local/bin/basilar", "--root", "basilar")
    assert result.returncode == 2 and "'basilar': systemd needs an absolute path" in result.stderr.decode()


def unit_line(unit: str, key: str) -> str:
    return next(line for line in unit.splitlines() if line.startswith(f"{key}="))[len(key) + 1:]


def systemd_reads(word: str) -> str:
    """What systemd makes of one word of an ExecStart= line: it is written as the end of a program path that does
    not exist, and systemd-analyze verify names the path it read (`$` is expanded later, when the command runs)."""
    analyze = require_program("systemd-analyze")
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.service"
        probe.write_text(f"[Service]\nExecStart=/basilar-probe/word:{word}\n")  # `word:` keeps a `/` single
        check = subprocess.run([analyze, "verify", str(probe)], capture_output=True, text=True, timeout=60)
    read = re.search(r"(?:Command |special characters: )/basilar-probe/word:(.*?)(?: is not executable|\n)",
                     check.stderr)
    assert read, check.stderr
    return read[1]


@pytest.mark.parametrize("option, value", [
    ("--input", "/data/rec%20one.wav"),  # %2 would be a specifier, and an invalid one
    ("--input", "mic:%h"),  # %h: systemd would put the home folder there
    ("--input", "/data/it's \"a\" \\x $HOME ;.wav"),  # quotes, a backslash, a variable, a separator
    ("--root", "/srv/my 100% basilar $X"),
    ("--serial", "/dev/serial/by-id/usb-FTDI_%i"),
])
def test_service_writes_values_as_systemd_reads_them(tmp_path, option, value):
    """systemd quotes and escapes its own way (systemd.syntax(7)), not a shell's: each value reaches `basilar run`
    as given, and the unit passes systemd-analyze verify."""
    path = tmp_path / "basilar.service"
    result = basilar("service", "--exec", sys.executable, "--user", "root", option, value, "-o", path)
    assert result.returncode == 0, result.stderr.decode()
    unit = path.read_text()
    analyze = require_program("systemd-analyze")
    check = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "basilar.service" not in check.stderr, check.stderr
    quoted = {"/data/rec%20one.wav": "/data/rec%%20one.wav", "mic:%h": "mic:%%h",
              "/data/it's \"a\" \\x $HOME ;.wav": '"/data/it\'s \\"a\\" \\\\x $$HOME ;.wav"',
              "/srv/my 100% basilar $X": '"/srv/my 100%% basilar $$X"',
              "/dev/serial/by-id/usb-FTDI_%i": "/dev/serial/by-id/usb-FTDI_%%i"}[value]
    words = {"--input": f"--root /opt/basilar --json {quoted}", "--root": f"--root {quoted} --json mic",
             "--serial": f"--root /opt/basilar --json --serial {quoted} --baud 115200 mic"}[option]
    assert unit_line(unit, "ExecStart") == f"{sys.executable} run {words}"
    assert systemd_reads(quoted).replace("$$", "$") == value  # `$$` is a `$` when the command runs
    if option == "--input":
        assert unit_line(unit, "Description") == f"basilar machine hearing ({value.replace('%', '%%')})"
    if option == "--root":
        assert unit_line(unit, "ReadWritePaths") == '"/srv/my 100%% basilar $X"'  # no variables there


def test_service_runs_a_program_whose_path_systemd_must_be_told_apart(tmp_path):
    """A space and a `%` in the program's path: verify checks that the program it reads is there."""
    program = tmp_path / "basilar 100%" / "basilar"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    path = tmp_path / "basilar.service"
    result = basilar("service", "--exec", program, "--user", "root", "-o", path)
    assert result.returncode == 0, result.stderr.decode()
    assert unit_line(path.read_text(), "ExecStart").startswith(f'"{tmp_path}/basilar 100%%/basilar" run ')
    analyze = require_program("systemd-analyze")
    check = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "basilar.service" not in check.stderr, check.stderr


@pytest.mark.parametrize("args, message", [
    (["--input", "mic\nX=1"], "Invalid value for --input: 'mic\\nX=1': a systemd unit cannot hold a newline"),
    (["--root", "/opt/basilar\tx"], "Invalid value for --root: '/opt/basilar\\tx': a systemd unit cannot hold"),
    (["--root", '/opt/"basilar"'], "would reach the unit's two settings differently"),  # ReadWritePaths= and --root
    (["--user", "basilar\nExecStartPre=/bin/sh"], "Invalid value for --user: "),
    (["--user", ""], "Invalid value for --user: '' is empty (an unset variable?): systemd would run the service as "
                     "root; give a user name"),  # systemd reads `User=` as root
    (["--user", "a b"], "Invalid value for --user: 'a b' is not a user name; give a user name (letters, digits"),
    (["--user", "0day"], "'0day' is not a user name"),  # systemd refuses it, or took it for a uid
    (["--user", "a" * 33], "at most 32 characters"),
    (["--exec", "/tmp/sv/it's/bin/basilar"], "systemd cannot run a program whose path holds a quote"),
    (["--exec", "/opt/$HOME/basilar"], "Invalid value for --exec: '/opt/$HOME/basilar': systemd cannot run"),
    (["--input", "rec.wav", "--channels", "2"], "Invalid value for --channels: a file is read by its own header"),
    (["--serial", ""], "Invalid value for '--serial': the port is empty"),
    (["--serial", "/dev/ttyAMA0", "--baud", "-5"], "Invalid value for '--baud': -5 is not in the range 50<=x<="),
    (["--serial", "/dev/ttyAMA0", "--baud", "0"], "Invalid value for '--baud': 0 is not in the range"),
])
def test_service_refuses_what_systemd_would_refuse_or_run_wrong(args, message):
    """A newline would end the setting's line (the rest a new setting); systemd refuses a program path with quotes
    or a backslash, and expands `$` in it only in argv[0]; an empty port or bad baud rate fails on every restart."""
    result = basilar("service", "--exec", "/usr/local/bin/basilar", *args)
    assert result.returncode == 2 and message in result.stderr.decode(), result.stderr.decode()
    assert result.stdout == b""


@pytest.mark.parametrize("user", ["basilar", "_basilar-svc2", "Basilar", "1000"])
def test_service_runs_as_a_user_name_or_a_numeric_uid(user):
    result = basilar("service", "--exec", "/usr/local/bin/basilar", "--user", user)
    assert result.returncode == 0 and f"\nUser={user}\n" in result.stdout.decode(), result.stderr.decode()


@pytest.mark.parametrize("baud", [50, 12_000_000])  # 12 Mbaud: a fast USB adapter's custom rate
def test_service_accepts_the_slowest_and_fastest_baud_rates(baud):
    result = basilar("service", "--exec", "/usr/local/bin/basilar", "--serial", "/dev/ttyAMA0", "--baud", baud)
    assert result.returncode == 0 and f" --serial /dev/ttyAMA0 --baud {baud} mic\n" in result.stdout.decode()


@pytest.mark.parametrize("args, message", [
    (["--serial", ""], "Invalid value for '--serial': the port is empty (an unset variable?)"),
    (["--serial", "/dev/no-such-tty", "--baud", "0"], "Invalid value for '--baud': 0 is not in the range 50<=x<="),
    (["--serial", "/dev/no-such-tty", "--baud", "2147483648"], "2147483648 is not in the range 50<=x<=2147483647"),
    (["--health-every", "nan"], "'nan' is not a finite number"),  # read as "never" before
    (["--health-every", "-1"], "-1.0 is not in the range x>=0"),
])
def test_run_refuses_an_empty_serial_port_and_a_baud_rate_a_tty_cannot_take(args, message):
    """`--serial "$PORT"` with PORT unset must not run without telemetry; B0 on a tty means hang up."""
    result = basilar("run", *args, DEMO)
    assert result.returncode == 2 and message in result.stderr.decode(), result.stderr.decode()
    assert result.stdout == b""


def test_service_runs_the_basilar_program_it_was_started_as():
    """From a virtual environment that is not on PATH, the unit must run that environment's basilar."""
    program = Path(sys.executable).parent / "basilar"  # where pip put the console script for this Python
    require(program.is_file(), f"the basilar console script at {program}")
    result = subprocess.run([str(program), "service"], capture_output=True, timeout=60,
                            env=repo_env(PATH="/usr/bin:/bin"))
    assert result.returncode == 0, result.stderr
    assert f"ExecStart={program} run --root /opt/basilar --json mic" in result.stdout.decode()


def test_a_bundle_deployed_over_the_serial_link_is_swapped_in_without_stopping_audio(tmp_path, tiny_bundle,
                                                                                     tiny_bundle_v2):
    """`basilar run --serial --root` receives an upload from `deploy_serial` and switches bundles mid-stream."""
    from edge.bundle import bundle_id, pack_bundle
    from edge.releases import ReleaseStore
    from firmware_tools.serial_deploy import deploy_serial
    from tests.serial_pty import PtyCable

    root = tmp_path / "device"
    store = ReleaseStore(root)
    pack_bundle(tiny_bundle, tmp_path / "v1.tar.gz")
    store.activate(store.install(tmp_path / "v1.tar.gz", None))
    new_id = pack_bundle(tiny_bundle_v2, tmp_path / "v2.tar.gz")
    cable = PtyCable(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "firmware_tools.cli", "run", "--root", str(root), "--serial",
                                cable.device_path, "--realtime", str(DEMO)], cwd=REPO, env=repo_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        result = deploy_serial(tmp_path / "v2.tar.gz", cable.host_path, 115200, hello_timeout=30)
        assert result.uploaded and result.bundle_id == new_id == bundle_id(tiny_bundle_v2)
        err = b""
        deadline = time.monotonic() + 30
        while b"switched to bundle" not in err and time.monotonic() < deadline:
            if select.select([process.stderr], [], [], 1)[0]:
                err += os.read(process.stderr.fileno(), 4096)
        assert process.poll() is None  # still listening
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=20)
    finally:
        process.kill()
        cable.close()
    stderr = (err + rest).decode()
    assert f"switched to bundle {new_id[:12]} without stopping the audio input" in stderr
    assert process.returncode == 0 and "stopped by SIGTERM" in stderr
    assert store.current() == new_id


def test_run_keep_sets_how_many_releases_a_serial_upload_leaves(tmp_path, tiny_bundle):
    """`basilar run --root R --serial P --keep N`: the releases kept after each bundle uploaded over the link."""
    from edge.bundle import pack_bundle
    from firmware_tools.run_cmd import SerialLink
    from tests.bundle_variants import variant

    controller, device = os.openpty()
    link = SerialLink(os.ttyname(device), 115200, "test", tmp_path / "root", on_new_bundle=None, keep=2)
    try:
        for n in range(1, 4):
            archive = tmp_path / f"v{n}.tar.gz"
            newest = pack_bundle(variant(tiny_bundle, tmp_path / f"v{n}", n), archive)
            link.link.receiver.install(archive, hashlib.sha256(archive.read_bytes()).hexdigest())
        assert len(link.store.releases()) == 2 and link.store.current() == newest
    finally:
        link.close()
        os.close(device)
        os.close(controller)


def test_swapping_the_pipeline_keeps_the_stream_clock(tiny_bundle, tiny_bundle_v2):
    first, second = Pipeline.from_bundle(tiny_bundle), Pipeline.from_bundle(tiny_bundle_v2)
    logs = []

    class Said(Sink):
        def __init__(self):
            self.bundles = []

        def bundle(self, bundle_id, labels, sample_rate):
            self.bundles.append(bundle_id)

        def log(self, text):
            logs.append(text)

    class SwapAfterOneSecond(FileSource):
        def chunks(self):
            for i, chunk in enumerate(super().chunks()):
                if i == 10:
                    loop.swap_pipeline(second)
                yield chunk

    sink = Said()
    with SwapAfterOneSecond(DEMO, first.sample_rate) as source:
        loop = RunLoop(first, source, [sink], health_every_s=0)
        stats = loop.run()
    assert loop.pipeline is second
    assert sink.bundles == [first.bundle.id, second.bundle.id]
    assert any("switched to bundle" in line for line in logs)
    hops = round(stats.audio_s * first.sample_rate) // first.hop_samples
    assert abs(second.detector.frames_seen - hops) <= 1  # the new detector's clock carried on from the old one's


def test_a_bundle_at_another_rate_is_refused_mid_stream_with_the_ways_to_switch(tiny_bundle, tmp_path):
    import json

    faster = tmp_path / "16k"
    shutil.copytree(tiny_bundle, faster)
    manifest = json.loads((faster / "manifest.json").read_text())
    manifest["frontend"]["config"]["sample_rate"] = 16000
    from edge.frontend import FrontendConfig

    manifest["frontend"]["hash"] = FrontendConfig.from_dict(manifest["frontend"]["config"]).hash()
    (faster / "manifest.json").write_text(json.dumps(manifest))
    running = Pipeline.from_bundle(tiny_bundle)
    loop = RunLoop(running, FileSource(DEMO, running.sample_rate), [], health_every_s=0)
    with pytest.raises(PipelineError, match="16000 Hz but the audio input is open at 8000 Hz.*deployed over SSH.*"
                                            "edge.releases activate"):
        loop.swap_pipeline(Pipeline.from_bundle(faster))
    assert loop.pipeline is running
