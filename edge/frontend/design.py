"""Design: FrontendConfig (physical units) -> FrontendCoeffs (the integers the kernels use).

All float maths (ERB spacing, pole positions, gains, log tables) happens here, once. The kernels in
cython_kernels/ only ever see the integers below.

Integer formats
---------------
Filter signals   int32, input int16 shifted left by INPUT_SHIFT (14): full scale 2^15 -> 2^29. `check_headroom` proves from each channel's impulse response (its l1 norm)
                 that no signal can exceed 2^30 for any int16 input, so the kernels never saturate.
Coefficients     int32 in Q30 (COEF_SHIFT): every section is (a0 + a1 z^-1) / (1 + b1 z^-1 + b2 z^-2).
                 Slaney's gain is spread over the four sections so that each has unity gain at its centre
                 frequency; that keeps every intermediate signal at the input's scale.
Accumulator      int64: a0*x + a1*x1 - b1*y1 - b2*y2 + e, |terms| < 2^62.
Rounding         floor (arithmetic shift right by 30) with first-order error feedback: the 30 bits shifted
                 out (e, 0 <= e < 2^30) are added to the next sample's accumulator. The rounding error is then
                 shaped by (1 - z^-1), which cancels it where low channels' poles sit close to z = 1; without it a
                 50 Hz channel at 16 kHz loses ~35 dB of SNR and can hold a limit cycle.
Envelope         half-wave rectified filter output summed over each hop (int64), and over `window_hops`
                 hops for each frame.
Log              log2(sum + 1) in Q16 via a 65-entry table with linear interpolation (cython_kernels/intlog).
Level            relative to a full-scale sine at the channel's centre frequency, Q16 log2 units.
Normaliser       reference R = max(R - release, loudest channel, floor), per frame; fast attack, slow release.
Output           int8 q = 127 + round((level - R) * 16), clamped at -128. One step is 1/16 of log2, i.e.
                 0.376 dB; q = 127 means "as loud as the reference". See OUTPUT_SCALE_DB, OUTPUT_ZERO_POINT.
Spectral view    (when spectral_norm_s > 0) a second int8 row: q minus the running average spectral shape.
                 M[c] (Q8 of q) is the mean of q[c] over the active frames so far (loudest channel within
                 NORM_ACTIVE_DB of the reference), an exponential average once there are `norm_memory_frames`:
                 n = min(n + 1, memory); M += floor((256 q - M) / n). The shape is M minus its mean over
                 channels, so the view keeps loudness and loses only colour: v = clamp(q - round(shape / 256)).
                 Quiet frames leave M alone, so a pause does not wipe what was learned about the voice.
"""
import dataclasses
import functools
import math

import numpy as np

from edge.frontend import reference
from edge.frontend.config import FrontendConfig, FrontendConfigError

INPUT_SHIFT = 14
COEF_SHIFT = 30
SIGNAL_LIMIT = 2**30  # proven bound on every filter signal (see check_headroom)
LOG_FRAC_BITS = 16
LOG_TABLE_BITS = 6
OUTPUT_STEPS_PER_LOG2 = 16  # int8 steps per factor of two in amplitude
OUTPUT_ZERO_POINT = 127  # q for a channel as loud as the normaliser's reference
OUTPUT_SCALE_DB = 20 * math.log10(2) / OUTPUT_STEPS_PER_LOG2  # dB per int8 step
SECTIONS = 4
DB_PER_LOG2 = 20 * math.log10(2)
NORM_ACTIVE_DB = 18.0  # spectral view: a frame teaches the average shape when its loudest channel is this close to R


@dataclasses.dataclass(frozen=True)
class FilterbankCoeffs:
    centre_freqs: np.ndarray  # float64 (channels,), Hz, ascending
    a0: np.ndarray  # int32 (4, channels), Q30
    a1: np.ndarray  # int32 (4, channels), Q30
    b1: np.ndarray  # int32 (channels,), Q30
    b2: np.ndarray  # int32 (channels,), Q30

    @property
    def coef(self) -> np.ndarray:
        """The kernel's layout: int32 (10, channels), rows a0[0..3], a1[0..3], b1, b2."""
        return self._packed

    def __post_init__(self):
        packed = np.vstack([self.a0, self.a1, self.b1[None], self.b2[None]]).astype(np.int32)
        object.__setattr__(self, "_packed", np.ascontiguousarray(packed))
        _freeze(self.centre_freqs, self.a0, self.a1, self.b1, self.b2, self._packed)


@dataclasses.dataclass(frozen=True)
class FrameCoeffs:
    hop_samples: int
    window_hops: int
    full_scale_log: int  # Q16 log2 of the window sum a full-scale sine produces
    release_per_frame: int  # Q16 log2
    floor_log: int  # Q16 log2, relative to full scale
    log_table: np.ndarray  # int32 (2**LOG_TABLE_BITS + 1,), Q16 log2(1 + i / 2**LOG_TABLE_BITS)
    norm_memory_frames: int = 0  # spectral view: frames in the average shape's memory; 0 = no spectral view
    norm_active_q: int = 0  # spectral view: an output q the loudest channel must reach for the frame to count

    def __post_init__(self):
        _freeze(self.log_table)


def _freeze(*arrays: np.ndarray) -> None:
    """design() is cached and its coefficients shared by every front end of a configuration: read-only, so that
    no caller can change another's."""
    for array in arrays:
        array.setflags(write=False)


@dataclasses.dataclass(frozen=True)
class FrontendCoeffs:
    filterbank: FilterbankCoeffs
    frames: FrameCoeffs


def section_gains(fs: float, row: np.ndarray) -> np.ndarray:
    """|H_k| at the centre frequency for each of Slaney's four sections (their product is his `gain`)."""
    r = reference
    cf = row[-1]
    z = np.exp(-2j * np.pi * cf / fs)
    den = row[r.B0] + row[r.B1] * z + row[r.B2] * z * z
    return np.array([abs((row[r.A0] + row[a1] * z) / den) for a1 in (r.A11, r.A12, r.A13, r.A14)])


def design_filterbank(config: FrontendConfig) -> FilterbankCoeffs:
    r = reference
    fs = config.sample_rate
    cf = r.erb_space(config.f_low, config.f_high, config.channels)
    table = r.erb_filter_coefficients(fs, cf)
    a0 = np.empty((SECTIONS, cf.size))
    a1 = np.empty((SECTIONS, cf.size))
    for ch in range(cf.size):
        gains = section_gains(fs, np.append(table[ch], cf[ch]))
        for k, col in enumerate((r.A11, r.A12, r.A13, r.A14)):
            a0[k, ch] = table[ch, r.A0] / gains[k]
            a1[k, ch] = table[ch, col] / gains[k]
    coeffs = FilterbankCoeffs(
        centre_freqs=cf,
        a0=_q30(a0, "a0"),
        a1=_q30(a1, "a1"),
        b1=_q30(table[:, r.B1], "b1"),
        b2=_q30(table[:, r.B2], "b2"),
    )
    check_headroom(coeffs)
    return coeffs


def _q30(values: np.ndarray, name: str) -> np.ndarray:
    q = np.round(np.asarray(values) * (1 << COEF_SHIFT))
    if np.abs(q).max() >= 2**31:
        raise FrontendConfigError(f"filter coefficient {name} does not fit Q30 (max {np.abs(values).max():.3f}); "
                                  "raise f_low or lower f_high")
    return np.ascontiguousarray(q.astype(np.int32))


def impulse_response_l1(coeffs: FilterbankCoeffs) -> np.ndarray:
    """l1 norm of the impulse response after each section, per channel, for the quantised coefficients.

    max|output| <= l1 * max|input|, so this bounds every signal the kernel can see. The response is followed
    until the slowest pole pair has decayed by e^-60 (far below one LSB).
    """
    s = float(1 << COEF_SHIFT)
    a0, a1 = coeffs.a0 / s, coeffs.a1 / s
    b1, b2 = coeffs.b1 / s, coeffs.b2 / s
    pole_radius = np.sqrt(b2.max())
    length = int(60 / -math.log(pole_radius)) + 64
    channels = b1.size
    x = np.zeros((channels, length))
    x[:, 0] = 1.0
    norms = np.empty((SECTIONS, channels))
    for k in range(SECTIONS):
        num = np.stack([a0[k], a1[k], np.zeros(channels)], axis=1)
        den = np.stack([b1, b2], axis=1)
        x = reference._second_order_sections(x, num, den)
        norms[k] = np.abs(x).sum(axis=1)
    return norms


def check_headroom(coeffs: FilterbankCoeffs) -> None:
    worst = impulse_response_l1(coeffs).max() * (1 << (15 + INPUT_SHIFT)) * 1.01
    if worst >= SIGNAL_LIMIT:
        raise FrontendConfigError(
            f"a channel can reach {worst / SIGNAL_LIMIT:.2f}x the fixed-point headroom; raise f_low or use fewer "
            "channels near Nyquist")


def design_frames(config: FrontendConfig) -> FrameCoeffs:
    window_samples = config.hop_samples * config.window_hops
    # A full-scale sine of amplitude 2^(15 + INPUT_SHIFT) averages amplitude/pi after half-wave rectification.
    full_scale = window_samples * 2.0 ** (15 + INPUT_SHIFT) / math.pi
    one = 1 << LOG_FRAC_BITS
    release = config.release_db_per_s * config.hop_ms / 1000 / DB_PER_LOG2
    table = [round(math.log2(1 + i / (1 << LOG_TABLE_BITS)) * one) for i in range((1 << LOG_TABLE_BITS) + 1)]
    return FrameCoeffs(
        hop_samples=config.hop_samples,
        window_hops=config.window_hops,
        full_scale_log=round(math.log2(full_scale) * one),
        release_per_frame=max(1, round(release * one)),
        floor_log=round(config.floor_dbfs / DB_PER_LOG2 * one),
        log_table=np.array(table, dtype=np.int32),
        # At least 1 when the view is on: validation refuses a spectral_norm_s shorter than one hop.
        norm_memory_frames=round(config.spectral_norm_s * 1000 / config.hop_ms),
        norm_active_q=OUTPUT_ZERO_POINT - round(NORM_ACTIVE_DB / OUTPUT_SCALE_DB),
    )


@functools.lru_cache(maxsize=32)
def design(config: FrontendConfig) -> FrontendCoeffs:
    return FrontendCoeffs(filterbank=design_filterbank(config), frames=design_frames(config))
