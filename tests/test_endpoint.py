"""End-pointing: the input level per hop, the pause test, and the detector reporting only words heard on their own."""
import subprocess

import numpy as np
import pytest
import soundfile
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.detector import Detector, DetectorSettings
from edge import endpoint
from edge.endpoint import (FLOOR_MARGIN_DB, SILENCE_DBFS, SURE_PAUSE_SHARE, SURE_SCORE, TAIL_DROP_DB, HopLevels,
                           pause_start, quiet_level, smoothed, sound_start)
from edge.frontend import Frontend, FrontendConfig
from edge.runloop import Pipeline
from tests.conftest import REPO, in_a_room, require_program

LABELS = ["a", "b"]
CLIPS = REPO / "tests" / "data" / "fsdd"


def reference_levels(samples: np.ndarray, hop: int) -> np.ndarray:
    """Each whole hop's mean square, in dB of full scale, computed directly."""
    hops = samples[: len(samples) // hop * hop].astype(np.float64).reshape(-1, hop)
    with np.errstate(divide="ignore"):
        return np.maximum(10 * np.log10((hops**2).mean(axis=1) / 32768.0**2), SILENCE_DBFS)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 7999), max_size=10))
def test_hop_levels_match_the_direct_computation_and_the_front_ends_hops_in_any_chunking(seed, cuts):
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(8000) * rng.uniform(10, 20000)).clip(-32768, 32767).astype(np.int16)
    samples[1000:1500] = 0  # digital silence has a level too
    frontend = Frontend(FrontendConfig())
    hop = frontend.config.hop_samples
    meter = HopLevels(hop)
    levels = []
    for part in np.split(samples, sorted(set(cuts))):
        got = meter.process(part)
        assert len(got) == frontend.frames_for(len(part))  # one level per frame, in step with the front end
        frontend.process(part)
        levels.append(got)
    expected = reference_levels(samples, hop)
    np.testing.assert_allclose(np.concatenate(levels), expected, rtol=0, atol=1e-9)
    assert np.concatenate(levels)[1000 // hop + 1] == SILENCE_DBFS


def test_full_scale_square_wave_is_0_dbfs_and_halving_is_minus_6():
    square = np.tile(np.array([32767, -32768], dtype=np.int16), 80)
    assert HopLevels(160).process(square)[0] == pytest.approx(0.0, abs=1e-3)
    assert HopLevels(160).process((square // 2).astype(np.int16))[0] == pytest.approx(-6.02, abs=0.01)


def ended_in_quiet(word, event, background, quiet_hops, drop_db) -> bool:
    return pause_start(event, quiet_level(word, background, drop_db), quiet_hops) is not None


def test_a_pause_is_found_below_the_word_or_near_the_background():
    word, pause = np.full(40, -24.0), np.full(30, -58.0)
    levels = np.concatenate([word, pause])
    event = levels[30:]  # the model fires near the word's end
    assert pause_start(event, quiet_level(levels, levels, 25), quiet_hops=10) == 10  # where the word ended
    assert not ended_in_quiet(levels, event, levels, quiet_hops=31, drop_db=25)  # the pause is too short
    # Running speech: the level never stays down for 10 hops in a row.
    speech = np.tile([-22.0, -30.0, -45.0, -28.0, -26.0, -50.0, -50.0, -24.0], 10)
    assert not ended_in_quiet(speech, speech[30:], speech, quiet_hops=10, drop_db=25)
    # Steady noise 12 dB under the word: never 25 dB down, but at the background.
    noisy = np.concatenate([word, np.full(30, -36.0)])
    assert ended_in_quiet(noisy, noisy[30:], noisy, quiet_hops=10, drop_db=25)
    # The same sound where the background was a quiet room: -36 dBFS is someone still talking.
    room = np.full(300, -70.0)
    assert -70.0 + FLOOR_MARGIN_DB < -36.0 - 25
    assert not ended_in_quiet(noisy, noisy[30:], room, quiet_hops=10, drop_db=25)


def test_smoothed_levels_are_the_mean_energy_of_each_hop_and_the_two_before_it():
    levels = np.array([-20.0, -50.0, -80.0, -80.0, SILENCE_DBFS])
    energy = 10 ** (levels / 10)
    expected = 10 * np.log10([energy[0], energy[:2].mean(), energy[:3].mean(), energy[1:4].mean(), energy[2:5].mean()])
    np.testing.assert_allclose(smoothed(levels), expected, rtol=0, atol=1e-9)
    assert smoothed(np.zeros(0)).shape == (0,)


def test_a_rooms_decaying_tail_counts_as_a_pause_and_a_new_sound_in_it_does_not():
    word = np.full(40, -20.0)
    # A long tail: 20 dB under the word, decaying 5 dB a second, a noise-like +-1.5 dB hop to hop; never 25 dB down.
    tail = -40.0 - 0.05 * np.arange(60) + np.tile([1.5, -1.5, 0.5, -0.5], 15)
    levels = np.concatenate([np.full(20, -60.0), word, tail])
    quiet = quiet_level(levels, np.full(300, -60.0), 25)
    assert quiet == -45.0 and tail.min() > quiet
    event, tail_levels, tail_top = levels[50:], smoothed(levels)[50:], word.max() - TAIL_DROP_DB
    assert pause_start(event, quiet, 15) is None  # no hop is quiet
    # The word's last hops are smoothed into the tail's first two, so the pause is found from the third on.
    assert pause_start(event, quiet, 15, tail_levels, tail_top) == 12
    # Speech as far under the word rises and falls by several dB from hop to hop: no tail.
    speech = np.concatenate([np.full(20, -60.0), word, -40.0 + np.tile([-4.0, 6.0, 0.0, 4.0, -3.0, 5.0], 10)])
    assert pause_start(speech[50:], quiet, 15, smoothed(speech)[50:], tail_top) is None


def test_a_word_starts_where_its_sound_rose_out_of_the_quiet_before_it():
    quiet = -50.0
    before = np.concatenate([np.full(20, -60.0), np.full(5, -30.0), np.full(10, -58.0), np.full(30, -25.0)])
    assert sound_start(before, quiet) == 35  # the last loud stretch, not the click before the pause
    # The model may fire once the pause has begun: the quiet hops just before the onset belong to the pause.
    assert sound_start(np.concatenate([before, np.full(8, -59.0)]), quiet) == 35
    assert sound_start(np.full(30, -25.0), quiet) == 0  # loud all along: as far back as the levels go
    assert sound_start(np.full(30, -60.0), quiet) == 30  # nothing loud: the word starts at the onset
    assert sound_start(np.zeros(0), quiet) == 0
    # A dip shorter than the gap between words (a stop's closure, a vowel's fading end) is inside the word.
    dip = np.concatenate([np.full(20, -60.0), np.full(10, -25.0), np.full(5, -55.0), np.full(20, -25.0)])
    assert (sound_start(dip, quiet), sound_start(dip, quiet, gap_hops=5), sound_start(dip, quiet, gap_hops=6)) == \
        (35, 35, 20)


def make(**kw) -> Detector:
    base = dict(hop_ms=10.0, smoothing_ms=0, threshold=0.6, release_ratio=0.5, refractory_ms=0, min_duration_ms=0,
                end_quiet_ms=100, end_quiet_db=25)
    return Detector(DetectorSettings(**{**base, **kw}), LABELS)


def word_then(after: np.ndarray):
    """Posteriors with one word ('a', hops 100-150) and input levels: quiet, the word, then `after`."""
    posteriors = np.full((300, 2), 0.02, dtype=np.float32)
    posteriors[100:150, 0] = 0.9
    levels = np.concatenate([np.full(60, -58.0), np.full(60, -24.0), after])
    return posteriors, levels[:300]


def test_the_detector_reports_a_word_followed_by_a_pause_and_not_one_inside_running_speech():
    pause = np.full(180, -58.0)
    speech = np.tile([-22.0, -30.0, -26.0, -45.0], 45)
    for after, expected in ((pause, ["a"]), (speech, [])):
        posteriors, levels = word_then(after)
        detector = make()
        events = detector.update(posteriors, levels) + detector.flush()
        assert [e.label for e in events] == expected
    posteriors, levels = word_then(speech)
    off = make(end_quiet_ms=0)
    assert [e.label for e in off.update(posteriors, levels) + off.flush()] == ["a"]  # end-pointing off


def test_a_word_the_model_is_sure_of_needs_a_shorter_pause():
    """end_quiet_ms=100 is 10 hops; a word scored at SURE_SCORE or more needs SURE_PAUSE_SHARE of them (7). The
    pause here is 8 hops."""
    short_pause = np.concatenate([np.full(8, -58.0), np.tile([-22.0, -30.0, -26.0, -45.0], 43)])
    for score, expected in ((0.995, ["a"]), (0.98, [])):
        posteriors, levels = word_then(short_pause)
        posteriors[100:150, 0] = score
        detector = make()
        assert [e.label for e in detector.update(posteriors, levels) + detector.flush()] == expected
    assert 0.98 < SURE_SCORE <= 0.995 and round(10 * SURE_PAUSE_SHARE) <= 8  # what the two cases rely on


def test_a_detection_carries_the_words_own_times_and_when_it_was_reported():
    posteriors, levels = word_then(np.full(180, -58.0))  # the word's sound: hops 60-120; the model: hops 100-150
    detector = make()
    [event] = detector.update(posteriors, levels) + detector.flush()
    # Reported once hop 150 (the first under the release) was processed: after the audio up to its end, 1.51 s.
    assert (event.start_s, event.end_s, event.detected_s) == pytest.approx((0.60, 1.20, 1.51))
    off = make(end_quiet_ms=0)  # no levels: the times are those of the model's certainty
    [event] = off.update(posteriors) + off.flush()
    assert (event.start_s, event.end_s, event.detected_s) == pytest.approx((1.00, 1.50, 1.51))
    open_at_end = make(end_quiet_ms=0)  # flushed at the end of the stream: reported when the audio ran out
    [event] = open_at_end.update(posteriors[:140]) + open_at_end.flush()
    assert event.detected_s == pytest.approx(1.40)


def two_words(pause_hops: int, rise_db: float, b_score: float = 0.9, sound_hops: int = 40):
    """Posteriors and levels of word 'a' (sound hops 60-120; the model sure of it from hop 100, and still for 40
    hops after its sound ended, as the model's certainty lingers), a pause of `pause_hops`, then a sound of
    `sound_hops` `rise_db` over the pause's quiet level (25 dB under the word), which the model names 'b' at
    `b_score` near its end, after 30 hops of 0.5."""
    posteriors = np.full((400, 2), 0.02, dtype=np.float32)
    posteriors[100:160, 0] = 0.9
    second = 120 + pause_hops
    posteriors[second + 30:second + 60, 1] = b_score
    posteriors[second:second + 30, 1] = 0.5  # the sum stays over the release all the way: one event, before
    levels = np.full(400, -58.0)
    levels[60:120] = -24.0
    levels[second:second + sound_hops] = -24.0 - 25.0 + rise_db
    return posteriors, levels


def test_a_pause_inside_an_event_ends_the_word_and_the_next_one_is_heard():
    """Digits said one after another with short pauses ("4 5 7"): the model is still sure of one word while the
    next begins, so both fell into one event, named by one of them, or none when no pause followed the second."""
    for pause_hops in (15, 30):
        posteriors, levels = two_words(pause_hops, rise_db=25.0)
        detector = make()
        events = detector.update(posteriors, levels) + detector.flush()
        assert [e.label for e in events] == ["a", "b"]
        first, second = events
        assert first.end_s == pytest.approx(1.20) and second.start_s == pytest.approx(1.20 + pause_hops / 100)
        # The second event opened at once, while 'a' still lingered (its peak there, as high as b's, would name it
        # 'a' again): no refractory time after a word that a pause ended.
        with_refractory = make(refractory_ms=400)
        assert with_refractory.update(posteriors, levels) + with_refractory.flush() == events
    posteriors, levels = two_words(5, rise_db=25.0)  # 50 ms of quiet is no pause: one event, as before
    detector = make()
    assert [e.label for e in detector.update(posteriors, levels) + detector.flush()] == ["a"]


def test_a_stops_release_after_its_closure_does_not_end_the_word():
    """The "t" of "eight" comes after a closure as long as a pause, and rises only a little over the quiet. The
    model here leans to 'a' before it and settles on 'b' after it: one word, named 'b' by the larger sum; were the
    release taken for the next word, the one word would be reported twice."""
    posteriors = np.full((300, 2), 0.02, dtype=np.float32)
    posteriors[100:130, 0] = 0.7
    posteriors[130:165, 1] = 0.95
    levels = np.full(300, -58.0)
    levels[60:120] = -24.0  # the word; then the closure (15 hops), then the release 5 dB over the quiet level
    for rise_db, expected in ((5.0, ["b"]), (25.0, ["a", "b"])):  # (25 dB: a new word after a pause)
        levels[135:140] = -24.0 - 25.0 + rise_db
        detector = make(trigger="word")  # named by the sum, as the shipped bundle names its words
        assert [e.label for e in detector.update(posteriors, levels) + detector.flush()] == expected
    assert 5.0 < endpoint.NEW_WORD_RISE_DB < 25.0  # what the two cases rely on


def test_after_a_word_a_pause_ended_its_lingering_score_alone_reports_nothing():
    """A short loud sound after the pause ends the word; the event that the word's own lingering score then holds
    open, where no other word rises, is not reported (it would be named by the rest: 'b' at 0.02)."""
    posteriors, levels = two_words(15, rise_db=25.0, b_score=0.02, sound_hops=5)
    posteriors[135:165, 1] = 0.02
    detector = make()
    assert [e.label for e in detector.update(posteriors, levels) + detector.flush()] == ["a"]


def test_the_shipped_bundle_times_the_demo_words():
    """On the real demo recording, each detection's start and end are within 0.15 s of where the word really is,
    and it is reported about half a second after the word's end."""
    from firmware_tools.stream_eval import detect_file, read_truth

    detections, _ = detect_file(Pipeline.from_bundle("default"), REPO / "edge" / "demo" / "demo.wav")
    truth = read_truth(REPO / "edge" / "demo" / "demo_truth.csv")
    assert [d.label for d in detections] == [w.label for w in truth]
    for detection, word in zip(detections, truth):
        assert abs(detection.start_s - word.start_s) <= 0.15 and abs(detection.end_s - word.end_s) <= 0.15
        assert 0.3 <= detection.detected_s - word.end_s <= 0.8


def test_the_end_of_the_stream_counts_as_a_pause():
    posteriors, levels = word_then(np.tile([-22.0, -30.0], 90))
    detector = make()
    assert detector.update(posteriors[:140], levels[:140]) == []
    assert [e.label for e in detector.flush()] == ["a"]


def test_end_pointing_without_levels_is_a_clear_error():
    with pytest.raises(ValueError, match="end_quiet_ms=100 needs the input's level at each of the 5 hops.*got none"):
        make().update(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="got 4"):
        make().update(np.zeros((5, 2)), np.zeros(4))
    assert make(end_quiet_ms=0).update(np.zeros((5, 2))) == []


def test_bundles_without_end_pointing_keep_it_off():
    assert DetectorSettings.from_manifest({"threshold": 0.9}, hop_ms=10.0).end_quiet_ms == 0


@pytest.mark.parametrize("end_quiet_ms", [150, 0])
def test_the_pipeline_meters_the_input_only_when_end_pointing_uses_it(monkeypatch, end_quiet_ms):
    pipeline = Pipeline.from_bundle("default", detector_overrides={"end_quiet_ms": end_quiet_ms})
    assert pipeline.detector.uses_levels == (end_quiet_ms > 0)
    metered, meter = [], pipeline.levels.process
    monkeypatch.setattr(pipeline.levels, "process", lambda samples: metered.append(len(samples)) or meter(samples))
    pipeline.process(np.zeros(800, np.int16))
    assert metered == ([800] if end_quiet_ms else [])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 899), max_size=12))
def test_chunking_does_not_change_end_pointed_detections(seed, cuts):
    rng = np.random.default_rng(seed)
    posteriors = rng.uniform(0, 0.3, size=(900, 2)).astype(np.float32)
    levels = rng.uniform(-60, -20, size=900)
    for start in rng.integers(0, 850, size=8):
        posteriors[start:start + rng.integers(5, 40), rng.integers(0, 2)] = rng.uniform(0.6, 1.0)
        levels[start + 40:start + 40 + rng.integers(0, 30)] = -70.0  # sometimes a pause after it
    config = dict(smoothing_ms=50, refractory_ms=100, min_duration_ms=20, max_duration_ms=500, trigger="word")
    whole = make(**config)
    expected = whole.update(posteriors, levels) + whole.flush()
    detector, chunked = make(**config), []
    for part, part_levels in zip(np.split(posteriors, sorted(set(cuts))), np.split(levels, sorted(set(cuts)))):
        chunked += detector.update(part, part_levels)
    assert chunked + detector.flush() == expected


# Real audio through the shipped bundle: FSDD digits (8 kHz, as the bundle runs) and espeak-ng's speech.

def at_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    return audio * (10 ** (dbfs / 20) / np.sqrt(np.mean(audio**2)))


def hiss(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * 8000)) * 10 ** (dbfs / 20)


def detect(audio: np.ndarray, **overrides) -> list[tuple[str, float]]:
    pipeline = Pipeline.from_bundle("default", detector_overrides=overrides)
    assert pipeline.sample_rate == 8000
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    return [(e.label, e.start_s) for e in pipeline.process(pcm) + pipeline.flush()]


def digit(name: str) -> np.ndarray:
    audio, rate = soundfile.read(CLIPS / f"{name}.wav", dtype="float64")
    assert rate == 8000
    return at_level(audio, -24)


def without_trailing_quiet(word: np.ndarray) -> np.ndarray:
    """The clip cut after its last sample within 20 dB of its peak: FSDD clips end with up to 0.1 s of quiet, a pause
    that a word the model is sure of may end on (edge/endpoint.py, SURE_SCORE)."""
    return word[:np.flatnonzero(np.abs(word) > 0.1 * np.abs(word).max())[-1] + 1]


@pytest.fixture(scope="module")
def running_speech(tmp_path_factory) -> np.ndarray:
    require_program("espeak-ng")
    out = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(out), "where did you put the keys this morning"],
                   check=True, capture_output=True)
    audio, rate = soundfile.read(out, dtype="float64")
    return at_level(soxr.resample(audio, rate, 8000), -24)


@pytest.mark.parametrize("name", ["3_jackson_0", "4_nicolas_0", "8_theo_0"])
def test_a_digit_said_on_its_own_is_reported_and_one_run_into_speech_is_not(name, running_speech):
    word = digit(name)
    alone = np.concatenate([hiss(2, -58), word, hiss(1, -58, 1)])
    run_on = np.concatenate([hiss(2, -58), without_trailing_quiet(word), running_speech, hiss(1, -58, 1)])
    label = name[0]
    assert [d[0] for d in detect(alone)] == [label]  # the shipped bundle end-points by default
    assert label not in [d[0] for d in detect(run_on)]
    assert label in [d[0] for d in detect(run_on, end_quiet_ms=0)]  # what end-pointing removed


@pytest.mark.parametrize("speaker, digits", [("jackson", "2457"), ("nicolas", "2340"), ("theo", "6078"),
                                              ("yweweler", "0573")])
def test_digits_said_one_after_another_with_short_pauses_are_each_reported(speaker, digits):
    """A PIN read out: 0.25 s between the words. The model is still sure of a digit when the next begins; the pause
    between them ends the one, and the next is heard (all four; before, 1 to 3 of them)."""
    parts, starts = [hiss(1.5, -58)], []
    for k, name in enumerate(digits):
        starts.append(sum(map(len, parts)) / 8000)
        parts += [digit(f"{name}_{speaker}_0"), hiss(0.25, -58, k + 1)]
    detections = detect(np.concatenate(parts + [hiss(1, -58, 9)]))
    assert [d[0] for d in detections] == list(digits)
    # Each where its word begins (FSDD's clips begin with the word; a soft "th" may fall under the quiet level): a
    # dip inside a word is not the gap before it.
    assert np.abs(np.array([d[1] for d in detections]) - starts).max() <= 0.15


@pytest.mark.parametrize("name", ["3_jackson_0", "4_nicolas_0", "8_theo_0"])
def test_in_steady_noise_the_pause_is_the_noise_level(name):
    quiet = np.concatenate([hiss(2, -58), digit(name), hiss(1, -58, 1)])
    noisy = quiet + hiss(len(quiet) / 8000, -36, 2)  # 12 dB under the word: never 60 dB down
    assert [d[0] for d in detect(noisy, end_quiet_db=60)] == [name[0]]


@pytest.mark.parametrize("name", ["7_jackson_0", "8_theo_0", "1_yweweler_0"])
def test_in_a_ringing_room_the_tail_ends_the_word_and_running_speech_still_does_not(name, running_speech,
                                                                                    monkeypatch):
    label = name[0]
    alone = in_a_room(np.concatenate([hiss(2, -58), digit(name), hiss(1.5, -58, 1)]), 8000, rt60_s=2.0)
    run_on = in_a_room(np.concatenate([hiss(2, -58), digit(name), running_speech, hiss(1.5, -58, 1)]), 8000,
                       rt60_s=2.0)
    assert [d[0] for d in detect(alone)] == [label]
    assert label not in [d[0] for d in detect(run_on)]
    monkeypatch.setattr(endpoint, "TAIL_DROP_DB", np.inf)  # a pause only where the room has gone quiet:
    assert detect(alone) == []  # it never does within the event
