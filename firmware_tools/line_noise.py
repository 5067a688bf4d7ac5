"""Deterministic line noise for the serial telemetry tests and `basilar bench telemetry`: corrupt a byte
stream (flipped, dropped and inserted bytes) and tell exactly which frames the corruption touched."""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field


@dataclass
class Corruption:
    """Flip, drop or insert bytes at `rate` per byte within positions [start, stop) of the stream; the
    decisions depend only on the bytes' positions, not on how the stream was chunked."""

    rate: float
    seed: int = 1
    start: int = 0
    stop: int = 1 << 62
    original: bytearray = field(default_factory=bytearray)
    events: list = field(default_factory=list)  # (position in original, "flip" | "drop" | "insert")

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def apply(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            position = len(self.original)
            self.original.append(byte)
            if not self.start <= position < self.stop or self._rng.random() >= self.rate:
                out.append(byte)
                continue
            kind = self._rng.choice(("flip", "drop", "insert"))
            self.events.append((position, kind))
            if kind == "flip":
                out.append(byte ^ (1 << self._rng.randrange(8)))
            elif kind == "insert":
                out.append(self._rng.randrange(256))
                out.append(byte)
        return bytes(out)


def frames_in(stream: bytes) -> list[tuple[int, int, bytes]]:
    """(leading delimiter index, trailing delimiter index, encoded bytes) of every frame in a clean stream."""
    frames, start = [], None
    for i, byte in enumerate(stream):
        if byte == 0:
            if start is not None and i > start + 1:
                frames.append((start, i, bytes(stream[start + 1:i])))
            start = i
    return frames


def touched(spans: list[tuple[int, int]], events) -> set[int]:
    """Indexes of the frames (given as (leading, trailing) delimiter positions) that a corruption event hit:
    a byte of the frame or of its delimiters flipped or dropped, or a byte inserted inside it."""
    insert_at = sorted(p for p, kind in events if kind == "insert")
    change_at = sorted(p for p, kind in events if kind != "insert")
    hit = set()
    for index, (lead, trail) in enumerate(spans):
        if bisect.bisect_right(insert_at, trail) > bisect.bisect_right(insert_at, lead) or \
                bisect.bisect_right(change_at, trail) > bisect.bisect_left(change_at, lead):
            hit.add(index)
    return hit
