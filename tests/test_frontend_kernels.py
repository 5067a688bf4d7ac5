"""The Cython kernels are bit-exact with the NumPy golden models, whatever the signal, config or chunking.

The golden models (cython_kernels/*_golden.py) are plain integer NumPy: they define the arithmetic. The kernels
must give the same frames, the same filter outputs and the same final state, so that training (host) and
inference (device) see identical features.
"""
import dataclasses
import math
import random

import numpy as np
import pytest

from cython_kernels import frames, frames_golden, gammatone, gammatone_golden, intlog, intlog_golden
from edge.frontend import Frontend, FrontendConfig
from edge.frontend.design import design
from edge.frontend.state import FrontendState

CONFIGS = {
    "8k-8ch-1hop": FrontendConfig(sample_rate=8000, channels=8, f_high=3500.0, window_ms=10.0),
    "16k-32ch": FrontendConfig(),
    "16k-128ch-50Hz": FrontendConfig(channels=128, f_low=50.0, f_high=7900.0),
    "48k-32ch-5ms": FrontendConfig(sample_rate=48000, channels=32, f_high=20000.0, hop_ms=5.0, window_ms=25.0),
    "48k-128ch": FrontendConfig(sample_rate=48000, channels=128, f_high=20000.0),
    "8k-32ch-spectral": FrontendConfig(sample_rate=8000, channels=32, f_high=3800.0, spectral_norm_s=1.28),
    # a 10-frame memory fills within the test signals, so the exponential-average branch runs too
    "16k-16ch-spectral-short": FrontendConfig(channels=16, spectral_norm_s=0.1),
}

N = 2500  # samples per signal: several frames at every rate, and the golden model stays quick


def square(freq, fs, n=N):
    """Full-scale square wave, both rails: +32767 and -32768."""
    phase = np.floor(2 * freq * np.arange(n) / fs).astype(int) % 2
    return np.where(phase == 0, 32767, -32768).astype(np.int16)


def signals(fs):
    rng = np.random.default_rng(fs)
    impulse = np.zeros(N, np.int16)
    impulse[0] = 32767
    negative_impulse = np.zeros(N, np.int16)
    negative_impulse[3] = -32768
    loud_then_quiet = rng.integers(-32768, 32768, N).astype(np.int16)
    loud_then_quiet[N // 3:] //= 1000  # exercises the normaliser's release
    return {
        "noise": rng.integers(-32768, 32768, N).astype(np.int16),
        "square-low": square(110.0, fs),
        "square-high": square(fs / 7, fs),
        "impulse": impulse,
        "negative-impulse": negative_impulse,
        "silence": np.zeros(N, np.int16),
        "dc-positive": np.full(N, 32767, np.int16),
        "dc-negative": np.full(N, -32768, np.int16),
        "loud-then-quiet": loud_then_quiet,
    }


SIGNAL_NAMES = list(signals(16000))


def assert_same_state(golden: FrontendState, ours: FrontendState):
    # last_output is a work row of the kernel (the latest filter output), not state the golden model keeps.
    for field in ("filter", "filter_io", "hop_sum", "ring", "counters", "shape_mean"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(golden, field), err_msg=field)


@pytest.mark.parametrize("signal_name", SIGNAL_NAMES)
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_frames_and_final_state_match_the_golden_model(config_name, signal_name):
    config = CONFIGS[config_name]
    x = signals(config.sample_rate)[signal_name]
    frontend = Frontend(config)
    coeffs = frontend.coeffs
    golden_state = FrontendState.initial(coeffs)
    # Two calls split off the hop grid, so the second starts from a mid-hop, mid-ring, odd-parity state.
    split = coeffs.frames.hop_samples * 3 + 37
    for part in (x[:split], x[split:]):
        expected = frames_golden.process(coeffs.filterbank, coeffs.frames, golden_state, part)
        got = frontend.process(part)
        assert got.dtype == np.int8 and got.shape == expected.shape == (len(expected), config.features)
        np.testing.assert_array_equal(got, expected)
        assert_same_state(golden_state, frontend.state)
    assert len(expected) > 0


@pytest.mark.parametrize("signal_name", SIGNAL_NAMES)
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_filter_outputs_and_state_match_the_golden_cascade(config_name, signal_name):
    config = CONFIGS[config_name]
    x = signals(config.sample_rate)[signal_name]
    coef = design(config).filterbank.coef
    golden, ours = FrontendState.initial(design(config)), FrontendState.initial(design(config))
    for part in (x[:1001], x[1001:]):  # odd split: the second call starts on the other ping-pong parity
        expected = gammatone_golden.cascade(coef, golden.filter, golden.filter_io, part)
        got = np.empty((part.size, config.channels), np.int32)
        gammatone.cascade(coef, ours.filter, ours.filter_io, np.ascontiguousarray(part), got)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(ours.filter, golden.filter)
        np.testing.assert_array_equal(ours.filter_io, golden.filter_io)


def test_the_bit_exact_checks_see_real_signal():
    """Guard against a vacuous comparison: noise must give varied frames and large filter outputs."""
    config = CONFIGS["16k-32ch"]
    x = signals(config.sample_rate)["noise"]
    frames = Frontend(config).process(x)
    assert len(np.unique(frames)) > 20
    assert np.abs(Frontend(config).filterbank(x)).max() > 0.1


def chunked(frontend: Frontend, x: np.ndarray, sizes) -> np.ndarray:
    out, pos = [], 0
    for size in sizes:
        out.append(frontend.process(x[pos:pos + size]))
        pos += size
    assert pos == x.size
    return np.concatenate(out)


def odd_sizes(total, rng):
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.choice([1, 2, 3, 7, 13, 159, 161, 333, 1009])))
    sizes[-1] -= sum(sizes) - total
    return sizes


@pytest.mark.parametrize("config_name", ["8k-8ch-1hop", "16k-32ch", "48k-32ch-5ms", "8k-32ch-spectral"])
def test_any_chunking_gives_identical_frames_and_state(config_name):
    config = CONFIGS[config_name]
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(6 * config.sample_rate // 10) * 3000).astype(np.int16)  # 0.6 s
    whole = Frontend(config)
    expected = whole.process(x)
    assert len(expected) == x.size // config.hop_samples
    chunkings = {
        "one sample at a time": [1] * x.size,
        "odd sizes": odd_sizes(x.size, rng),
        "with empty calls": [0, 500, 0, x.size - 500, 0],
    }
    for name, sizes in chunkings.items():
        frontend = Frontend(config)
        np.testing.assert_array_equal(chunked(frontend, x, sizes), expected, err_msg=name)
        assert_same_state(whole.state, frontend.state)


def test_filter_stage_is_chunk_invariant():
    config = CONFIGS["16k-32ch"]
    x = np.random.default_rng(5).integers(-32768, 32768, 3000).astype(np.int16)
    coef = design(config).filterbank.coef
    whole = FrontendState.initial(design(config))
    expected = np.empty((x.size, config.channels), np.int32)
    gammatone.cascade(coef, whole.filter, whole.filter_io, x, expected)
    for sizes in ([1] * 200 + [x.size - 200], odd_sizes(x.size, np.random.default_rng(6))):
        state = FrontendState.initial(design(config))
        pieces, pos = [], 0
        for size in sizes:
            out = np.empty((size, config.channels), np.int32)
            gammatone.cascade(coef, state.filter, state.filter_io, np.ascontiguousarray(x[pos:pos + size]), out)
            pieces.append(out)
            pos += size
        np.testing.assert_array_equal(np.concatenate(pieces), expected)
        np.testing.assert_array_equal(state.filter, whole.filter)


def test_reset_gives_the_same_frames_as_a_fresh_front_end():
    x = np.random.default_rng(8).integers(-32768, 32768, 4000).astype(np.int16)
    frontend = Frontend()
    first = frontend.process(x)
    frontend.process(x[:1234])
    frontend.reset()
    np.testing.assert_array_equal(frontend.process(x), first)


def test_process_into_fills_a_preallocated_buffer_and_frames_for_predicts_the_count():
    frontend = Frontend()
    x = np.random.default_rng(9).integers(-32768, 32768, 1000).astype(np.int16)
    reference = Frontend().process(x)
    out = np.full((16, frontend.config.channels), 99, np.int8)
    written = 0
    for part in (x[:170], x[170:650], x[650:]):
        expected_count = frontend.frames_for(part.size)
        assert frontend.process_into(part, out[written:]) == expected_count
        written += expected_count
    assert written == len(reference) == 6
    np.testing.assert_array_equal(out[:written], reference)
    assert np.all(out[written:] == 99)  # nothing written past the frames


# --- integer log2 ---------------------------------------------------------------------------------------------

def log_inputs():
    edges = {1, 2, 3, 2**64 - 1}
    for k in range(1, 64):
        edges |= {2**k - 1, 2**k, 2**k + 1}
    rng = random.Random(10)
    bits = [rng.randint(1, 64) for _ in range(2000)]
    randoms = {(1 << (m - 1)) | rng.getrandbits(m - 1) if m > 1 else 1 for m in bits}  # every magnitude
    return np.array(sorted(edges | randoms), dtype=np.uint64)


def test_intlog_kernel_matches_golden_model_on_edge_values():
    table = design(FrontendConfig()).frames.log_table
    v = log_inputs()
    expected = intlog_golden.log2_q16(v, table)
    got = np.empty(v.size, np.int32)
    intlog.log2_q16_array(v, table, got)
    np.testing.assert_array_equal(got, expected)
    # Exact at powers of two; elsewhere table interpolation and the 16 kept mantissa bits cost < 1e-4 (0.0006 dB,
    # far below the 0.376 dB output step).
    powers = np.array([2**k for k in range(64)], dtype=np.uint64)
    np.testing.assert_array_equal(intlog_golden.log2_q16(powers, table), np.arange(64) << 16)
    true_log = np.array([math.log2(int(value)) for value in v])
    assert np.abs(expected / 65536 - true_log).max() < 1e-4


def test_intlog_refuses_zero():
    table = design(FrontendConfig()).frames.log_table
    with pytest.raises(ValueError, match="must be >= 1"):
        intlog.log2_q16_array(np.array([5, 0], dtype=np.uint64), table, np.empty(2, np.int32))


def test_state_is_sized_by_channels_only():
    """Memory: the streaming state does not depend on how much audio has been processed."""
    frontend = Frontend()
    sizes = {f.name: getattr(frontend.state, f.name).nbytes for f in dataclasses.fields(frontend.state)}
    frontend.process(np.zeros(16000, np.int16))
    assert {f.name: getattr(frontend.state, f.name).nbytes for f in dataclasses.fields(frontend.state)} == sizes


def test_a_state_from_another_configuration_is_refused_before_it_is_read():
    """Shapes alike (32 channels, 2-hop window), hops not: 300 samples into a 320-sample hop made the kernel read
    memory before the chunk it was given."""
    longer_hop = Frontend(FrontendConfig(hop_ms=20.0, window_ms=40.0))
    longer_hop.process(np.zeros(300, np.int16))
    frontend = Frontend(FrontendConfig(hop_ms=10.0, window_ms=20.0))
    frontend.state = longer_hop.state.copy()
    with pytest.raises(ValueError, match="counters do not fit this front end.*same configuration"):
        frontend.process(np.zeros(400, np.int16))


@pytest.mark.parametrize("parity", [2, -1, 100_000_000])
def test_a_filter_state_whose_parity_is_not_0_or_1_is_refused(parity):
    """The parity picks the newest half of the filter state: any other value made the kernels write outside it
    (a segmentation fault, or a heap abort) where the golden model raised IndexError."""
    frontend = Frontend()
    frontend.state.filter_io[1] = parity
    with pytest.raises(ValueError, match="filter_io's parity must be 0 or 1"):
        frontend.process(np.ones(160, np.int16))
    coef = frontend.coeffs.filterbank.coef
    with pytest.raises(ValueError, match="io's parity must be 0 or 1"):
        gammatone.cascade(coef, frontend.state.filter, frontend.state.filter_io, np.ones(4, np.int16),
                          np.empty((4, coef.shape[1]), np.int32))


def frames_kernel_call(frontend, hop_samples, log_table):
    fb, fr, s = frontend.coeffs.filterbank, frontend.coeffs.frames, frontend.state
    out = np.empty((4, frontend.config.channels), np.int8)
    return frames.process(fb.coef, hop_samples, fr.window_hops, fr.full_scale_log, fr.release_per_frame,
                          fr.floor_log, log_table, fr.norm_memory_frames, fr.norm_active_q, s.filter, s.filter_io,
                          s.last_output, s.hop_sum, s.ring, s.counters, s.shape_mean, np.ones(320, np.int16), out)


def test_the_kernels_refuse_a_zero_hop_and_a_short_log_table():
    """A hop of 0 killed the process (division by zero, SIGFPE); a short table was read past its end (garbage)."""
    frontend = Frontend()
    table = frontend.coeffs.frames.log_table
    with pytest.raises(ValueError, match="hop_samples and window_hops must be at least 1"):
        frames_kernel_call(frontend, 0, table)
    with pytest.raises(ValueError, match="log_table must hold 65 values"):
        frames_kernel_call(frontend, frontend.coeffs.frames.hop_samples, table[:2].copy())
    for short in (table[:2].copy(), table[:0].copy()):
        with pytest.raises(ValueError, match="table must hold 65 values"):
            intlog.log2_q16_array(np.array([3, 5], np.uint64), short, np.empty(2, np.int32))
    assert frames_kernel_call(frontend, frontend.coeffs.frames.hop_samples, table) == 2


def test_designed_coefficients_are_read_only():
    """design() is cached: a caller that changed its coefficients in place changed every front end of that
    configuration made afterwards, under the same configuration hash."""
    coeffs = Frontend().coeffs
    fb = coeffs.filterbank
    for array in (fb.coef, fb.a0, fb.a1, fb.b1, fb.b2, fb.centre_freqs, coeffs.frames.log_table):
        with pytest.raises(ValueError, match="read-only"):
            array[0] += 1
