"""Streaming state of the integer front end: everything that changes sample by sample, preallocated once."""
import dataclasses

import numpy as np

from edge.frontend.design import FrontendCoeffs

HOP_FILL, RING_INDEX, REFERENCE, NORM_COUNT = 0, 1, 2, 3  # slots of FrontendState.counters


@dataclasses.dataclass
class FrontendState:
    filter: np.ndarray  # int32 (12, C): per section its last two outputs (ping-pong) and error residue
    filter_io: np.ndarray  # int32 (2,): previous input sample (shifted), ping-pong parity
    last_output: np.ndarray  # int32 (2 * C,): the filter outputs of the latest two samples (work rows)
    hop_sum: np.ndarray  # int64 (C,): rectified sum over the hop so far
    ring: np.ndarray  # int64 (window_hops, C): the last hop sums
    counters: np.ndarray  # int64 (4,): samples into the hop, ring index, normaliser reference (Q16 log2),
    #                       active frames counted into the average shape (spectral view)
    shape_mean: np.ndarray  # int64 (C,): spectral view's average q per channel, Q8

    @classmethod
    def initial(cls, coeffs: FrontendCoeffs) -> "FrontendState":
        channels = coeffs.filterbank.b1.size
        frames = coeffs.frames
        state = cls(
            filter=np.zeros((12, channels), np.int32),
            filter_io=np.zeros(2, np.int32),
            last_output=np.zeros(2 * channels, np.int32),
            hop_sum=np.zeros(channels, np.int64),
            ring=np.zeros((frames.window_hops, channels), np.int64),
            counters=np.zeros(4, np.int64),
            shape_mean=np.zeros(channels, np.int64),
        )
        state.counters[REFERENCE] = frames.floor_log
        return state

    def copy(self) -> "FrontendState":
        return FrontendState(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})
