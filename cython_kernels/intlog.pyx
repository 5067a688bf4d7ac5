# cython: language_level=3
"""Array entry point to the integer log2 (the kernel itself is inline in intlog.pxd)."""
from libc.stdint cimport int32_t, uint64_t

from cython_kernels.intlog cimport log2_q16

# The kernel reads table[i + 1] for a 6-bit i; a shorter table would be read past its end.
TABLE_SIZE = 65


def log2_q16_array(const uint64_t[::1] v, const int32_t[::1] table, int32_t[::1] out):
    cdef Py_ssize_t i
    if out.shape[0] != v.shape[0]:
        raise ValueError("out must have the length of v")
    if table.shape[0] != TABLE_SIZE:
        raise ValueError(f"table must hold {TABLE_SIZE} values (log2(1 + i/64) for i = 0..64)")
    for i in range(v.shape[0]):
        if v[i] == 0:
            raise ValueError(f"log2 of 0 at index {i}: inputs must be >= 1")
    with nogil:
        for i in range(v.shape[0]):
            out[i] = log2_q16(v[i], &table[0])
