"""What the input's samples tell of how it is captured, for the run loop to pass on: a live input that gives only
exact zeros (a muted capture, or a microphone on a channel that is not read) and an input that reaches full scale
(its gain is too high). Neither stops a run; both would otherwise cost detections without a word."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# A room is never digitally silent: a live input that gives nothing but zeros this long is muted or mis-wired
SILENCE_WARN_S = 10.0
# A microphone with a noise gate gives such a stretch in every pause of a quiet room: say so once in this much audio
SILENCE_TELL_EVERY_S = 600.0
# Clipping is judged over windows of input, as the bundle hears it. The demo made louder (`sox demo.wav loud.wav
# gain G`; its 10-s windows at 8 kHz): 15 dB, at most 0.97% of a window at full scale, all 20 digits found; 17 dB,
# 0.84-1.35%, 20 and a false alarm; 20 dB, 1.6-2.2%, 18 and 3 false alarms; 30 dB, 5-7%, 12 digits.
CLIP_WINDOW_S = 10.0
CLIP_WARN_SHARE = 0.01
CLIP_TELL_EVERY_S = 600.0  # a gain set too high clips every loud word: say so once in this much audio
FULL_SCALE = 32767  # int16 samples at or beyond this magnitude (either sign) are at full scale


class Notice(NamedTuple):
    text: str
    warning: bool  # a problem to fix (told as a warning), or news that one is over


class _AtMostEvery:
    """A problem that may come back every few seconds is told at most once in `seconds` of audio: the first time
    at once, again only when that much audio has passed since."""

    def __init__(self, seconds: float, rate: int):
        self._least = seconds * rate
        self._since = float("inf")  # samples since it was last told

    def heard(self, samples: int) -> None:
        self._since += samples

    def tell(self) -> bool:
        """Whether to tell it now (and if so, the wait starts again)."""
        if self._since < self._least:
            return False
        self._since = 0
        return True


class InputWatch:
    """Feed it every chunk (int16 at `rate`) as it is processed; `check` returns what to tell, if anything."""

    def __init__(self, source, rate: int):
        self._source = source  # its name may change as it learns its input (a WAV stream's header)
        self._rate = rate
        self._silent = 0  # samples in a row that were all exactly zero
        self._silence_told = False  # in this stretch of zeros
        self._silence_limit = _AtMostEvery(SILENCE_TELL_EVERY_S, rate)
        self._silences_untold = 0  # stretches that reached the limit since the warning was last told
        self._window = self._clipped = 0  # samples in the current clipping window, and how many were at full scale
        self._clip_limit = _AtMostEvery(CLIP_TELL_EVERY_S, rate)

    def check(self, chunk: np.ndarray) -> list[Notice]:
        messages = []
        if self._source.live:
            messages += self._silence(chunk)
        messages += self._clipping(chunk)
        return messages

    def _silence(self, chunk: np.ndarray) -> list[Notice]:
        name = self._source.name
        self._silence_limit.heard(len(chunk))
        if chunk.any():
            told, seconds = self._silence_told, self._silent / self._rate
            self._silent, self._silence_told = 0, False
            news = f"{name} gives sound again, after {seconds:.0f} s of digital silence"
            return [Notice(news, False)] if told else []
        limit = SILENCE_WARN_S * self._rate
        self._silent += len(chunk)
        if not self._silent - len(chunk) < limit <= self._silent:  # judged once a stretch, as it reaches the limit
            return []
        if not self._silence_limit.tell():
            self._silences_untold += 1
            return []
        untold, self._silences_untold, self._silence_told = self._silences_untold, 0, True
        since = (f" (said at most once in {SILENCE_TELL_EVERY_S / 60:g} min of audio: {untold} more such "
                 f"stretch{'' if untold == 1 else 'es'} went unreported since it was last said)" if untold else "")
        return [Notice(f"{name} has given only digital silence (every sample 0) for {SILENCE_WARN_S:g} s, so nothing "
                       "can be heard: is its capture muted or its gain at 0 (`alsamixer`, F4: capture controls), or is "
                       "the microphone on a channel that is not read (open both of a stereo input: `basilar run "
                       "mic:DEVICE --channels 2`)? A microphone with a noise gate gives this in a quiet room too"
                       + since, True)]

    def _clipping(self, chunk: np.ndarray) -> list[Notice]:
        self._window += len(chunk)
        self._clipped += int(np.count_nonzero(chunk >= FULL_SCALE) + np.count_nonzero(chunk <= -FULL_SCALE))
        self._clip_limit.heard(len(chunk))
        if self._window < CLIP_WINDOW_S * self._rate:
            return []
        return self._judge_clipping()

    def finish(self) -> list[Notice]:
        """At the end of the stream: the last part-window (all of an input shorter than a window) is judged too."""
        return self._judge_clipping() if self._window else []

    def _judge_clipping(self) -> list[Notice]:
        share, seconds = self._clipped / self._window, self._window / self._rate
        self._window = self._clipped = 0
        if share < CLIP_WARN_SHARE or not self._clip_limit.tell():
            return []
        fix = ("lower the capture gain (`alsamixer`, F4: capture controls) or move the microphone further from what "
               "it hears" if self._source.live else "record it again with less gain")
        span = f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"  # a short input's: not "0 s"
        return [Notice(f"{self._source.name} reached full scale in {share:.1%} of its samples over {span}: "
                       f"it clips, which flattens the words and costs detections; {fix} (said at most once in "
                       f"{CLIP_TELL_EVERY_S / 60:g} min of audio)", True)]
