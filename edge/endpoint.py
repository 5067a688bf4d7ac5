"""End-pointing for isolated words: did the sound fall back to the background after the word?

A digit said on its own is followed by a pause; a syllable that sounds like one inside running speech ("wh-" of
"where" for "one") is not. The detector (setting `end_quiet_ms`) reports an event only when its hops hold a run of
`end_quiet_ms` at or below

    max(word peak - end_quiet_db, background + FLOOR_MARGIN_DB)

where the word peak is the loudest hop from BEFORE_S before the event to its end, and the background the quietest
hop of the last FLOOR_S (a hiss, or steady noise: in noise a pause never gets `end_quiet_db` below the word).

Levels are measured on the input samples, one per hop (the same hops as the front end's frames), in dBFS: the
sum of squares is exact in int64, so the levels, like the frames, do not depend on how the audio is chunked.
"""
from __future__ import annotations

import numpy as np

BEFORE_S = 1.0  # the word: up to a second before the event opens (the model fires near the word's end)
FLOOR_S = 3.0  # the background: the quietest hop of the last three seconds
FLOOR_MARGIN_DB = 6.0  # a hop this close to the background counts as quiet
SILENCE_DBFS = -120.0  # the level of a hop of zeros (log of 0 is not a number)


class HopLevels:
    """Streaming per-hop level meter: int16 samples in, one dBFS value per completed hop out."""

    def __init__(self, hop_samples: int):
        self.hop_samples = int(hop_samples)
        self._full_scale = float(self.hop_samples) * 32768.0**2
        self.reset()

    def reset(self) -> None:
        self._carry = np.zeros(0, dtype=np.int64)  # samples of the hop not yet complete

    def process(self, samples: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._carry, np.asarray(samples, dtype=np.int64)])
        count = len(joined) // self.hop_samples
        hops = joined[: count * self.hop_samples].reshape(count, self.hop_samples)
        self._carry = joined[count * self.hop_samples:]
        energy = np.einsum("ij,ij->i", hops, hops)  # exact: each square is at most 2^30, a hop's sum far below 2^63
        with np.errstate(divide="ignore"):
            levels = 10.0 * np.log10(energy / self._full_scale)
        return np.maximum(levels, SILENCE_DBFS)


def ended_in_quiet(word: np.ndarray, event: np.ndarray, background: np.ndarray, quiet_hops: int,
                   drop_db: float) -> bool:
    """Whether `event` (its hops' levels) holds `quiet_hops` in a row at or below the quiet level.

    `word` is the levels from BEFORE_S before the event to its end, `background` the last FLOOR_S up to its end.
    """
    if quiet_hops <= 0:
        return True
    if len(event) < quiet_hops:
        return False
    quiet_level = max(float(word.max()) - drop_db, float(background.min()) + FLOOR_MARGIN_DB)
    run = 0
    for quiet in (event <= quiet_level).tolist():
        run = run + 1 if quiet else 0
        if run >= quiet_hops:
            return True
    return False
