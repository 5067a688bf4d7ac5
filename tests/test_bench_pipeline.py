"""`basilar bench model` and `basilar bench run` work and report what they measured (their figures are not
checked against the targets here: speed is measured by the commands, never asserted in a unit test)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from edge.bundle import load_bundle
from firmware_tools import bench_run, bench_soak
from firmware_tools.cli import main
from tests.conftest import REPO

DEMO_WORDS = 20  # the demo's digits, all of which the shipped bundle finds (test_run)


def bench(*args, timeout=300):
    """In a process of its own: the commands pin themselves to one core."""
    return subprocess.run([sys.executable, "-m", "firmware_tools.cli", "bench", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle("default")


def test_bench_model_times_the_default_step_model(default_bundle):
    result = bench("model", "--steps", 300, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bundle"] == default_bundle.id
    assert report["model_bytes"] == default_bundle.step_model_path.stat().st_size
    assert report["runtime"] == "ai-edge-litert" and report["steps"] == 300
    assert 0 < report["step_us_p50"] <= report["step_us_p99"] and report["step_us_mean"] > 0

    assert report["step_us_wall_mean"] > 0
    met = report["step_us_mean"] <= 20 and report["model_bytes"] <= 100_000
    assert report["targets_met"] is met

    text = bench("model", "--bundle", "default", "--steps", 300)
    assert text.returncode == 0, text.stderr  # without --check: a report only, whatever this host's speed
    assert text.stdout.startswith(f"step model {report['model_bytes']} bytes on ai-edge-litert, one core")
    assert "targets: mean step <= 20 us, model <= 100,000 bytes: " in text.stdout


def test_bench_model_check_fails_when_a_target_is_missed(monkeypatch):
    from firmware_tools import bench_model

    monkeypatch.setattr(bench_model, "pin_to_one_cpu", lambda: None)  # leave the test process's cores alone
    monkeypatch.setattr(bench_model, "TARGETS", {"step_us_mean": 1e9, "model_bytes": 1000})
    missed = CliRunner().invoke(main, ["bench", "model", "--steps", "300", "--check"])
    assert missed.exit_code == 1 and "target(s) missed: model_bytes" in missed.output and "MISSED" in missed.output


def test_bench_model_bad_bundles_are_clear_errors():
    missing = bench("model", "no/such/bundle", "--steps", 100)
    assert missing.returncode == 1 and "no bundle at no/such/bundle" in missing.stderr
    both = bench("model", "default", "--bundle", "other", "--steps", 100)
    assert both.returncode == 2 and "two bundles given (default and --bundle other); give one" in both.stderr


def test_bench_run_streams_the_demo_and_reports_every_figure(default_bundle):
    result = bench("run", "--seconds", 55.3, "--hop-seconds", 2, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bundle"] == default_bundle.id
    assert report["audio_s"] == 55.3 and report["detections"] == DEMO_WORDS  # it ran the real pipeline
    assert report["hops_timed"] == 200
    assert 0 < report["hop_p50_ms"] <= report["hop_p99_ms"] <= report["hop_max_ms"]
    assert report["speed_x"] > 0 and report["peak_rss_mb"] > 0
    assert min(report[k] for k in ("frontend_us_per_hop", "model_step_us", "detector_us_per_hop")) > 0
    met = (report["speed_x"] >= 200 and report["hop_p99_ms"] <= 1 and report["peak_rss_mb"] <= 150)
    assert report["targets_met"] is met


def test_the_recording_is_looped_without_copies_of_it():
    recording = np.arange(1000, dtype=np.int16)
    for total, size in ((3500, 160), (999, 800), (2000, 1000), (10, 4000), (3900, 1600)):
        pieces = list(bench_run.looped(recording, total, size))
        np.testing.assert_array_equal(np.concatenate(pieces), np.tile(recording, 4)[:total])
        assert len(pieces) == -(-total // size)  # whole pieces of `size`, however short the recording


def test_bench_run_memory_is_the_pipelines_not_the_benchmarks_and_hops_are_as_many_as_asked():
    short, long, hops = (json.loads(bench("run", "--seconds", s, "--hop-seconds", h, "--json").stdout)
                         for s, h in ((20, 1), (600, 1), (2, 5)))
    assert long["peak_rss_mb"] - short["peak_rss_mb"] < 3  # 30x the audio, the same memory
    assert hops["hops_timed"] == 500  # --hop-seconds longer than --seconds is fed in full


def test_bench_run_check_fails_when_a_target_is_missed(monkeypatch):
    monkeypatch.setattr(bench_run, "pin_to_one_cpu", lambda: None)  # leave the test process's cores alone
    monkeypatch.setattr(bench_run, "TARGETS", {**bench_run.TARGETS, "speed_x": 1e12})
    args = ["bench", "run", "--seconds", 2, "--hop-seconds", 1]
    missed = CliRunner().invoke(main, [*map(str, args), "--check"])
    assert missed.exit_code == 1 and "target(s) missed: speed_x" in missed.output
    assert "speed (CPU)" in missed.output and "MISSED" in missed.output
    assert CliRunner().invoke(main, list(map(str, args))).exit_code == 0  # without --check: a report only


def test_bench_run_with_a_missing_bundle_is_a_clear_error():
    result = bench("run", "--bundle", "no/such/bundle", "--seconds", 1, "--hop-seconds", 1)
    assert result.returncode == 1 and "no bundle at no/such/bundle" in result.stderr


@pytest.mark.parametrize("samples, rate", [(0, 8000), (1, 44100)])  # one sample at 44.1 kHz is none at 8 kHz
def test_bench_run_on_an_empty_or_too_short_recording_is_a_clear_error(tmp_path, samples, rate):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(samples, np.int16), rate)
    result = bench("run", "--audio", empty, "--seconds", 1, "--hop-seconds", 1)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{empty} holds no audio at 8000 Hz (it is empty or too short)" in result.stderr, result.stderr


@pytest.mark.parametrize("rate", [None, 44100])
def test_bench_soak_runs_basilar_run_pass_after_pass_and_hears_the_same_words(tmp_path, default_bundle, rate):
    # Ten seconds of the demo (its first three digits) round and round: 3 minutes of audio, 18 passes, the real
    # `basilar run -` in its own process; at 44.1 kHz it resamples them as it would a microphone's.
    audio = tmp_path / "ten_s.wav"
    demo, demo_rate = soundfile.read(bench_run.DEMO, dtype="int16")
    soundfile.write(audio, demo[:10 * demo_rate], demo_rate)
    result = bench("soak", "--hours", 0.05, "--audio", audio, "--json", *(["--rate", rate] if rate else []))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input_rate"] == (rate or default_bundle.frontend_config.sample_rate)
    assert report["bundle"] == default_bundle.id and report["pass_s"] == 10.0 and report["passes"] == 18
    assert report["detections_per_pass_min"] == report["detections_per_pass_max"] == 3
    assert report["detections"] == 3 * report["passes"] and f"{report['detections']} detections" in report["summary"]
    assert report["passes_differing"] == 0 and report["max_hop_shift"] <= 2 and report["first_difference"] is None
    assert 0 <= report["max_score_change"] <= 0.01
    assert report["rss_samples"] >= 1 and 0 < report["rss_settled_mb"] <= report["peak_rss_mb"] < 150
    assert report["speed_x"] > 0 and report["targets_met"]


def test_a_pass_that_hears_other_words_or_moves_them_is_reported():
    hop_s, pass_hops, passes = 0.01, 1000, 5

    def word(label, start_hop, k, score=0.99):
        return {"label": label, "score": score, "start_s": (k * pass_hops + start_hop) * hop_s,
                "end_s": (k * pass_hops + start_hop + 30) * hop_s}

    same = [word("3", 100, k) for k in range(passes)] + [word("7", 500, k) for k in range(passes)]
    assert bench_soak.compare_passes(same, pass_hops, hop_s, passes)["differing"] == []
    moved = [d for d in same if d["start_s"] != 35.0] + [word("7", 503, 3, score=0.95)]
    report = bench_soak.compare_passes(sorted(moved, key=lambda d: d["start_s"]), pass_hops, hop_s, passes)
    assert report["differing"] == [] and report["hop_shift"] == 3 and report["score_change"] == 0.04
    renamed = [d for d in same if d["start_s"] != 35.0] + [word("1", 500, 3)]
    report = bench_soak.compare_passes(sorted(renamed, key=lambda d: d["start_s"]), pass_hops, hop_s, passes)
    assert report["differing"] == [3] and report["first_difference"]["got"][-1][0] == "1"
    lost = [d for d in same if d["start_s"] != 35.0]
    assert bench_soak.compare_passes(lost, pass_hops, hop_s, passes)["per_pass_min"] == 1
    # The first pass starts from rest and the last is cut by the end of the stream: neither is compared.
    ends = [d for d in same if d["start_s"] not in (5.0, 45.0)] + [word("7", 505, 0), word("1", 500, 4)]
    report = bench_soak.compare_passes(sorted(ends, key=lambda d: d["start_s"]), pass_hops, hop_s, passes)
    assert report["differing"] == [] and report["hop_shift"] == 0 and report["per_pass_min"] == 2


def test_memory_that_keeps_growing_is_reported():
    growing = [(hour * 3600.0, 55.0 + 0.1 * hour) for hour in range(25)]
    report = bench_soak.memory_figures(growing)
    assert report["rss_settled_mb"] == 55.2 and report["rss_end_mb"] == 57.4
    assert report["rss_growth_mb"] == 2.2 > bench_soak.TARGETS["rss_growth_mb"]
    assert report["rss_by_tenth_mb"] == [55.2, 55.4, 55.7, 55.9, 56.1, 56.4, 56.6, 56.9, 57.1, 57.4]


def test_bench_soak_check_fails_when_a_target_is_missed(monkeypatch):
    monkeypatch.setattr(bench_soak, "TARGETS", {**bench_soak.TARGETS, "peak_rss_mb": 1.0})
    missed = CliRunner().invoke(main, ["bench", "soak", "--hours", "0.1", "--check"])
    assert missed.exit_code == 1 and "target(s) missed: peak_rss_mb" in missed.output
    assert "peak" in missed.output and "MISSED" in missed.output


def test_bench_soak_says_why_basilar_run_failed(monkeypatch):
    failing = [sys.executable, "-c", "import sys; sys.stdin.read(1); sys.exit('Error: the input went away')"]
    monkeypatch.setattr(bench_soak, "run_command", lambda bundle, rate: failing)
    result = CliRunner().invoke(main, ["bench", "soak", "--hours", "0.02"])
    assert result.exit_code == 1
    assert "`basilar run` exited with status 1: Error: the input went away" in result.output


def test_bench_soak_on_a_recording_under_two_seconds_is_a_clear_error(tmp_path):
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(8000, np.int16), 8000)
    result = bench("soak", "--audio", short, "--hours", 0.02)
    assert result.returncode == 1 and "shorter than two seconds" in result.stderr and "Traceback" not in result.stderr


def fake_basilar_run(tmp_path, monkeypatch, body: str):
    """A stand-in for `basilar run -` that reads the raw PCM it is fed (16-bit, at the rate it is given) and then
    does what `body` says: to test what the benchmark makes of a run that goes wrong."""
    script = tmp_path / "fake_run.py"
    script.write_text("import sys\nrate = int(sys.argv[1])\n" + body)
    monkeypatch.setattr(bench_soak, "run_command", lambda bundle, rate: [sys.executable, str(script), str(rate)])


@pytest.mark.parametrize("read, said", [
    ("8000 * 2 * 60", "`basilar run` did not end as a full run does"),  # stopped before the audio ended
    ("", "it said: basilar: stopped by SIGTERM"),  # heard everything, but did not say done
])
def test_bench_soak_refuses_a_run_that_did_not_end_as_a_full_run_does(tmp_path, monkeypatch, read, said):
    # A run stopped by SIGTERM exits 0 and says how much it heard: not a full run.
    fake_basilar_run(tmp_path, monkeypatch, f"heard = len(sys.stdin.buffer.read({read})) / 2 / rate\n"
                     "sys.stderr.write(f'basilar: stopped by SIGTERM: {heard:.1f} s of audio in 0.1 s\\n')\n")
    result = CliRunner().invoke(main, ["bench", "soak", "--hours", "0.1"])
    assert result.exit_code == 1 and "did not end as a full run does" in result.output and said in result.output
    if read:
        assert "stopped by SIGTERM: 60.0 s of audio" in result.output


def test_bench_soak_refuses_a_line_of_basilar_run_that_is_not_json(tmp_path, monkeypatch):
    fake_basilar_run(tmp_path, monkeypatch, "print('not json', flush=True)\n"
                     "heard = len(sys.stdin.buffer.read()) / 2 / rate\n"
                     "sys.stderr.write(f'basilar: done: {heard:.1f} s of audio in 0.1 s\\n')\n")
    result = CliRunner().invoke(main, ["bench", "soak", "--hours", "0.1"])
    assert result.exit_code == 1 and "printed a line that is not JSON: 'not json'" in result.output


def test_bench_soak_on_a_recording_where_nothing_is_heard_misses_a_target(tmp_path):
    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(10 * 8000, np.int16), 8000)
    result = bench("soak", "--audio", silence, "--hours", 0.05, "--check")
    assert result.returncode == 1 and "target(s) missed: detections_per_pass_min" in result.stderr
    assert "0-0 a pass (target >= 1)  MISSED" in result.stdout


def test_bench_soak_runs_unpinned_where_the_os_will_not_pin(monkeypatch):
    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(bench_soak.os, "sched_setaffinity", refuse)
    result = CliRunner().invoke(main, ["bench", "soak", "--hours", "0.1"])
    assert result.exit_code == 0, result.output
    assert "not pinned" in result.output


@pytest.mark.parametrize("args, said", [
    (["telemetry", "--frames", "1000", "--seconds", "0.5"], "not pinned"),
    (["frontend", "--seconds", "0.05", "--repeats", "1", "--channels", "8"], "CPU not pinned"),
    (["run", "--seconds", "1", "--hop-seconds", "1"], "not pinned"),
    (["model", "--steps", "100"], "not pinned")])
def test_benchmarks_run_unpinned_where_the_os_will_not_pin(monkeypatch, args, said):
    """A cpuset or seccomp policy that refuses sched_setaffinity (EPERM): the benchmark runs where the scheduler
    puts it and says so, as bench soak does, instead of a traceback or a bare "[Errno 1]". In-process is safe:
    nothing gets pinned."""
    def refuse(pid, cpus):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(bench_soak.os, "sched_setaffinity", refuse)
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code in (0, 1) and not isinstance(result.exception, OSError), result.output
    assert said in result.output and "Errno" not in result.output
    if args[0] in ("run", "model"):
        report = json.loads(CliRunner().invoke(main, ["bench", *args, "--json"]).output)
        assert report["cpu"] is None


def test_bench_soak_samples_memory_only_while_basilar_run_listens(tmp_path):
    # Two passes of the shortest recording taken (2 s at 8 kHz: 32,000 bytes each) fit in the pipe before
    # `basilar run` has even loaded: its start-up (tens of MB less) must not be in the memory figures.
    audio = tmp_path / "short_pass.wav"
    demo, demo_rate = soundfile.read(bench_run.DEMO, dtype="int16")
    soundfile.write(audio, demo[:2 * demo_rate], demo_rate)
    result = bench("soak", "--hours", 0.05, "--audio", audio, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert None not in report["rss_by_tenth_mb"]
    assert min(report["rss_by_tenth_mb"]) >= 0.95 * report["peak_rss_mb"]


LEAKY_RUN = """
import time
held, heard = [], 0
while chunk := sys.stdin.buffer.read(rate * 2 // 10):  # a tenth of a second at a time, as basilar run reads
    heard += len(chunk) / 2 / rate
    held.append(b"x" * 10_000)  # 100 kB a second of audio, never freed
    time.sleep(0.002)
sys.stderr.write(f"basilar: done: {heard:.1f} s of audio in 1 s\\n")
"""


def test_bench_soak_sees_a_run_that_keeps_memory_for_every_second_it_hears(tmp_path, monkeypatch):
    # The fewest passes a run has (four), of a 20 s recording: 80 s of audio, 8 MB kept in all. The memory figures
    # follow where the child is in the audio, so the growth shows however few the passes.
    audio = tmp_path / "twenty_s.wav"
    soundfile.write(audio, np.zeros(20 * 8000, np.int16), 8000)
    fake_basilar_run(tmp_path, monkeypatch, LEAKY_RUN)
    result = CliRunner().invoke(main, ["bench", "soak", "--hours", "0.01", "--audio", str(audio), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passes"] == 4 and report["rss_growth_mb"] > 4
    assert report["rss_by_tenth_mb"] == sorted(report["rss_by_tenth_mb"])
