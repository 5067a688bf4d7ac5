"""The synthesized sounds that are not speech, which the background class hears (firmware_tools.sound_events)."""
import numpy as np
import pytest

from firmware_tools import dataset, sound_events, training

RATE = 8000


def periodicity(x: np.ndarray) -> float:
    """The highest normalised autocorrelation at a lag of a pitch from 100 to 2,000 Hz, over the 60 ms after the
    attack: near 1 for a pitched sound, low for noise."""
    window = x[int(0.03 * RATE):int(0.09 * RATE)]
    window = window - window.mean()
    energy = np.dot(window, window)
    return max(np.dot(window[:-lag], window[lag:]) / energy for lag in range(RATE // 2000, RATE // 100 + 1))


def test_every_sound_is_finite_at_full_peak_and_as_long_as_asked():
    rng = np.random.default_rng(0)
    for _ in range(300):
        x = sound_events.sound_event(rng, RATE)
        assert np.isfinite(x).all() and np.abs(x).max() == pytest.approx(1.0)
        assert 0.1 * RATE - 1 <= x.size <= 2.0 * RATE
    for make in sound_events.MAKERS:
        assert make(rng, RATE, 0.25).size == 2000
        assert make(rng, 16000, 0.25).size == 4000


def test_the_same_seed_gives_the_same_sounds():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(20):
        np.testing.assert_array_equal(sound_events.sound_event(a, RATE), sound_events.sound_event(b, RATE))


def test_notes_are_pitched_and_knocks_are_not():
    rng = np.random.default_rng(1)
    notes = [periodicity(sound_events.note(rng, RATE, 0.3)) for _ in range(50)]
    noise = [periodicity(rng.standard_normal(int(0.3 * RATE))) for _ in range(50)]
    assert np.median(notes) > 0.9 > 0.3 > np.median(noise)
    # A knock is a few damped resonances: its energy is gone well before the next impact could come (80 ms on).
    knock = sound_events.knocks(np.random.default_rng(2), RATE, 0.05)
    assert np.abs(knock[-50:]).max() < np.abs(knock[:50]).max()


def test_no_partial_reaches_the_nyquist_frequency():
    """Partials at or over half the rate would fold back as other pitches (aliasing)."""
    rng = np.random.default_rng(3)
    for make in (sound_events.note, sound_events.sweep, sound_events.melody):
        for _ in range(30):
            x = make(rng, RATE, 0.5)
            spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
            freqs = np.fft.rfftfreq(x.size, 1 / RATE)
            assert spectrum[freqs > 0.47 * RATE].sum() < 1e-4 * spectrum.sum()


def test_the_background_class_hears_them(monkeypatch):
    """A fifth of the backgrounds carry sound events ("events" and "speech+events"), scattered like the bursts."""
    calls = []

    def counted(rng, rate):
        calls.append(rate)
        return np.ones(800)

    monkeypatch.setattr(dataset, "sound_event", counted)
    aug = dataset.Augmenter(training.DEFAULT_FRONTEND, [np.zeros(100)], seed=4)
    with_events = 0
    for _ in range(200):
        before = len(calls)
        aug.background(16000)
        with_events += len(calls) > before
    assert 25 <= with_events <= 55 and set(calls) == {training.DEFAULT_FRONTEND.sample_rate}


def test_without_them_the_backgrounds_are_recipe_8s(monkeypatch):
    """--no-sound-events gives the shipped bundle's recipe: no sound event, the same draws as the code of before
    (these sums were taken with it, commit 652d28f), and the cache key of before."""
    def refused(rng, rate):
        raise AssertionError("a sound event in recipe 8")

    monkeypatch.setattr(dataset, "sound_event", refused)
    aug = dataset.Augmenter(training.DEFAULT_FRONTEND, [np.linspace(-0.5, 0.5, 4000)], seed=4, sound_events=False)
    sums = [float(np.sum(np.abs(aug.background(8000)))) for _ in range(12)]
    np.testing.assert_allclose(sums, [312.977315, 0.0, 22.651358, 102.849652, 192.938407, 0.0, 355.547436,
                                      1318.351939, 0.0, 0.0, 1059.142312, 244.368607], rtol=1e-6, atol=1e-6)
    recipe_9 = training.TrainSettings()
    recipe_8 = training.TrainSettings(sound_events=False)
    assert training.example_settings(recipe_9) == (*training.example_settings(recipe_8), "sound events")
