"""The float64 reference (edge.frontend.reference) against the published definitions it claims to follow.

Every expected value here is written out independently from the literature: Glasberg & Moore (1990) for the ERB,
Slaney (1993, Apple TR #35) for ERBSpace and the pole positions, Patterson's 4th-order gammatone
t^3 e^{-2 pi b t} cos(2 pi f t) with b = 1.019 ERB(f) for the impulse response.
"""
import numpy as np
import pytest
from scipy import signal

from edge.frontend import reference

EAR_Q, MIN_BW = 9.26449, 24.7

# Sample rates from 16 to 160 kHz and 3 to 1000 channels, as the issue asks; f_high kept below Nyquist.
GRID = [(16000, 3, 100, 7000), (16000, 32, 100, 7000), (22050, 64, 50, 10000), (44100, 128, 80, 16000),
        (96000, 300, 100, 20000), (160000, 1000, 50, 40000)]


def slaney_erb_space(f_low, f_high, n):
    """Slaney's ERBSpace, from its published definition, reversed to ascending order."""
    q = EAR_Q * MIN_BW
    i = np.arange(1, n + 1)
    cf = -q + np.exp(i * (-np.log(f_high + q) + np.log(f_low + q)) / n) * (f_high + q)
    return cf[::-1]


def erb_rate(f):
    """Glasberg & Moore's ERB-number scale, the integral of 1/ERB(f)."""
    return EAR_Q * np.log(1 + f / (EAR_Q * MIN_BW))


def cascade_response(coefs, freqs, fs):
    """The complex response of each channel's four sections (divided by the gain) at freqs, one per row."""
    r = reference
    z1 = np.exp(-2j * np.pi * np.asarray(freqs) / fs)
    h = 1 / coefs[:, r.GAIN]
    for a1 in (r.A11, r.A12, r.A13, r.A14):
        num = coefs[:, r.A0] + coefs[:, a1] * z1 + coefs[:, r.A2] * z1**2
        den = coefs[:, r.B0] + coefs[:, r.B1] * z1 + coefs[:, r.B2] * z1**2
        h = h * num / den
    return h


def slaney_sos(coefs):
    """Each channel's cascade as scipy second-order sections (gain folded into the first)."""
    r = reference
    out = []
    for row in coefs:
        sos = np.array([[row[r.A0], row[a1], row[r.A2], row[r.B0], row[r.B1], row[r.B2]]
                        for a1 in (r.A11, r.A12, r.A13, r.A14)])
        sos[0, :3] /= row[r.GAIN]
        out.append(sos)
    return out


def test_erb_is_glasberg_and_moore():
    f = np.array([0.0, 100.0, 1000.0, 4000.0, 20000.0])
    np.testing.assert_allclose(reference.erb(f), 24.7 * (4.37 * f / 1000 + 1), rtol=1e-5)


@pytest.mark.parametrize("fs, n, f_low, f_high", GRID)
def test_erb_space_is_slaneys_formula_ascending_and_equally_spaced_in_erb_rate(fs, n, f_low, f_high):
    cf = reference.erb_space(f_low, f_high, n)
    np.testing.assert_allclose(cf, slaney_erb_space(f_low, f_high, n), rtol=1e-12)
    assert cf.shape == (n,) and np.all(np.diff(cf) > 0)
    assert cf[0] == pytest.approx(f_low, rel=1e-12) and cf[-1] < f_high
    steps = np.diff(erb_rate(np.concatenate([cf, [f_high]])))
    np.testing.assert_allclose(steps, (erb_rate(f_high) - erb_rate(f_low)) / n, rtol=1e-9)


@pytest.mark.parametrize("fs, n, f_low, f_high", GRID)
def test_poles_sit_at_the_gammatone_bandwidth_and_the_gain_is_unity_at_cf(fs, n, f_low, f_high):
    cf = reference.erb_space(f_low, f_high, n)
    coefs = reference.erb_filter_coefficients(fs, cf)
    assert coefs.shape == (n, 10)
    # Every section shares the pole pair exp((-2 pi b +- 2 pi j cf) / fs), b = 1.019 ERB(cf).
    radius = np.exp(-2 * np.pi * 1.019 * (24.7 * (4.37 * cf / 1000 + 1)) / fs)
    np.testing.assert_allclose(coefs[:, reference.B2] / coefs[:, reference.B0], radius**2, rtol=1e-4)
    np.testing.assert_allclose(coefs[:, reference.B1] / coefs[:, reference.B0],
                               -2 * radius * np.cos(2 * np.pi * cf / fs), rtol=1e-4)
    np.testing.assert_allclose(np.abs(cascade_response(coefs, cf, fs)), 1.0, rtol=1e-9)
    # ... and cf is (close to) the peak: half an ERB away the response is lower on both sides.
    half_erb = 0.5 * reference.erb(cf)
    for side in (-1, 1):
        assert np.all(np.abs(cascade_response(coefs, cf + side * half_erb, fs)) < 1)


@pytest.mark.parametrize("fs, n, f_low, f_high", GRID)
def test_impulse_response_has_the_shape_of_a_4th_order_gammatone(fs, n, f_low, f_high):
    cf_all = reference.erb_space(f_low, f_high, n)
    cf = cf_all[np.unique(np.linspace(0, n - 1, 6).round().astype(int))]
    length = int(fs * 0.04)  # the 50 Hz channels' envelope peaks at 3 / (2 pi b) = 16 ms
    impulse = np.zeros(length)
    impulse[0] = 1.0
    h = reference.erb_filterbank(impulse, reference.erb_filter_coefficients(fs, cf))
    t = np.arange(length) / fs
    for f, response in zip(cf, h):
        b = 1.019 * 24.7 * (4.37 * f / 1000 + 1)
        gammatone = t**3 * np.exp(-2 * np.pi * b * t) * np.cos(2 * np.pi * f * t)
        correlation = response @ gammatone / np.linalg.norm(response) / np.linalg.norm(gammatone)
        # Slaney's sections match the sampled gammatone less well as cf nears Nyquist (0.974 at 0.38 fs).
        assert correlation > (0.999 if f < fs / 20 else 0.97), f"{f:.0f} Hz: correlation {correlation:.4f}"


@pytest.mark.parametrize("fs, n, f_low, f_high", [(16000, 32, 100, 7000), (160000, 1000, 50, 40000)])
def test_filterbank_matches_scipy_running_the_same_sections(fs, n, f_low, f_high):
    cf = reference.erb_space(f_low, f_high, n)[:: max(1, n // 16)]
    coefs = reference.erb_filter_coefficients(fs, cf)
    x = np.random.default_rng(7).standard_normal(1500)
    ours = reference.erb_filterbank(x, coefs)
    assert ours.shape == (cf.size, x.size) and ours.dtype == np.float64
    for row, sos in zip(ours, slaney_sos(coefs)):
        expected = signal.sosfilt(sos, x)
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-9 * np.abs(expected).max())


def test_a_sine_at_cf_comes_out_at_unit_amplitude():
    fs = 16000
    cf = reference.erb_space(300, 7000, 8)
    t = np.arange(int(0.1 * fs)) / fs
    coefs = reference.erb_filter_coefficients(fs, cf)
    for i, f in enumerate(cf):
        y = reference.erb_filterbank(np.sin(2 * np.pi * f * t), coefs[i:i + 1])[0]
        steady = y[-int(0.02 * fs):]
        assert np.abs(steady).max() == pytest.approx(1.0, abs=2e-3), f"{f:.0f} Hz"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one channel"):
        reference.erb_space(100, 7000, 0)
    with pytest.raises(ValueError, match="f_low"):
        reference.erb_space(7000, 100, 8)
    with pytest.raises(ValueError, match="1-D"):
        reference.erb_filterbank(np.zeros((2, 10)), reference.erb_filter_coefficients(16000, [1000.0]))
