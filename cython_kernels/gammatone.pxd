from libc.stdint cimport int16_t, int32_t, int64_t

cdef void cascade_block(const int32_t* coef, int32_t* state, int32_t* io, const int16_t* x, Py_ssize_t n,
                        Py_ssize_t channels, int32_t* out, Py_ssize_t out_stride,
                        int64_t* rectified_sum) noexcept nogil
