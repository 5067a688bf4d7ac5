# cython: language_level=3
"""Integer gammatone cascade: four direct-form-I sections per channel with first-order error feedback.

The arithmetic is specified in gammatone_golden.py (the bit-exact reference) and edge/frontend/design.py
(formats and the headroom proof).

Layout, all C-contiguous int32 rows of `channels` values, so every inner loop runs across channels and the
compiler vectorises it:
  coef  (10, C): a0[0..3], a1[0..3], b1, b2
  state (12, C): for each section k a ping-pong pair of output rows P[k] (row k) and Q[k] (row 4 + k), then
                 err[k] (row 8 + k). io[1] (parity) says which of the pair holds y[n-1]; the new output
                 overwrites the other one (y[n-2]), so no row is ever copied. A section's previous input is
                 the previous section's y[n-1], which the pair still holds.
  io    (2,):    previous input sample (shifted), parity.
"""
from libc.stdint cimport int16_t, int32_t, int64_t

import numpy as np

DEF INPUT_SHIFT = 14
DEF COEF_SHIFT = 30
DEF ERR_MASK = (1 << 30) - 1

# Restrict-qualified pointers: the rows never overlap, and saying so is what lets the compiler vectorise.
cdef extern from *:
    ctypedef int32_t* int32_row "int32_t * __restrict__"
    ctypedef const int32_t* const_int32_row "const int32_t * __restrict__"
    ctypedef int64_t* int64_row "int64_t * __restrict__"


cdef void one_sample(const_int32_row a00, const_int32_row a01, const_int32_row a02, const_int32_row a03,
                     const_int32_row a10, const_int32_row a11, const_int32_row a12, const_int32_row a13,
                     const_int32_row b1, const_int32_row b2,
                     const_int32_row new0, const_int32_row new1, const_int32_row new2, const_int32_row new3,
                     int32_row old0, int32_row old1, int32_row old2, int32_row old3,
                     int32_row err0, int32_row err1, int32_row err2, int32_row err3,
                     int64_t x, int64_t x1, int32_row out, int64_row rectified_sum,
                     Py_ssize_t channels) noexcept nogil:
    """All four sections for one sample, in one loop across channels (so the compiler keeps the signal
    between sections in registers). new* hold y[n-1]; old* hold y[n-2] and receive y[n]."""
    cdef Py_ssize_t c
    cdef int64_t acc, y0, y1, y2, y3
    for c in range(channels):
        acc = a00[c] * x + a10[c] * x1 - <int64_t>b1[c] * new0[c] - <int64_t>b2[c] * old0[c] + err0[c]
        y0 = acc >> COEF_SHIFT
        err0[c] = <int32_t>(acc & ERR_MASK)
        acc = a01[c] * y0 + <int64_t>a11[c] * new0[c] - <int64_t>b1[c] * new1[c] - <int64_t>b2[c] * old1[c] + err1[c]
        old0[c] = <int32_t>y0
        y1 = acc >> COEF_SHIFT
        err1[c] = <int32_t>(acc & ERR_MASK)
        acc = a02[c] * y1 + <int64_t>a12[c] * new1[c] - <int64_t>b1[c] * new2[c] - <int64_t>b2[c] * old2[c] + err2[c]
        old1[c] = <int32_t>y1
        y2 = acc >> COEF_SHIFT
        err2[c] = <int32_t>(acc & ERR_MASK)
        acc = a03[c] * y2 + <int64_t>a13[c] * new2[c] - <int64_t>b1[c] * new3[c] - <int64_t>b2[c] * old3[c] + err3[c]
        old2[c] = <int32_t>y2
        y3 = acc >> COEF_SHIFT
        err3[c] = <int32_t>(acc & ERR_MASK)
        old3[c] = <int32_t>y3
        out[c] = <int32_t>y3
        rectified_sum[c] += y3 if y3 > 0 else 0


cdef void two_samples(const_int32_row a00, const_int32_row a01, const_int32_row a02, const_int32_row a03,
                      const_int32_row a10, const_int32_row a11, const_int32_row a12, const_int32_row a13,
                      const_int32_row b1, const_int32_row b2,
                      int32_row new0, int32_row new1, int32_row new2, int32_row new3,
                      int32_row old0, int32_row old1, int32_row old2, int32_row old3,
                      int32_row err0, int32_row err1, int32_row err2, int32_row err3,
                      int64_t xa, int64_t xb, int64_t x1, int32_row out_a, int32_row out_b,
                      int64_row rectified_sum, Py_ssize_t channels) noexcept nogil:
    """Samples n (xa) and n+1 (xb) through all four sections: the same arithmetic as one_sample twice, with
    the state between the two held in registers and each coefficient loaded once. The ping-pong parity is
    unchanged after two samples, so new* receive y[n+1] and old* receive y[n]."""
    cdef Py_ssize_t c
    cdef int64_t acc, y0a, y1a, y2a, y3a, y0b, y1b, y2b, y3b, e0, e1, e2, e3
    cdef int64_t p0, p1, p2, p3
    for c in range(channels):
        p0 = new0[c]
        p1 = new1[c]
        p2 = new2[c]
        p3 = new3[c]
        acc = a00[c] * xa + a10[c] * x1 - b1[c] * p0 - <int64_t>b2[c] * old0[c] + err0[c]
        y0a = acc >> COEF_SHIFT
        e0 = acc & ERR_MASK
        acc = a01[c] * y0a + a11[c] * p0 - b1[c] * p1 - <int64_t>b2[c] * old1[c] + err1[c]
        y1a = acc >> COEF_SHIFT
        e1 = acc & ERR_MASK
        acc = a02[c] * y1a + a12[c] * p1 - b1[c] * p2 - <int64_t>b2[c] * old2[c] + err2[c]
        y2a = acc >> COEF_SHIFT
        e2 = acc & ERR_MASK
        acc = a03[c] * y2a + a13[c] * p2 - b1[c] * p3 - <int64_t>b2[c] * old3[c] + err3[c]
        y3a = acc >> COEF_SHIFT
        e3 = acc & ERR_MASK
        acc = a00[c] * xb + a10[c] * xa - b1[c] * y0a - b2[c] * p0 + e0
        y0b = acc >> COEF_SHIFT
        err0[c] = <int32_t>(acc & ERR_MASK)
        acc = a01[c] * y0b + a11[c] * y0a - b1[c] * y1a - b2[c] * p1 + e1
        y1b = acc >> COEF_SHIFT
        err1[c] = <int32_t>(acc & ERR_MASK)
        acc = a02[c] * y1b + a12[c] * y1a - b1[c] * y2a - b2[c] * p2 + e2
        y2b = acc >> COEF_SHIFT
        err2[c] = <int32_t>(acc & ERR_MASK)
        acc = a03[c] * y2b + a13[c] * y2a - b1[c] * y3a - b2[c] * p3 + e3
        y3b = acc >> COEF_SHIFT
        err3[c] = <int32_t>(acc & ERR_MASK)
        old0[c] = <int32_t>y0a
        old1[c] = <int32_t>y1a
        old2[c] = <int32_t>y2a
        old3[c] = <int32_t>y3a
        new0[c] = <int32_t>y0b
        new1[c] = <int32_t>y1b
        new2[c] = <int32_t>y2b
        new3[c] = <int32_t>y3b
        out_a[c] = <int32_t>y3a
        out_b[c] = <int32_t>y3b
        rectified_sum[c] += (y3a if y3a > 0 else 0) + (y3b if y3b > 0 else 0)


cdef void cascade_block(const int32_t* coef, int32_t* state, int32_t* io, const int16_t* x, Py_ssize_t n,
                        Py_ssize_t channels, int32_t* out, Py_ssize_t out_stride,
                        int64_t* rectified_sum) noexcept nogil:
    """Filter n samples through all channels. Output row i goes to out[i * out_stride:] and its half-wave
    rectified values are added to rectified_sum (to keep only the sum, pass out_stride 0 and a two-row out:
    the rows of a pair must not overlap).
    Samples go two at a time; an odd one out goes alone."""
    cdef Py_ssize_t i = 0, C = channels
    cdef int32_t* newest
    cdef int32_t* older
    cdef int32_t* swap
    cdef int64_t xa, xb, xprev = io[0]
    newest = state + 4 * io[1] * C
    older = state + 4 * (1 - io[1]) * C
    while i + 1 < n:
        xa = (<int64_t>x[i]) << INPUT_SHIFT
        xb = (<int64_t>x[i + 1]) << INPUT_SHIFT
        two_samples(coef, coef + C, coef + 2 * C, coef + 3 * C, coef + 4 * C, coef + 5 * C, coef + 6 * C,
                    coef + 7 * C, coef + 8 * C, coef + 9 * C,
                    newest, newest + C, newest + 2 * C, newest + 3 * C, older, older + C, older + 2 * C,
                    older + 3 * C, state + 8 * C, state + 9 * C, state + 10 * C, state + 11 * C,
                    xa, xb, xprev, out + i * out_stride, out + (i + 1) * out_stride if out_stride else out + C,
                    rectified_sum, C)
        xprev = xb
        i += 2
    if i < n:
        xa = (<int64_t>x[i]) << INPUT_SHIFT
        one_sample(coef, coef + C, coef + 2 * C, coef + 3 * C, coef + 4 * C, coef + 5 * C, coef + 6 * C,
                   coef + 7 * C, coef + 8 * C, coef + 9 * C,
                   newest, newest + C, newest + 2 * C, newest + 3 * C, older, older + C, older + 2 * C,
                   older + 3 * C, state + 8 * C, state + 9 * C, state + 10 * C, state + 11 * C,
                   xa, xprev, out + i * out_stride, rectified_sum, C)
        xprev = xa
    io[0] = <int32_t>xprev
    io[1] = (io[1] + n) & 1


def cascade(const int32_t[:, ::1] coef, int32_t[:, ::1] state, int32_t[::1] io, const int16_t[::1] x,
            int32_t[:, ::1] out):
    """Python entry: filter x (int16) into out (int32, (len(x), channels)); state and io updated in place."""
    cdef Py_ssize_t channels = coef.shape[1]
    if coef.shape[0] != 10 or state.shape[0] != 12 or state.shape[1] != channels or io.shape[0] != 2:
        raise ValueError("coef must be (10, channels), state (12, channels) and io (2,)")
    # The parity picks which half of state is the newest row: anything but 0 or 1 points outside it.
    if io[1] != 0 and io[1] != 1:
        raise ValueError("io's parity must be 0 or 1: restore only a state saved by this filter")
    if out.shape[0] != x.shape[0] or out.shape[1] != channels:
        raise ValueError(f"out must be ({x.shape[0]}, {channels})")
    if x.shape[0] == 0:
        return
    cdef int64_t[::1] rectified_sum = np.zeros(channels, np.int64)
    with nogil:
        cascade_block(&coef[0, 0], &state[0, 0], &io[0], &x[0], x.shape[0], channels, &out[0, 0], channels,
                      &rectified_sum[0])
