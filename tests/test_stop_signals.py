"""A stop signal (SIGTERM from systemd or `timeout`, Ctrl-C) that comes while `basilar run` or `basilar telemetry` is
still starting ends it as cleanly as one a moment later: the summary, exit code 0, no traceback. Other commands keep
Python's defaults.

When to signal: a signal sent before Python runs any of basilar (the interpreter's own start, `site`) kills the
process whatever basilar does, so a test that signals at a fixed delay after Popen would flake on a loaded machine.
Each child runs with `-X importtime`, which writes a line to standard error as each module finishes loading, and is
signalled once a line shows that click (which `basilar` loads right after it holds the stop signals) or a later module
has loaded: the earliest moment basilar can answer for, and one the commands used to die at, since they routed their
signals only once their imports (numpy, the TFLite runtime) were done.
"""
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

DEMO = REPO / "edge" / "demo" / "demo.wav"
CLICK_LOADING = rb"\| +click\."  # click's first modules: loaded after `basilar` began
NUMPY_LOADED = rb"\| +numpy\n"  # the command's own imports under way

RUN_SUMMARY = r"stopped by {}: 0\.0 s of audio"
TELEMETRY_SUMMARY = r"telemetry: 0 record\(s\) written; "


def repo_env() -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def as_from_a_terminal():
    """SIGINT as a command typed at a terminal gets it: a test run in the background (nohup, `&` in a script) hands
    its children SIGINT ignored, and Python then leaves Ctrl-C ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_when_loaded(args, marker: bytes, sig, delay=0.0):
    """Start `basilar ARGS`, send it `sig` `delay` seconds after its import log matches `marker`, and return its exit
    code, stdout and stderr (text, the import log left out)."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "firmware_tools.cli", *map(str, args)],
                               cwd=REPO, env=repo_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=as_from_a_terminal)
    try:
        err, deadline = b"", time.monotonic() + 60
        while not re.search(marker, err):
            assert time.monotonic() < deadline and process.poll() is None, \
                f"no {marker!r} in the import log: {err[-2000:]!r}"
            if select.select([process.stderr], [], [], 1)[0]:
                err += os.read(process.stderr.fileno(), 65536)
        time.sleep(delay)
        process.send_signal(sig)
        out, rest = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    stderr = "".join(line for line in (err + rest).decode().splitlines(keepends=True)
                     if not line.startswith("import time:"))
    return process.returncode, out.decode(), stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("marker, delay", [(CLICK_LOADING, 0.0), (CLICK_LOADING, 0.05), (NUMPY_LOADED, 0.0)],
                         ids=["at-once", "after-50ms", "while-numpy-loads"])
def test_a_stop_while_basilar_run_starts_ends_it_cleanly(sig, marker, delay):
    returncode, out, err = signal_when_loaded(["run", DEMO, "--realtime"], marker, sig, delay)
    assert returncode == 0, (returncode, err)
    assert re.search(RUN_SUMMARY.format(sig.name), err), err
    assert "Traceback" not in err + out and "Aborted" not in err and out == ""


def test_a_stop_while_basilar_run_reading_a_pipe_starts_ends_it_cleanly():
    returncode, out, err = signal_when_loaded(["run", "-"], CLICK_LOADING, signal.SIGTERM)
    assert returncode == 0 and re.search(RUN_SUMMARY.format("SIGTERM"), err), (returncode, err)
    assert "Traceback" not in err + out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("delay", [0.0, 0.03], ids=["at-once", "after-30ms"])
def test_a_stop_while_basilar_telemetry_starts_ends_it_cleanly(tmp_path, sig, delay):
    # A port that does not exist yet, waited for: the command would run until stopped.
    returncode, out, err = signal_when_loaded(["telemetry", tmp_path / "ttyNOPE", "--wait"], CLICK_LOADING, sig,
                                              delay)
    assert returncode == 0, (returncode, err)
    assert re.search(TELEMETRY_SUMMARY, err), err
    assert "Traceback" not in err + out and "Aborted" not in err


def test_a_stop_while_a_telemetry_replay_starts_ends_it_cleanly(tmp_path):
    capture = tmp_path / "capture"
    os.mkfifo(capture)  # no writer: the replay would wait until stopped
    returncode, out, err = signal_when_loaded(["telemetry", "--replay", capture], CLICK_LOADING, signal.SIGTERM)
    assert returncode == 0 and re.search(TELEMETRY_SUMMARY, err), (returncode, err)
    assert "Traceback" not in err + out


def test_a_stop_while_telemetry_waits_to_open_its_capture_fifo_ends_it_cleanly(tmp_path):
    """A capture FIFO with no reader: its open waits. The signals were routed only after it, so a SIGTERM held from
    the start was never acted on and the command hung until killed."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    returncode, out, err = signal_when_loaded(["telemetry", tmp_path / "ttyNOPE", "--wait", "--capture", fifo],
                                              CLICK_LOADING, signal.SIGTERM, delay=1.5)
    assert returncode == 0 and re.search(TELEMETRY_SUMMARY, err), (returncode, err)
    assert "Traceback" not in err + out


def test_other_commands_keep_the_default_stop_signals(tmp_path):
    """Only the two long-running commands hold a stop: SIGTERM still kills `basilar train`, and Ctrl-C still aborts
    it the click way, whenever it comes (here while TensorFlow loads, or while the training works: a data folder of
    real clips keeps it busy; an empty one would fail at once, before a late signal came)."""
    import shutil

    from tests.bundles import FSDD_CLIPS

    data = tmp_path / "data"
    for digit, word in enumerate(("zero", "one")):
        (data / word).mkdir(parents=True)
        for speaker in ("jackson", "theo"):
            shutil.copy(FSDD_CLIPS / f"{digit}_{speaker}_0.wav", data / word)
    train = ["train", data, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache"]
    returncode, _, _ = signal_when_loaded(train, CLICK_LOADING, signal.SIGTERM)
    assert returncode == -signal.SIGTERM
    returncode, _, err = signal_when_loaded(train, rb"\| +firmware_tools\.convert_cmd\n",
                                            signal.SIGINT)  # train's command loading, TensorFlow next
    assert returncode == 1 and "Aborted!" in err, (returncode, err)
