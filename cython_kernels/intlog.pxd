from libc.stdint cimport int32_t, int64_t, uint64_t

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


cdef inline int32_t log2_q16(uint64_t v, const int32_t* table) noexcept nogil:
    """log2(v) in Q16 for v >= 1; see intlog_golden.py for the exact arithmetic."""
    cdef int e = 63 - __builtin_clzll(v)
    cdef uint64_t normalised = v << (63 - e)
    cdef int64_t f = <int64_t>((normalised >> 47) & 0xFFFF)
    cdef int64_t i = f >> 10
    cdef int64_t r = f & 1023
    return <int32_t>((<int64_t>e << 16) + table[i] + (((<int64_t>table[i + 1] - table[i]) * r + 512) >> 10))
