"""Smoke test of `basilar bench frontend`: it runs and reports every field (the speeds themselves are not tested).

It runs as a subprocess because the benchmark pins its own process to one CPU.
"""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from firmware_tools.cli import main

from tests.conftest import REPO, require_module


def bench(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "firmware_tools.cli", "bench", "frontend", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report():
    done = bench("--seconds", "0.2", "--repeats", "1", "--channels", "8,16", "--accuracy", "--accuracy-seconds",
                 "0.1", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_name(report, prefix, channels):
    [entry] = [r for r in report["results"] if r["name"].startswith(prefix) and r["channels"] == channels]
    return entry


def test_report_has_timings_for_ours_and_scipy_at_every_channel_count(report):
    assert report["audio_seconds"] == 0.2 and report["repeats"] == 1 and report["sample_rate"] == 16000
    if hasattr(os, "sched_setaffinity"):
        assert report["pinned_cpu"] in os.sched_getaffinity(0)
    for channels in (8, 16):
        for prefix in ("basilar front end", "basilar filter stage", "scipy.signal.sosfilt"):
            entry = by_name(report, prefix, channels)
            assert entry["available"] and entry["seconds"] > 0
            assert entry["x_realtime"] == pytest.approx(0.2 / entry["seconds"])
            assert entry["ns_per_channel_sample"] == pytest.approx(entry["seconds"] / (3200 * channels) * 1e9)
        # Our fixed-point filter stage computed the same filter as scipy's float64 one.
        assert by_name(report, "basilar filter stage", channels)["snr_vs_float64_db"] > 80
        overs = {s["over"].split()[0] for s in report["speedups"] if s["channels"] == channels}
        assert "scipy.signal.sosfilt" in overs
    for s in report["speedups"]:
        assert s["front_end"] > 0 and s["filter_stage"] > 0


def test_arithmetic_limit_is_reported(report):
    assert [a["channels"] for a in report["arithmetic"]] == [8, 16]
    for a in report["arithmetic"]:
        assert a["macs_per_channel_sample"] == 16 and a["gmac_per_s"] > 0
        filters = by_name(report, "basilar filter stage", a["channels"])
        assert a["gmac_per_s"] == pytest.approx(16 / filters["ns_per_channel_sample"])


def test_accuracy_report_gives_min_and_median_snr_at_both_levels(report):
    assert [row["channels"] for row in report["accuracy"]] == [8, 16]
    for row in report["accuracy"]:
        assert 0 < row["headroom_used"] < 1
        assert [level["dbfs"] for level in row["levels"]] == [-40.0, -6.0]
        for level in row["levels"]:
            assert 60 < level["snr_min_db"] <= level["snr_median_db"] < 200
            assert 99 < level["worst_channel_hz"] < 7000


@pytest.mark.parametrize("module, prefix, channels", [("cmsisdsp", "cmsisdsp", 16),
                                                      ("pymicro_features", "pymicro_features", 40)])
def test_optional_comparisons_run_where_installed(report, module, prefix, channels):
    require_module(module)
    entry = by_name(report, prefix, channels)
    assert entry["available"] and entry["x_realtime"] > 0
    if module == "cmsisdsp":
        assert entry["snr_vs_float64_db"] > 40  # the same filter, in plain Q31 truncating arithmetic


def test_text_report_reads_as_a_table():
    done = bench("--seconds", "0.1", "--repeats", "1", "--channels", "8", "--no-speed", "--accuracy",
                 "--accuracy-seconds", "0.05")
    assert done.returncode == 0, done.stderr
    assert "accuracy: fixed-point filter stage vs float64 reference" in done.stdout
    assert "8 ch at   -40 dBFS: min" in done.stdout and "no overflow" in done.stdout
    assert "white noise at" not in done.stdout.splitlines()[0]  # nothing was timed: no timing run described
    done = bench("--seconds", "0.1", "--repeats", "1", "--channels", "8")
    assert done.returncode == 0, done.stderr
    assert "0.1 s of white noise at 16000 Hz, best of 1" in done.stdout.splitlines()[0]
    for text in ("x real time", "ns/ch-sample", "basilar front end (int16 -> int8 frames)", "speed-up of ours",
                 "16 multiply-accumulates per channel-sample", "GMAC/s"):
        assert text in done.stdout


def test_an_accuracy_report_alone_claims_no_timing():
    """--no-speed ran no timing: no audio length, repeats or timing level of one in the JSON either."""
    done = bench("--channels", "8", "--no-speed", "--accuracy", "--accuracy-seconds", "0.05", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [row["channels"] for row in report["accuracy"]] == [8] and "results" not in report
    assert not {"audio_seconds", "repeats", "timing_signal_dbfs"} & set(report)


@pytest.mark.parametrize("args, message", [(["--channels", "4"], "give channel counts from 8 to 128"),
                                           (["--channels", "x"], "give channel counts"),
                                           (["--cpu", "100000"], "is not available to this process"),
                                           (["--channels", ","], "names no channel count"),
                                           (["--seconds", "nan"], "'nan' is not a finite number"),
                                           (["--accuracy-seconds", "1e9"], "is not in the range 0.05<=x<=600"),
                                           (["--repeats", "1000000000"], "is not in the range 1<=x<=1000"),  # hung
                                           (["--no-speed"], "--no-speed leaves nothing to measure")])
def test_bad_options_are_clear_errors(args, message):
    if args[0] == "--cpu" and not hasattr(os, "sched_setaffinity"):
        pytest.skip("this OS cannot pin a process to a CPU")
    # In-process is safe here: both are refused before the benchmark pins the process to a CPU.
    result = CliRunner().invoke(main, ["bench", "frontend", *args])
    assert result.exit_code == 2 and message in result.output and isinstance(result.exception, SystemExit)
