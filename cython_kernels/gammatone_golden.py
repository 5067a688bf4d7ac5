"""Bit-exact NumPy golden model of the integer gammatone cascade (cython_kernels/gammatone.pyx).

Per channel, four direct-form-I sections share one pole pair; section k's input is section k-1's output.
For each section, with int32 signals and Q30 int32 coefficients:

    acc = a0*x[n] + a1*x[n-1] - b1*y[n-1] - b2*y[n-2] + e[n-1]      (int64)
    y[n] = acc >> 30                                                 (floor)
    e[n] = acc - (y[n] << 30)                                        (0 <= e < 2^30, error feedback)

Section 1's input is the int16 sample shifted left by 14. The design proves |y| < 2^30, so nothing saturates.
coef (10, C): rows a0[0..3], a1[0..3], b1, b2.
state (12, C): rows P[0..3], Q[0..3] (each section's last two outputs, ping-pong), err[0..3].
io (2,): [previous input sample (shifted), parity]; parity 0 means P holds y[n-1], 1 means Q does.
"""
import numpy as np

INPUT_SHIFT = 14
COEF_SHIFT = 30
MASK = (1 << COEF_SHIFT) - 1


def cascade(coef, state, io, x):
    """Run int16 samples x through every channel; returns int32 (samples, channels). Mutates state and io."""
    c = coef.astype(np.int64)
    a0, a1, b1, b2 = c[0:4], c[4:8], c[8], c[9]
    parity = int(io[1])
    pair = state[0:8].astype(np.int64).reshape(2, 4, -1)
    y1 = pair[parity].copy()  # y[n-1] per section
    y2 = pair[1 - parity].copy()  # y[n-2] per section
    err = state[8:12].astype(np.int64)
    prev_in = np.int64(io[0])
    out = np.empty((len(x), coef.shape[1]), dtype=np.int32)
    for n, sample in enumerate(np.asarray(x, dtype=np.int64)):
        section_in = sample << INPUT_SHIFT
        section_prev = prev_in
        for k in range(4):
            acc = a0[k] * section_in + a1[k] * section_prev - b1 * y1[k] - b2 * y2[k] + err[k]
            y = acc >> COEF_SHIFT
            err[k] = acc & MASK
            section_prev = y1[k].copy()
            y2[k] = y1[k]
            y1[k] = y
            section_in = y
        out[n] = section_in
        prev_in = sample << INPUT_SHIFT
    parity = (parity + len(x)) & 1
    state[0:8].reshape(2, 4, -1)[parity] = y1
    state[0:8].reshape(2, 4, -1)[1 - parity] = y2
    state[8:12] = err
    io[0] = prev_in
    io[1] = parity
    return out
