"""Integer DSP kernels (Cython) and their bit-exact NumPy golden models. No I/O, no policy."""
