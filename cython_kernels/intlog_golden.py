"""Bit-exact NumPy golden model of the integer log2 (cython_kernels/intlog.pxd).

log2_q16(v) for uint64 v >= 1, in Q16:
    e     = floor(log2 v)                        (position of the leading one)
    f     = the 16 bits after the leading one
    i, r  = f >> 10 (table index, 6 bits), f & 1023 (10 interpolation bits)
    log2  = (e << 16) + T[i] + (((T[i+1] - T[i]) * r + 512) >> 10)
with T[i] = round(65536 * log2(1 + i/64)), i = 0..64. Worst error about 5e-5 (0.0003 dB).
"""
import numpy as np


def leading_one(v):
    """floor(log2 v) for uint64 v >= 1, exactly (no float conversion)."""
    v = np.asarray(v, dtype=np.uint64)
    e = np.zeros(v.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = (v >> np.uint64(e + step)) != 0
        e = np.where(big, e + step, e)
    return e


def log2_q16(v, table):
    v = np.asarray(v, dtype=np.uint64)
    e = leading_one(v)
    normalised = v << (63 - e).astype(np.uint64)  # leading one at bit 63
    f = ((normalised >> np.uint64(47)) & np.uint64(0xFFFF)).astype(np.int64)
    i = f >> 10
    r = f & 1023
    t = np.asarray(table, dtype=np.int64)
    return ((e << 16) + t[i] + (((t[i + 1] - t[i]) * r + 512) >> 10)).astype(np.int32)
