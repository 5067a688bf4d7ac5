"""The cochlea-like front end: int16 audio -> int8 frames (frames, channels), in fixed-point arithmetic.

Config (physical units) -> design (pure) -> coeffs (integers) -> state (streaming); the kernels in
cython_kernels/ see only coeffs and state. See design.py for every integer format.
"""
import numpy as np

from cython_kernels import frames as _frames_kernel
from cython_kernels import gammatone as _gammatone_kernel
from edge.frontend.config import FRONTEND_ALGORITHM, FrontendConfig, FrontendConfigError
from edge.frontend.design import (
    INPUT_SHIFT,
    OUTPUT_SCALE_DB,
    OUTPUT_ZERO_POINT,
    FrontendCoeffs,
    design,
)
from edge.frontend.state import HOP_FILL, FrontendState

__all__ = [
    "FRONTEND_ALGORITHM",
    "Frontend",
    "FrontendConfig",
    "FrontendConfigError",
    "OUTPUT_SCALE_DB",
    "OUTPUT_ZERO_POINT",
    "as_int16_samples",
]


def as_int16_samples(samples) -> np.ndarray:
    """Check and return samples as a contiguous 1-D int16 array; anything else is a clear error."""
    arr = np.asarray(samples)
    if arr.ndim != 1:
        raise ValueError(f"samples must be 1-D mono audio, got shape {arr.shape}: downmix channels first")
    if arr.dtype != np.int16:
        if arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr)):
            raise ValueError("samples contain NaN or infinity: clean the audio before the front end")
        how = _int16_advice(arr.dtype)
        raise ValueError(f"samples must be int16, got {arr.dtype}: {how}")
    return np.ascontiguousarray(arr)


def _int16_advice(dtype: np.dtype) -> str:
    """How to turn audio of this type into int16 at the same loudness (full scale to full scale)."""
    bits = 8 * dtype.itemsize
    if dtype.kind == "f":
        return ("convert with np.clip(np.round(x.astype(np.float64) * 32768), -32768, 32767).astype(np.int16) for "
                "float audio in [-1, 1)")  # float64 first: float16 cannot hold 32767, and the cast would wrap 32768
    if dtype.kind == "i" and bits == 8:
        return "convert with x.astype(np.int16) << 8 for signed 8-bit audio"
    if dtype.kind == "i" and bits == 16:  # another byte order
        return "convert with x.astype(np.int16) for big-endian int16"
    if dtype.kind == "i":
        return (f"convert with (x >> {bits - 16}).astype(np.int16) for {bits}-bit audio at its full scale, or "
                "x.astype(np.int16) for 16-bit values held in a wider type")
    if dtype.kind == "u" and bits <= 32:  # unsigned audio is offset: silence sits at half the range
        return (f"convert with ((x.astype(np.int64) - {1 << (bits - 1)}) {'<<' if bits < 16 else '>>'} "
                f"{abs(bits - 16)}).astype(np.int16) for unsigned {bits}-bit audio (silence at {1 << (bits - 1)})")
    return "convert the audio to 16-bit signed samples (np.int16) first"


class Frontend:
    """Streaming front end. `process` carries state between calls: any chunking gives identical frames."""

    def __init__(self, config: FrontendConfig | None = None):
        self.config = config or FrontendConfig()
        self.coeffs: FrontendCoeffs = design(self.config)
        self.state = FrontendState.initial(self.coeffs)

    @property
    def centre_freqs(self) -> np.ndarray:
        return self.coeffs.filterbank.centre_freqs

    def reset(self) -> None:
        self.state = FrontendState.initial(self.coeffs)

    def frames_for(self, n_samples: int) -> int:
        """How many frames the next `process` call of n_samples will return."""
        return (int(self.state.counters[HOP_FILL]) + n_samples) // self.coeffs.frames.hop_samples

    def process(self, samples) -> np.ndarray:
        x = as_int16_samples(samples)
        out = np.empty((self.frames_for(x.size), self.config.features), dtype=np.int8)
        self.process_into(x, out)
        return out

    def process_into(self, x: np.ndarray, out: np.ndarray) -> int:
        """Allocation-free variant: x int16 contiguous, out int8 (rows, config.features) with room for
        `frames_for(len(x))` rows."""
        fb, fr, s = self.coeffs.filterbank, self.coeffs.frames, self.state
        return _frames_kernel.process(
            fb.coef, fr.hop_samples, fr.window_hops, fr.full_scale_log, fr.release_per_frame, fr.floor_log, fr.log_table,
            fr.norm_memory_frames, fr.norm_active_q,
            s.filter, s.filter_io, s.last_output, s.hop_sum, s.ring, s.counters, s.shape_mean, x, out)

    def filterbank(self, samples) -> np.ndarray:
        """Fixed-point filter-stage output (before the hair cells) as float64 (channels, samples), in the float
        reference's units (int16 full scale = 1.0). Starts from rest; the streaming state is not touched."""
        x = as_int16_samples(samples)
        s = FrontendState.initial(self.coeffs)
        fb = self.coeffs.filterbank
        out = np.empty((x.size, self.config.channels), dtype=np.int32)
        _gammatone_kernel.cascade(fb.coef, s.filter, s.filter_io, x, out)
        return out.T.astype(np.float64) / float(1 << (15 + INPUT_SHIFT))
