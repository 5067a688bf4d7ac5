"""Floating-point (float64) gammatone filterbank: the yardstick for the fixed-point front end.

It follows Slaney (1993), "An efficient implementation of the Patterson-Holdsworth auditory filter bank"
(Apple TR #35) and his Auditory Toolbox functions ERBSpace, MakeERBFilters and ERBFilterBank: each channel is a
4th-order gammatone realised as a cascade of four second-order sections sharing one pole pair, with unity gain
at the centre frequency. ERBs follow Glasberg & Moore (1990): ERB(f) = 24.7 * (4.37 f / 1000 + 1).

Differences from the toolbox are in presentation only: centre frequencies are returned in ascending order
(the toolbox lists them descending), and the filter is a plain loop vectorised across channels instead of
MATLAB's `filter`.
"""
import numpy as np

EAR_Q = 9.26449  # Glasberg & Moore: ERB = f / EAR_Q + MIN_BW, i.e. 24.7 * (4.37 f / 1000 + 1)
MIN_BW = 24.7
BANDWIDTH_FACTOR = 1.019  # Patterson's b = 1.019 ERB for a 4th-order gammatone

# Column layout of the coefficient table, as in the toolbox's fcoefs.
A0, A11, A12, A13, A14, A2, B0, B1, B2, GAIN = range(10)


def erb(f):
    """Equivalent rectangular bandwidth in Hz at frequency f (Glasberg & Moore 1990)."""
    return np.asarray(f, dtype=np.float64) / EAR_Q + MIN_BW


def erb_space(f_low: float, f_high: float, n: int) -> np.ndarray:
    """n centre frequencies equally spaced on the ERB-rate scale, ascending.

    Same points as the toolbox's ERBSpace(f_low, f_high, n): f_low is included, f_high is not (the highest
    channel sits one ERB-rate step below it).
    """
    if n < 1:
        raise ValueError(f"need at least one channel, got n={n}")
    if not 0 < f_low < f_high:
        raise ValueError(f"need 0 < f_low < f_high, got f_low={f_low}, f_high={f_high}")
    q = EAR_Q * MIN_BW
    i = np.arange(1, n + 1, dtype=np.float64)
    descending = -q + np.exp(i * (np.log(f_low + q) - np.log(f_high + q)) / n) * (f_high + q)
    return descending[::-1].copy()


def erb_filter_coefficients(fs: float, centre_freqs) -> np.ndarray:
    """Slaney's MakeERBFilters coefficients, one row per centre frequency (order kept as given).

    Columns: A0, A11, A12, A13, A14, A2, B0, B1, B2, gain. Section k of a channel is
    (A0 + A1k z^-1 + A2 z^-2) / (B0 + B1 z^-1 + B2 z^-2); the cascade divided by gain has unity gain at cf.
    """
    cf = np.atleast_1d(np.asarray(centre_freqs, dtype=np.float64))
    t = 1.0 / fs
    b = BANDWIDTH_FACTOR * 2 * np.pi * erb(cf)
    arg = 2 * cf * np.pi * t
    decay = np.exp(b * t)
    s_plus, s_minus = np.sqrt(3 + 2**1.5), np.sqrt(3 - 2**1.5)

    def zero_coef(sign, s):
        return -(2 * t * np.cos(arg) / decay + sign * 2 * s * t * np.sin(arg) / decay) / 2

    a11, a12 = zero_coef(+1, s_plus), zero_coef(-1, s_plus)
    a13, a14 = zero_coef(+1, s_minus), zero_coef(-1, s_minus)
    b1 = -2 * np.cos(arg) / decay
    b2 = np.exp(-2 * b * t)

    e4 = np.exp(4j * cf * np.pi * t)
    e2 = np.exp(-(b * t) + 2j * cf * np.pi * t)

    def factor(sign, s):
        return -2 * e4 * t + 2 * e2 * t * (np.cos(arg) + sign * s * np.sin(arg))

    gain = np.abs(
        factor(-1, s_minus) * factor(+1, s_minus) * factor(-1, s_plus) * factor(+1, s_plus)
        / (-2 / np.exp(2 * b * t) - 2 * e4 + 2 * (1 + e4) / decay) ** 4
    )
    ones = np.ones_like(cf)
    return np.column_stack([t * ones, a11, a12, a13, a14, 0 * ones, ones, b1, b2, gain])


def second_order_sections(coefficients) -> np.ndarray:
    """Each channel's cascade as four sections (b0, b1, b2, a0, a1, a2), scipy's `sos` layout: float64
    (channels, 4, 6), the 1/gain folded into the first section."""
    c = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
    sos = np.empty((c.shape[0], 4, 6))
    for k, a1_col in enumerate((A11, A12, A13, A14)):
        scale = 1.0 / c[:, GAIN] if k == 0 else np.ones(c.shape[0])
        sos[:, k, 0:3] = np.stack([c[:, A0] * scale, c[:, a1_col] * scale, c[:, A2] * scale], axis=1)
        sos[:, k, 3:6] = c[:, [B0, B1, B2]]
    return sos


def erb_filterbank(x, coefficients) -> np.ndarray:
    """Filter x (1-D float) through every channel; returns float64 (channels, samples).

    Equivalent to the toolbox's ERBFilterBank: four cascaded `filter` calls per channel, the first one scaled
    by 1/gain. Each section is run in transposed direct form II, vectorised across channels.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}")
    sos = second_order_sections(coefficients)
    signal = np.broadcast_to(x, (sos.shape[0], x.size))
    for k in range(4):
        a0 = sos[:, k, 3:4]
        signal = _second_order_sections(signal, sos[:, k, 0:3] / a0, sos[:, k, 4:6] / a0)
    return np.ascontiguousarray(signal)


def _second_order_sections(x, num, den):
    """y[n] = b0 x[n] + b1 x[n-1] + b2 x[n-2] - a1 y[n-1] - a2 y[n-2], per row, transposed direct form II."""
    channels, n = x.shape
    y = np.empty((channels, n))
    s1 = np.zeros(channels)
    s2 = np.zeros(channels)
    b0, b1, b2 = num[:, 0], num[:, 1], num[:, 2]
    a1, a2 = den[:, 0], den[:, 1]
    xt = np.ascontiguousarray(x.T)
    yt = y.T
    for i in range(n):
        xi = xt[i]
        yi = b0 * xi + s1
        s1 = b1 * xi - a1 * yi + s2
        s2 = b2 * xi - a2 * yi
        yt[i] = yi
    return y
