"""End-pointing for isolated words: did the sound fall back to the background after the word?

A digit said on its own is followed by a pause; a syllable that sounds like one inside running speech ("wh-" of
"where" for "one") is not. The detector (setting `end_quiet_ms`) reports an event only when its hops hold a run of
`end_quiet_ms` at or below

    max(word peak - end_quiet_db, background + FLOOR_MARGIN_DB)

where the word peak is the loudest hop from BEFORE_S before the event to its end, and the background the quietest
hop of the last FLOOR_S (a hiss, or steady noise: in noise a pause never gets `end_quiet_db` below the word).
In a reverberant room the word rings on: its tail may stay 15-25 dB under the word for most of a second. Where an
event holds no quiet pause, the detector looks for one in which a hop also counts as quiet when it is in such a
tail: at least TAIL_DROP_DB under the word peak, and never more than TAIL_RISE_DB above the lowest level since the
pause began (a tail only decays; the next word rises out of it). The tail is judged on levels smoothed over
TAIL_SMOOTH_HOPS hops, since one hop of a noise-like tail swings by several dB. A quiet pause is looked for first
because it marks the word's end more closely (a tail starts under the word's own fading end).
A word the model is all but certain of (SURE_SCORE) needs only SURE_PAUSE_SHARE of that pause: a digit-like
syllable in running speech seldom scores so high, and a real digit may be followed closely by the next word.
The same levels say where the word is: it ends where that pause begins, and begins where the loud stretch before
the event's onset rose out of WORD_GAP_S of quiet or more (`sound_start`), so a detection carries the word's own
times rather than those of the model's certainty, which comes near the word's end.

Levels are measured on the input samples, one per hop (the same hops as the front end's frames), in dBFS: the
sum of squares is exact in int64, so the levels, like the frames, do not depend on how the audio is chunked.
"""
from __future__ import annotations

import numpy as np

BEFORE_S = 1.0  # the word: up to a second before the event opens (the model fires near the word's end)
FLOOR_S = 3.0  # the background: the quietest hop of the last three seconds
FLOOR_MARGIN_DB = 6.0  # a hop this close to the background counts as quiet
SURE_SCORE = 0.99  # a word the model is this sure of (its peak smoothed score) ...
SURE_PAUSE_SHARE = 2 / 3  # ... needs only this share of the pause (100 of 150 ms): words follow closely in speech
# After a pause, a rise this far over the quiet level is the next word, not a stop's release after its closure
# (the "t" of "eight"), which stays near the quiet level.
NEW_WORD_RISE_DB = 6.0
WORD_GAP_S = 0.08  # a word begins after this much quiet or more; a shorter dip is inside it
TAIL_DROP_DB = 18.0  # a room's tail: at least this far under the word ...
TAIL_RISE_DB = 2.0  # ... and never rising more than this above its lowest level so far
TAIL_SMOOTH_HOPS = 3  # the tail's level: the mean energy of a hop and the two before it
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


def quiet_level(word: np.ndarray, background: np.ndarray, drop_db: float) -> float:
    """The level (dBFS) at or below which a hop is quiet: `drop_db` under the word's loudest hop, or within
    FLOOR_MARGIN_DB of the background (in steady noise a pause never falls `drop_db` under the word)."""
    return max(float(word.max()) - drop_db, float(background.min()) + FLOOR_MARGIN_DB)


def smoothed(levels: np.ndarray, hops: int = TAIL_SMOOTH_HOPS) -> np.ndarray:
    """Each hop's level over the mean energy of it and the `hops` - 1 hops before it (fewer at the start)."""
    energy = 10.0 ** (np.asarray(levels, dtype=np.float64) / 10.0)
    total, count = energy.copy(), np.ones(len(energy))
    # Summed window by window: a differenced running sum would lose a quiet hop after a loud one to rounding.
    for back in range(1, min(hops, len(energy))):
        total[back:] += energy[:-back]
        count[back:] += 1
    return 10.0 * np.log10(total / count)


def pause_start(event: np.ndarray, quiet: float, quiet_hops: int, tail: np.ndarray | None = None,
                tail_top: float = -np.inf) -> int | None:
    """The index in `event` (its hops' levels) of the first hop of its first `quiet_hops` quiet hops in a row (where
    the word ended); None if it has no such pause. A hop is quiet if its level is at most `quiet`, or if `tail` (the
    same hops' smoothed levels) is at most `tail_top` and no more than TAIL_RISE_DB above its lowest value since the
    pause began: a room's decaying tail."""
    tail = np.full(len(event), np.inf) if tail is None else tail
    run, lowest = 0, np.inf
    for i, (level, tail_level) in enumerate(zip(event.tolist(), tail.tolist())):
        if level <= quiet or (tail_level <= tail_top and tail_level <= lowest + TAIL_RISE_DB):
            run += 1
        elif tail_level <= tail_top:  # under the word, but risen: a new sound, whose own decay may start a pause
            run, lowest = 1, np.inf
        else:
            run, lowest = 0, np.inf
        lowest = min(lowest, tail_level) if run else np.inf
        if run >= quiet_hops:
            return i - quiet_hops + 1
    return None


def sound_start(before: np.ndarray, quiet: float, gap_hops: int = 1) -> int:
    """Where the word that the model fired on began: the index in `before` (the levels of the hops up to the event's
    onset) of the first hop of its last loud stretch, loud stretches being apart by `gap_hops` quiet hops or more
    (a shorter dip, a stop's closure or the fading end of a vowel, is part of the word). The model fires near a
    word's end, and may fire only once the pause after it has begun, so the quiet hops just before the onset are
    passed over. len(before) if none is loud."""
    loud = np.flatnonzero(before > quiet)
    if len(loud) == 0:
        return len(before)
    apart = np.flatnonzero(np.diff(loud) > gap_hops)  # at least gap_hops quiet hops between two loud ones
    return int(loud[apart[-1] + 1]) if len(apart) else int(loud[0])
