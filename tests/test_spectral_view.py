"""The spectral view: each frame's channels minus the running average spectral shape of recent sound."""
import dataclasses

import numpy as np
import pytest

from edge.frontend import Frontend, FrontendConfig, FrontendConfigError

CONFIG = FrontendConfig(sample_rate=8000, channels=32, f_high=3800.0, spectral_norm_s=1.28)
RATE = CONFIG.sample_rate


def tilted_noise(seconds, seed=0, tilt=0.95, level=3000):
    """Steady noise with a strong low-frequency tilt: a 'voice colour' the view should take away."""
    white = np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    coloured = np.empty_like(white)
    acc = 0.0
    for i, v in enumerate(white):
        acc = tilt * acc + v
        coloured[i] = acc
    return (coloured / np.abs(coloured).max() * level).astype(np.int16)


def views(frames):
    return frames[:, :CONFIG.channels].astype(int), frames[:, CONFIG.channels:].astype(int)


def test_the_view_doubles_the_frame_and_is_off_by_default():
    assert CONFIG.features == 64 and FrontendConfig().features == FrontendConfig().channels
    frames = Frontend(CONFIG).process(tilted_noise(0.5))
    assert frames.shape == (50, 64) and frames.dtype == np.int8
    plain = Frontend(dataclasses.replace(CONFIG, spectral_norm_s=0.0)).process(tilted_noise(0.5))
    np.testing.assert_array_equal(frames[:, :32], plain)  # the first half is the usual frame


def test_silence_teaches_nothing_and_passes_unchanged():
    frontend = Frontend(CONFIG)
    raw, view = views(frontend.process(np.zeros(RATE, np.int16)))
    np.testing.assert_array_equal(view, raw)
    assert not frontend.state.shape_mean.any() and frontend.state.counters[3] == 0
    raw, view = views(frontend.process(tilted_noise(0.05)))
    assert frontend.state.counters[3] > 0  # now it is learning: the first loud frame is all the shape it
    assert np.ptp(view[0]) <= 1 and abs(view[0].mean() - raw[0].mean()) <= 1  # knows, so its view is flat


def test_a_steady_colour_is_taken_away_but_loudness_is_kept():
    raw, view = views(Frontend(CONFIG).process(tilted_noise(3.0)))
    late = slice(200, 300)
    raw_tilt = np.ptp(raw[late].mean(axis=0))
    view_tilt = np.ptp(view[late].mean(axis=0))
    assert raw_tilt > 30  # more than 11 dB from the lowest to the highest channel (0.376 dB per step)
    assert view_tilt < 0.2 * raw_tilt
    # The view subtracts the shape, not the level: its mean over channels stays the frame's.
    assert abs(view[late].mean() - raw[late].mean()) < 3


def test_a_pause_does_not_wipe_the_learned_shape():
    frontend = Frontend(CONFIG)
    frontend.process(tilted_noise(1.0))
    frontend.process(np.zeros(RATE // 10, np.int16))  # the window and the filters ring down
    learned = frontend.state.shape_mean.copy()
    assert learned.any()
    frontend.process(np.zeros(2 * RATE, np.int16))
    np.testing.assert_array_equal(frontend.state.shape_mean, learned)


@pytest.mark.parametrize("seconds", [-1.0, 0.05, 11.0, float("nan")])
def test_bad_memory_lengths_are_refused(seconds):
    with pytest.raises(FrontendConfigError, match="spectral_norm_s"):
        FrontendConfig(spectral_norm_s=seconds)
