"""Bit-exact NumPy golden model of the whole integer front end (cython_kernels/frames.pyx).

Per sample: the gammatone cascade (gammatone_golden), half-wave rectified and summed per channel over the hop.
Per hop (one frame):
    S[c]  = sum of the last `window_hops` hop sums                     (int64)
    L[c]  = log2_q16(S[c] + 1) - full_scale_log                        (Q16 log2, 0 = full-scale sine)
    R     = max(R - release, max_c L[c], floor)                        (level normaliser, carried)
    q[c]  = clamp(127 + ((L[c] - R + 2048) >> 12), -128, 127)          (int8; 1 step = 1/16 log2)
Spectral view (norm_memory_frames > 0), a second row per frame (design.py explains it):
    if max_c q[c] >= norm_active_q:  n = min(n + 1, memory);  M[c] += (256 q[c] - M[c]) // n   (floor)
    v[c]  = clamp(q[c] - ((M[c] - sum_c(M) // C + 128) >> 8), -128, 127)
State: the cascade state plus hop_sum (C,) int64, ring (W, C) int64, and counters (4,) int64 =
[samples into the current hop, ring write index, reference level R, active frames n], and shape_mean M (C,) int64.
"""
import numpy as np

from cython_kernels import gammatone_golden, intlog_golden

OUTPUT_ZERO_POINT = 127
OUTPUT_SHIFT = 12  # Q16 log2 -> 1/16 log2 steps
HOP_FILL, RING_INDEX, REFERENCE, NORM_COUNT = 0, 1, 2, 3


def process(fb, fr, state, x):
    """fb: FilterbankCoeffs, fr: FrameCoeffs, state: FrontendState; returns int8 (frames, channels)."""
    y = gammatone_golden.cascade(fb.coef, state.filter, state.filter_io, x)
    rectified = np.maximum(y, 0).astype(np.int64)
    frames = []
    pos = 0
    while pos < len(x):
        take = min(len(x) - pos, fr.hop_samples - int(state.counters[HOP_FILL]))
        state.hop_sum += rectified[pos:pos + take].sum(axis=0)
        state.counters[HOP_FILL] += take
        pos += take
        if state.counters[HOP_FILL] == fr.hop_samples:
            q = _finish_frame(fr, state)
            frames.append(np.concatenate([q, spectral_view(fr, state, q)]) if fr.norm_memory_frames else q)
    features = fb.coef.shape[1] * (2 if fr.norm_memory_frames else 1)
    return np.array(frames, dtype=np.int8).reshape(-1, features)


def spectral_view(fr, state, q):
    q = q.astype(np.int64)
    mean = state.shape_mean
    if q.max() >= fr.norm_active_q:
        n = min(int(state.counters[NORM_COUNT]) + 1, fr.norm_memory_frames)
        state.counters[NORM_COUNT] = n
        mean += (q * 256 - mean) // n
    shape = mean - mean.sum() // mean.size
    return np.clip(q - ((shape + 128) >> 8), -128, 127).astype(np.int8)


def _finish_frame(fr, state):
    w = int(state.counters[RING_INDEX])
    state.ring[w] = state.hop_sum
    state.hop_sum[:] = 0
    state.counters[HOP_FILL] = 0
    state.counters[RING_INDEX] = (w + 1) % fr.window_hops
    window_sum = state.ring.sum(axis=0)
    level = intlog_golden.log2_q16(window_sum.astype(np.uint64) + np.uint64(1), fr.log_table).astype(np.int64)
    level -= fr.full_scale_log
    reference = max(int(state.counters[REFERENCE]) - fr.release_per_frame, int(level.max()), fr.floor_log)
    state.counters[REFERENCE] = reference
    q = OUTPUT_ZERO_POINT + ((level - reference + 2048) >> OUTPUT_SHIFT)
    return np.clip(q, -128, 127).astype(np.int8)
