"""The detector: smoothing, per-label thresholds, hysteresis, refractory time, minimum/maximum duration."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.detector import Detection, Detector, DetectorSettings, DetectorSettingsError

LABELS = ["a", "b", "c"]
HOP_MS = 10.0


def make(**kw) -> Detector:
    base = dict(hop_ms=HOP_MS, smoothing_ms=0, threshold=0.6, release_ratio=0.5, refractory_ms=0,
                min_duration_ms=0)
    base.update(kw)
    return Detector(DetectorSettings(**base), LABELS)


def scores(frames: int, *bumps: tuple[str, int, int, float]) -> np.ndarray:
    """Posteriors that are 0.02 everywhere except bumps (label, first frame, end frame, value)."""
    out = np.full((frames, len(LABELS)), 0.02, dtype=np.float32)
    for label, first, end, value in bumps:
        out[first:end, LABELS.index(label)] = value
    return out


def run(detector: Detector, posteriors: np.ndarray) -> list[Detection]:
    return detector.update(posteriors) + detector.flush()


def test_one_bump_gives_one_detection_with_its_label_times_and_peak():
    events = run(make(), scores(300, ("b", 100, 130, 0.9)))
    assert len(events) == 1
    event = events[0]
    assert event.label == "b"
    assert event.score == pytest.approx(0.9)
    assert event.start_s == pytest.approx(1.00)
    assert event.end_s == pytest.approx(1.30)
    assert event.timestamp is None


def test_nothing_below_threshold():
    assert run(make(), scores(300, ("a", 100, 200, 0.59))) == []


def test_smoothing_removes_a_one_hop_spike_but_keeps_a_word():
    spike = scores(300, ("a", 100, 101, 1.0))
    assert len(run(make(), spike)) == 1  # unsmoothed, a single hop is an event
    assert run(make(smoothing_ms=100), spike) == []  # averaged over 10 hops it is 0.1
    word = scores(300, ("a", 100, 140, 0.95))
    events = run(make(smoothing_ms=100), word)
    assert [e.label for e in events] == ["a"]
    # The moving average needs 0.6 / 0.95 of the window (7 hops) to reach the threshold.
    assert events[0].start_s == pytest.approx(1.06)
    assert events[0].score == pytest.approx(0.95)


def test_hysteresis_holds_an_event_through_a_shallow_dip_only():
    shallow = scores(300, ("a", 100, 120, 0.9), ("a", 120, 125, 0.35), ("a", 125, 145, 0.9))
    assert len(run(make(), shallow)) == 1  # 0.35 >= 0.6 * 0.5
    deep = scores(300, ("a", 100, 120, 0.9), ("a", 120, 125, 0.25), ("a", 125, 145, 0.9))
    events = run(make(), deep)
    assert [(e.start_s, e.end_s) for e in events] == [pytest.approx((1.0, 1.2)), pytest.approx((1.25, 1.45))]


def test_refractory_time_suppresses_a_second_onset_soon_after_an_event():
    two = scores(400, ("a", 100, 120, 0.9), ("b", 140, 160, 0.9))  # second starts 200 ms after the first ends
    assert [e.label for e in run(make(refractory_ms=500), two)] == ["a"]
    assert [e.label for e in run(make(refractory_ms=200), two)] == ["a", "b"]
    late = run(make(refractory_ms=210), two)  # b may open 10 ms into its bump
    assert [(e.label, e.start_s) for e in late] == [("a", pytest.approx(1.0)), ("b", pytest.approx(1.41))]
    assert [e.label for e in run(make(refractory_ms=400), two)] == ["a"]


def test_events_shorter_than_the_minimum_duration_are_dropped():
    assert run(make(min_duration_ms=30), scores(100, ("a", 10, 12, 0.9))) == []
    assert len(run(make(min_duration_ms=30), scores(100, ("a", 10, 13, 0.9)))) == 1


def test_a_dropped_short_event_starts_no_refractory_period():
    posteriors = scores(200, ("a", 10, 12, 0.9), ("b", 20, 40, 0.9))
    assert [e.label for e in run(make(min_duration_ms=30, refractory_ms=500), posteriors)] == ["b"]


def test_per_label_thresholds():
    posteriors = scores(300, ("a", 50, 80, 0.5), ("c", 150, 180, 0.5))
    detector = make(thresholds={"c": 0.4})
    assert [e.label for e in run(detector, posteriors)] == ["c"]


def test_the_label_furthest_above_its_own_threshold_wins_an_event():
    both = scores(200, ("a", 50, 80, 0.7), ("b", 50, 80, 0.8))
    assert [e.label for e in run(make(), both)] == ["b"]
    # b needs 0.9: at 0.8 it is below its own threshold, while a is 0.7 / 0.6 above its.
    events = run(make(thresholds={"b": 0.9}), both)
    assert [(e.label, round(e.score, 2)) for e in events] == [("a", 0.7)]


def test_word_trigger_finds_a_word_split_between_two_labels_and_names_it_by_mass():
    # a and b share the word: neither reaches 0.6 alone, together they do. b has more posterior over the event,
    # though a has the higher peak.
    split = scores(200, ("a", 50, 60, 0.55), ("a", 60, 90, 0.3), ("b", 50, 60, 0.1), ("b", 60, 90, 0.5))
    assert run(make(), split) == []
    events = run(make(trigger="word"), split)
    assert [(e.label, e.start_s, e.end_s) for e in events] == [("b", pytest.approx(0.5), pytest.approx(0.9))]
    assert events[0].score == pytest.approx(0.5)  # b's peak
    # Per-label thresholds weigh the mass: b needing 0.9 hands the word to a.
    assert [e.label for e in run(make(trigger="word", thresholds={"b": 0.9}), split)] == ["a"]


def test_min_score_drops_a_word_the_model_cannot_name_and_keeps_one_it_can():
    # Sure that a word is there (0.9 together), not which: three labels share it, the best peaking at 0.4.
    unsure = scores(200, ("a", 50, 90, 0.4), ("b", 50, 90, 0.3), ("c", 50, 90, 0.2))
    sure = scores(200, ("a", 50, 90, 0.75), ("b", 50, 90, 0.2))
    assert [e.label for e in run(make(trigger="word"), unsure)] == ["a"]  # off by default
    assert run(make(trigger="word", min_score=0.5), unsure) == []
    assert [(e.label, e.score) for e in run(make(trigger="word", min_score=0.5), sure)] == [("a", 0.75)]
    assert [e.label for e in run(make(trigger="word", min_score=0.75), sure)] == ["a"]  # at the floor counts


def test_an_event_dropped_by_min_score_still_starts_the_refractory_period():
    # The same events as without the floor, less the dropped one: a word just after it is not opened anew.
    word = ("c", 100, 115, 0.9)
    posteriors = scores(300, ("a", 50, 90, 0.4), ("b", 50, 90, 0.5), word)
    config = dict(trigger="word", refractory_ms=300, min_score=0.6)
    assert [e.label for e in run(make(**config), scores(300, word))] == ["c"]  # alone, it is reported
    assert [e.label for e in run(make(**{**config, "min_score": 0}), posteriors)] == ["b"]
    assert run(make(**config), posteriors) == []


def test_word_trigger_stays_quiet_when_all_labels_together_stay_below_threshold():
    low = scores(200, ("a", 50, 90, 0.25), ("b", 50, 90, 0.25), ("c", 50, 90, 0.05))  # 0.55 together
    assert run(make(trigger="word"), low) == []


def test_a_sustained_sound_is_reported_at_the_maximum_duration_and_again_after_refractory():
    posteriors = scores(800, ("a", 0, 800, 0.9))
    events = run(make(max_duration_ms=3000, refractory_ms=500), posteriors)
    assert [(e.start_s, e.end_s) for e in events] == [pytest.approx((0.0, 3.0)), pytest.approx((3.5, 6.5)),
                                                      pytest.approx((7.0, 8.0))]


def test_flush_reports_the_open_event_at_the_current_stream_time_once():
    detector = make()
    assert detector.update(scores(150, ("a", 100, 150, 0.9))) == []
    events = detector.flush()
    assert [(e.label, e.start_s, e.end_s) for e in events] == [("a", pytest.approx(1.0), pytest.approx(1.5))]
    assert detector.flush() == []


def test_reset_can_continue_the_stream_clock():
    detector = make()
    detector.update(scores(500))
    detector.reset(at_frame=detector.frames_seen)
    events = run(detector, scores(100, ("c", 10, 30, 0.9)))
    assert [(e.label, e.start_s) for e in events] == [("c", pytest.approx(5.1))]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 599), max_size=12),
       trigger=st.sampled_from(["label", "word"]))
def test_chunking_does_not_change_the_detections(seed, cuts, trigger):
    rng = np.random.default_rng(seed)
    # Noisy posteriors with a few bumps, so that events open and close at many places.
    posteriors = rng.uniform(0, 0.5, size=(600, len(LABELS))).astype(np.float32)
    for start in rng.integers(0, 560, size=6):
        posteriors[start:start + rng.integers(3, 40), rng.integers(0, len(LABELS))] = rng.uniform(0.6, 1.0)
    config = dict(smoothing_ms=50, refractory_ms=100, min_duration_ms=20, max_duration_ms=300, trigger=trigger,
                  min_score=0.7)
    whole = run(make(**config), posteriors)
    detector = make(**config)
    chunked = []
    for part in np.split(posteriors, sorted(set(cuts))):
        chunked += detector.update(part)
    chunked += detector.flush()
    assert chunked == whole


def test_settings_from_manifest_with_overrides():
    manifest = {"smoothing_ms": 80, "threshold": 0.7, "thresholds": {"a": 0.8}, "release_ratio": 0.4,
                "refractory_ms": 300, "min_duration_ms": 20, "some_future_key": True}
    settings = DetectorSettings.from_manifest(manifest, hop_ms=10.0)
    assert (settings.smoothing_ms, settings.threshold, settings.release_ratio) == (80, 0.7, 0.4)
    assert settings.threshold_for("a") == 0.8 and settings.threshold_for("b") == 0.7
    overridden = DetectorSettings.from_manifest(manifest, hop_ms=10.0, threshold=0.5, smoothing_ms=None,
                                                thresholds={"b": 0.9}, refractory_ms=0)
    assert overridden.threshold == 0.5 and overridden.smoothing_ms == 80 and overridden.refractory_ms == 0
    assert overridden.thresholds == {"a": 0.8, "b": 0.9}
    assert DetectorSettings.from_manifest(None, hop_ms=10.0).threshold == 0.6  # defaults


@pytest.mark.parametrize("bad, words", [
    ({"threshold": 1.5}, ["threshold=1.5", "(0, 1]"]),
    ({"thresholds": {"a": 0}}, ["label 'a'", "(0, 1]"]),
    ({"release_ratio": 0}, ["release_ratio=0"]),
    ({"smoothing_ms": -5}, ["smoothing_ms=-5"]),
    ({"smoothing_ms": 1e10}, ["smoothing_ms=10000000000.0", "at most 2000"]),  # not gigabytes of history
    ({"max_duration_ms": 1e12}, ["max_duration_ms=1000000000000.0", "at most 60000"]),
    ({"refractory_ms": "soon"}, ["refractory_ms='soon'"]),
    ({"min_duration_ms": 500, "max_duration_ms": 400}, ["max_duration_ms=400", "min_duration_ms=500"]),
    ({"trigger": "loud"}, ["trigger='loud'", "'label'", "'word'"]),
    ({"end_quiet_ms": -1}, ["end_quiet_ms=-1", "0 (off)"]),
    ({"end_quiet_ms": 5000}, ["end_quiet_ms=5000", "max_duration_ms=3000"]),
    ({"end_quiet_db": 0}, ["end_quiet_db=0", "(0, 60]"]),
    ({"end_quiet_db": 90}, ["end_quiet_db=90"]),
    ({"min_score": -0.1}, ["min_score=-0.1", "[0, 1]"]),
    ({"min_score": 1.2}, ["min_score=1.2"]),
])
def test_invalid_settings_are_refused_with_the_setting_named(bad, words):
    with pytest.raises(DetectorSettingsError) as err:
        DetectorSettings.from_manifest(bad, hop_ms=10.0)
    for word in words:
        assert word in str(err.value)


def test_a_broken_models_nan_or_out_of_range_posteriors_are_not_passed_on():
    """NaN would hold an event open, pass min_score (NaN < x is False) and reach the sinks as invalid JSON."""
    detector = Detector(DetectorSettings(hop_ms=10.0, threshold=0.6, smoothing_ms=0, min_score=0.5, refractory_ms=0),
                        LABELS)
    posteriors = np.zeros((100, len(LABELS)))
    posteriors[10:30, 0] = 0.9
    posteriors[30:35, :] = np.nan
    posteriors[50:70, 1] = 7.0
    events = detector.update(posteriors) + detector.flush()
    assert [(e.label, e.score, round(e.end_s, 2)) for e in events] == [("a", 0.9, 0.3), ("b", 1.0, 0.7)]


@pytest.mark.parametrize("end_quiet_ms", [1, 4, 4.9])
def test_a_pause_shorter_than_a_hop_is_refused_not_rounded_to_nothing(end_quiet_ms):
    with pytest.raises(DetectorSettingsError, match=f"end_quiet_ms={end_quiet_ms}: a pause of at least one hop"):
        DetectorSettings(hop_ms=10.0, end_quiet_ms=end_quiet_ms)


def test_invalid_command_line_override_is_refused():
    with pytest.raises(DetectorSettingsError, match="threshold=2"):
        DetectorSettings.from_manifest({}, hop_ms=10.0, threshold=2)


def test_an_override_replaces_a_value_before_the_check():
    settings = DetectorSettings.from_manifest({"threshold": 1.2, "thresholds": {"a": 0}}, hop_ms=10.0,
                                              threshold=0.9, thresholds={"a": 0.5})
    assert settings.threshold == 0.9 and settings.thresholds == {"a": 0.5}


@pytest.mark.parametrize("detector", ["x", ["threshold", 0.9], 3])
def test_detector_settings_that_are_not_an_object_are_refused(detector):
    with pytest.raises(DetectorSettingsError, match="must be a JSON object"):
        DetectorSettings.from_manifest(detector, hop_ms=10.0)


@pytest.mark.parametrize("detector, words", [("x", "must be a JSON object"), ({"threshold": 1.2}, "threshold=1.2")])
def test_a_bundle_with_broken_detector_settings_is_refused_where_it_is_loaded_and_installed(tmp_path, detector,
                                                                                            words):
    """A device must not make current a bundle it cannot start with (a restart loop under systemd)."""
    import json
    import shutil

    from edge.bundle import DEFAULT_BUNDLE, BundleError, load_bundle, pack_bundle
    from edge.releases import ReleaseError, ReleaseStore

    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_BUNDLE, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["detector"] = detector
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"detector settings .*{words}.*rebuild it"):
        load_bundle(broken)
    pack_bundle(broken, tmp_path / "broken.tar.gz")
    store = ReleaseStore(tmp_path / "device")
    with pytest.raises(ReleaseError, match=f"the bundle is invalid: .*{words}"):
        store.install(tmp_path / "broken.tar.gz")
    assert store.current() is None


def test_a_threshold_for_a_label_the_bundle_lacks_is_refused():
    with pytest.raises(DetectorSettingsError, match="'z'.*labels are 'a', 'b', 'c'"):
        Detector(DetectorSettings(hop_ms=10.0, thresholds={"z": 0.5}), LABELS)


def test_a_threshold_names_its_label_in_either_unicode_form():
    """A bundle whose label is spelled decomposed (convert --labels typed on a Mac) and a threshold given composed,
    or the other way round: the same label, not an unknown one."""
    import unicodedata

    composed, decomposed = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    for label, given in ((composed, decomposed), (decomposed, composed)):
        detector = Detector(DetectorSettings(hop_ms=10.0, threshold=0.9, thresholds={given: 0.4}), ["a", label])
        assert list(detector._thresholds) == [0.9, 0.4]


def test_a_per_label_threshold_out_of_range_is_named_as_the_option_was_typed():
    """`run --threshold-for 7=1.5` said "threshold for label '7'=1.5", the setting's name, where the other options
    are named as given (`--threshold 1.5`)."""
    from click.testing import CliRunner

    from firmware_tools.cli import main

    result = CliRunner().invoke(main, ["run", "demo", "--threshold-for", "3=0.4", "--threshold-for", "7=1.5"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "invalid: --threshold-for 7=1.5: must be a number in (0, 1]; change --threshold-for" in said, said
    assert "label '7'" not in said and "3=" not in said  # only the value that is wrong


def test_detection_as_dict():
    event = Detection("7", 0.912345, 1.2345, 1.5, timestamp=1700000000.25)
    assert event.to_dict() == {"label": "7", "score": 0.9123, "start_s": 1.234, "end_s": 1.5,
                                "timestamp": 1700000000.25}
    assert "timestamp" not in Detection("7", 0.9, 1.0, 1.5).to_dict()
