# cython: language_level=3
"""The whole integer front end for one chunk: gammatone cascade -> half-wave rectified hop sums -> per-frame
log2, level normaliser and int8 quantiser, and the optional spectral view. The arithmetic is specified in
frames_golden.py.

Work is done in blocks that end at hop boundaries; the filter output is rectified and summed as it is made,
so it is never stored.
"""
cimport cython
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint64_t

from cython_kernels.gammatone cimport cascade_block
from cython_kernels.intlog cimport log2_q16

DEF OUTPUT_ZERO_POINT = 127
DEF OUTPUT_SHIFT = 12
DEF HOP_FILL = 0
DEF RING_INDEX = 1
DEF REFERENCE = 2
DEF NORM_COUNT = 3


def process(const int32_t[:, ::1] coef, Py_ssize_t hop_samples, Py_ssize_t window_hops, int64_t full_scale_log, int64_t release_per_frame,
            int64_t floor_log, const int32_t[::1] log_table, Py_ssize_t norm_memory, int64_t norm_active_q,
            int32_t[:, ::1] filter_state, int32_t[::1] filter_io, int32_t[::1] last_output,
            int64_t[::1] hop_sum, int64_t[:, ::1] ring, int64_t[::1] counters, int64_t[::1] shape_mean,
            const int16_t[::1] x, int8_t[:, ::1] out):
    """Process x (int16); writes one int8 row of out per completed hop and returns how many were written.
    A row is the channels' q, followed by their spectral view when norm_memory > 0."""
    cdef Py_ssize_t channels = coef.shape[1]
    cdef Py_ssize_t features = channels * (2 if norm_memory > 0 else 1)
    cdef Py_ssize_t n = x.shape[0]
    if hop_samples < 1 or window_hops < 1:
        raise ValueError("hop_samples and window_hops must be at least 1")
    if log_table.shape[0] != 65:
        raise ValueError("log_table must hold 65 values (log2(1 + i/64) for i = 0..64)")
    if counters.shape[0] != 4:
        raise ValueError("counters must be (4,)")
    cdef Py_ssize_t expected = (counters[HOP_FILL] + n) // hop_samples
    if out.shape[0] < expected or out.shape[1] != features:
        raise ValueError(f"out must be at least ({expected}, {features})")
    if shape_mean.shape[0] != channels:
        raise ValueError("shape_mean must be (channels,)")
    if coef.shape[0] != 10 or filter_state.shape[0] != 12 or filter_state.shape[1] != channels \
            or filter_io.shape[0] != 2:
        raise ValueError("coef must be (10, channels), filter_state (12, channels) and filter_io (2,)")
    if last_output.shape[0] != 2 * channels:
        raise ValueError("last_output must be (2 * channels,)")
    if ring.shape[0] != window_hops or ring.shape[1] != channels or hop_sum.shape[0] != channels:
        raise ValueError("ring must be (window_hops, channels) and hop_sum (channels,)")
    # A state saved from another configuration can match every shape; its counters must still fit this one, or
    # the hop's remainder goes negative and the kernel reads before x.
    if not 0 <= counters[HOP_FILL] < hop_samples or not 0 <= counters[RING_INDEX] < window_hops \
            or counters[NORM_COUNT] < 0:
        raise ValueError("counters do not fit this front end (samples into the hop, ring index, frames averaged): "
                         "restore only a state saved from the same configuration")
    # The parity picks which half of filter_state is the newest row: anything but 0 or 1 points outside it.
    if filter_io[1] != 0 and filter_io[1] != 1:
        raise ValueError("filter_io's parity must be 0 or 1: restore only a state saved by this front end")
    if n == 0:
        return 0
    cdef Py_ssize_t pos = 0, take, frames = 0
    with nogil:
        while pos < n:
            take = hop_samples - counters[HOP_FILL]
            if take > n - pos:
                take = n - pos
            cascade_block(&coef[0, 0], &filter_state[0, 0], &filter_io[0], &x[pos], take, channels,
                          &last_output[0], 0, &hop_sum[0])
            counters[HOP_FILL] += take
            pos += take
            if counters[HOP_FILL] == hop_samples:
                finish_frame(window_hops, full_scale_log, release_per_frame, floor_log, &log_table[0],
                             &hop_sum[0], &ring[0, 0], &counters[0], channels, &out[frames, 0])
                if norm_memory > 0:
                    spectral_view(norm_memory, norm_active_q, &shape_mean[0], &counters[0], channels,
                                  &out[frames, 0], &out[frames, channels])
                frames += 1
    return frames


cdef void finish_frame(Py_ssize_t window_hops, int64_t full_scale_log, int64_t release_per_frame,
                       int64_t floor_log, const int32_t* log_table, int64_t* hop_sum, int64_t* ring,
                       int64_t* counters, Py_ssize_t channels, int8_t* out) noexcept nogil:
    cdef Py_ssize_t c, k, w = counters[RING_INDEX]
    cdef int64_t total, level, loudest = -(1 << 62), reference, q
    for c in range(channels):
        ring[w * channels + c] = hop_sum[c]
        hop_sum[c] = 0
    counters[HOP_FILL] = 0
    counters[RING_INDEX] = (w + 1) % window_hops
    # First pass: levels (kept in out's int8 slots is too narrow, so recompute in the second pass).
    for c in range(channels):
        total = 0
        for k in range(window_hops):
            total += ring[k * channels + c]
        level = log2_q16(<uint64_t>total + 1, log_table) - full_scale_log
        if level > loudest:
            loudest = level
    reference = counters[REFERENCE] - release_per_frame
    if loudest > reference:
        reference = loudest
    if floor_log > reference:
        reference = floor_log
    counters[REFERENCE] = reference
    for c in range(channels):
        total = 0
        for k in range(window_hops):
            total += ring[k * channels + c]
        level = log2_q16(<uint64_t>total + 1, log_table) - full_scale_log
        q = OUTPUT_ZERO_POINT + ((level - reference + 2048) >> OUTPUT_SHIFT)
        if q < -128:
            q = -128
        if q > 127:
            q = 127
        out[c] = <int8_t>q


@cython.cdivision(True)
cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    """a // b rounded towards minus infinity (b > 0), as NumPy's // does; C's / truncates towards zero."""
    cdef int64_t q = a / b
    if (a % b != 0) and (a < 0):
        q -= 1
    return q


cdef void spectral_view(Py_ssize_t memory, int64_t active_q, int64_t* mean, int64_t* counters,
                        Py_ssize_t channels, const int8_t* q, int8_t* out) noexcept nogil:
    cdef Py_ssize_t c
    cdef int64_t loudest = -128, n, total = 0, centre, v
    for c in range(channels):
        if q[c] > loudest:
            loudest = q[c]
    if loudest >= active_q:
        n = counters[NORM_COUNT] + 1
        if n > memory:
            n = memory
        counters[NORM_COUNT] = n
        for c in range(channels):
            mean[c] += floor_div(<int64_t>q[c] * 256 - mean[c], n)
    for c in range(channels):
        total += mean[c]
    centre = floor_div(total, channels)
    for c in range(channels):
        v = q[c] - ((mean[c] - centre + 128) >> 8)
        if v < -128:
            v = -128
        if v > 127:
            v = 127
        out[c] = <int8_t>v
