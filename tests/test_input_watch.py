"""What a run tells of its input's capture (edge/input_watch.py): digital silence on a live input, and clipping."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from edge.input_watch import (CLIP_TELL_EVERY_S, CLIP_WARN_SHARE, CLIP_WINDOW_S, SILENCE_TELL_EVERY_S, SILENCE_WARN_S,
                               InputWatch, Notice)
from tests.conftest import REPO

RATE = 8000
CHUNK = RATE // 10  # 100 ms, as the sources give them


def source(live: bool, name: str = "mic"):
    return types.SimpleNamespace(live=live, name=name)


def feed(watch: InputWatch, samples: np.ndarray) -> list[Notice]:
    return [m for i in range(0, len(samples), CHUNK) for m in watch.check(samples[i:i + CHUNK])]


def tone(seconds: float, peak: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(peak * np.sin(2 * np.pi * 437 * t)).astype(np.int16)


def zeros(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.int16)


def test_a_live_input_of_zeros_is_told_once_when_it_reaches_the_limit_and_again_when_sound_returns():
    watch = InputWatch(source(True), RATE)
    assert feed(watch, zeros(SILENCE_WARN_S - 0.1)) == []
    told = feed(watch, zeros(0.1))
    assert len(told) == 1 and told[0].warning
    assert told[0].text.startswith(f"mic has given only digital silence (every sample 0) for {SILENCE_WARN_S:g} s")
    assert feed(watch, zeros(60)) == []  # once a stretch
    assert feed(watch, tone(0.1)) == [Notice("mic gives sound again, after 70 s of digital silence", False)]
    assert feed(watch, tone(1)) == []
    # A short stretch of zeros between sounds is no stretch to tell of, and the count starts again after sound (a
    # new watch: on this one a second stretch within 10 min of audio goes untold, as the test below shows)
    watch = InputWatch(source(True), RATE)
    assert feed(watch, np.concatenate([zeros(SILENCE_WARN_S - 1), tone(0.1), zeros(SILENCE_WARN_S - 1)])) == []
    assert len(feed(watch, zeros(1))) == 1


def test_one_sample_that_is_not_zero_is_sound_and_a_file_of_zeros_is_the_recordings_own_silence():
    watch = InputWatch(source(True), RATE)
    almost = zeros(2 * SILENCE_WARN_S)
    almost[::RATE] = 1  # one LSB a second: a live input's faintest hiss
    assert feed(watch, almost) == []
    assert feed(InputWatch(source(False, "quiet.wav"), RATE), zeros(3 * SILENCE_WARN_S)) == []


def gated(cycles: int) -> np.ndarray:
    """A microphone with a noise gate in a quiet room: 11 s of exact zeros, then a second of faint noise, over and
    over."""
    noise = np.random.default_rng(0).normal(0, 30, RATE).astype(np.int16)
    return np.tile(np.concatenate([zeros(SILENCE_WARN_S + 1), noise]), cycles)


SILENCE_TOLD_AGAIN = ("(said at most once in 10 min of audio: 49 more such stretches went unreported since it was "
                      "last said)")


def test_stretches_of_silence_that_come_back_every_few_seconds_are_told_at_most_once_in_ten_minutes():
    watch = InputWatch(source(True), RATE)
    first = feed(watch, gated(1))
    assert [n.warning for n in first] == [True, False] and first[0].text.endswith("in a quiet room too")
    assert first[1] == Notice("mic gives sound again, after 11 s of digital silence", False)
    cycles_untold = round(SILENCE_TELL_EVERY_S / (SILENCE_WARN_S + 2)) - 1  # the 12-s cycle: 49 in 10 min
    assert feed(watch, gated(cycles_untold)) == []
    again = feed(watch, gated(1))
    assert again == [Notice(first[0].text + " " + SILENCE_TOLD_AGAIN, True), first[1]]
    # A stretch after 10 min of sound is told as the first was: none went unreported in between
    feed(watch, tone(SILENCE_TELL_EVERY_S))
    assert feed(watch, gated(1)) == first


def test_a_noise_gated_microphone_piped_to_basilar_run_is_told_of_twice_in_ten_minutes_not_fifty_times():
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "-", "--rate", str(RATE)], cwd=REPO,
                         input=gated(51).tobytes(), capture_output=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": path})
    stderr = run.stderr.decode()
    assert run.returncode == 0, stderr
    warnings = [line for line in stderr.splitlines()
                if line.startswith("basilar: warning: standard input has given only digital silence")]
    assert len(warnings) == 2 and SILENCE_TOLD_AGAIN not in warnings[0] and warnings[1].endswith(SILENCE_TOLD_AGAIN)
    assert stderr.count("basilar: standard input gives sound again, after 11 s of digital silence") == 2, stderr


LIVE_FIX = ("lower the capture gain (`alsamixer`, F4: capture controls) or move the microphone further from what it "
            "hears")


@pytest.mark.parametrize("live, fix", [(True, LIVE_FIX), (False, "record it again with less gain")])
def test_clipping_over_a_share_of_a_window_is_told_at_most_once_in_ten_minutes(live, fix):
    window = round(CLIP_WINDOW_S * RATE)
    clipped = tone(CLIP_WINDOW_S)
    clipped[:window // 100] = 32767  # 1.0% of the window at full scale, half of it at the negative end
    clipped[window // 200:window // 100] = -32768
    just_under = clipped.copy()
    just_under[0] = 0  # one sample short of 1%
    watch = InputWatch(source(live, "in"), RATE)
    assert feed(watch, just_under) == []
    told = feed(watch, clipped)
    assert told == [Notice(f"in reached full scale in 1.0% of its samples over 10 s: it clips, which flattens the "
                           f"words and costs detections; {fix} (said at most once in 10 min of audio)", True)]
    windows_before_again = round(CLIP_TELL_EVERY_S / CLIP_WINDOW_S)
    assert all(feed(watch, clipped) == [] for _ in range(windows_before_again - 1))
    assert len(feed(watch, clipped)) == 1


def test_a_wave_that_only_touches_full_scale_at_its_peaks_is_no_clipping():
    watch = InputWatch(source(True), RATE)
    touching = tone(3 * CLIP_WINDOW_S, peak=32767)
    assert 0 < np.count_nonzero(touching == 32767) < CLIP_WARN_SHARE * len(touching) / 2
    assert feed(watch, touching) == []


def test_the_part_window_at_the_end_of_the_input_is_judged_by_the_same_rule():
    """An input shorter than a window, or the part after its last whole window, would otherwise never be judged."""
    short = tone(3)
    short[:len(short) // 50] = 32767  # 2% at full scale
    watch = InputWatch(source(False, "short.wav"), RATE)
    assert feed(watch, short) == []
    told = watch.finish()
    assert len(told) == 1 and told[0].warning
    assert told[0].text.startswith("short.wav reached full scale in 2.0% of its samples over 3 s: it clips")
    assert watch.finish() == []  # judged once
    tail = InputWatch(source(False, "tail.wav"), RATE)
    assert feed(tail, np.concatenate([tone(CLIP_WINDOW_S), short])) == []
    assert len(tail.finish()) == 1
    quiet = InputWatch(source(False, "quiet.wav"), RATE)
    almost = tone(3)
    almost[:len(almost) // 100 - 1] = 32767  # one sample short of 1%
    assert feed(quiet, almost) == [] and quiet.finish() == []
    told_lately = InputWatch(source(False, "loud.wav"), RATE)
    feed(told_lately, np.tile(short, 4))  # a whole window that clips is told ...
    assert told_lately.finish() == []  # ... and its tail not again within 10 min
