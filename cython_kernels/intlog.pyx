# cython: language_level=3
"""Array entry point to the integer log2 (the kernel itself is inline in intlog.pxd)."""
from libc.stdint cimport int32_t, uint64_t

from cython_kernels.intlog cimport log2_q16


def log2_q16_array(const uint64_t[::1] v, const int32_t[::1] table, int32_t[::1] out):
    cdef Py_ssize_t i
    if out.shape[0] != v.shape[0]:
        raise ValueError("out must have the length of v")
    for i in range(v.shape[0]):
        if v[i] == 0:
            raise ValueError(f"log2 of 0 at index {i}: inputs must be >= 1")
    with nogil:
        for i in range(v.shape[0]):
            out[i] = log2_q16(v[i], &table[0])
