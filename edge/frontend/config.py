"""Front-end configuration in physical units, and its stable hash.

A bundle records the hash of the configuration its model was trained with; the device refuses to pair the
model with frames made any other way. The hash covers every field and FRONTEND_ALGORITHM, so a change to the
integer algorithm itself also invalidates old bundles.
"""
import dataclasses
import hashlib
import json
import math
import numbers

# Bump when the integer pipeline changes in a way that changes frames for the same configuration.
FRONTEND_ALGORITHM = "basilar-gammatone-int-v3"

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
MIN_CHANNELS, MAX_CHANNELS = 8, 128
# The default releases 10 dB/s; at 10,000 dB/s the reference already falls 100 dB per 10 ms hop, so nothing faster
# is useful. Unbounded, the release per frame (Q16 log2, int64 in the kernel) overflows; bounded, it stays under
# 2^27 per second of hop, far from int64 for any hop whose int64 window sums can be held at all.
MAX_RELEASE_DB_PER_S = 10000.0
# Rounding noise grows as a channel's poles near z = 1: the tests hold every channel to 80 dB of accuracy against
# the float filters, which a 20 Hz channel at 48 kHz misses (77 dB); at sample_rate / 1600 Hz (30 Hz) it keeps 82.
F_LOW_RATE_DIVISOR = 1600
MAX_HOP_MS = 1000.0  # a frame a second at least: longer hops hear nothing a detector can use
# The spectral view's running average moves by floor((256 q - M) / n): the longer its memory n, the further the
# flooring pulls it down (about +-0.5 dB of shape error at 1,000 frames, 1.4 dB at 10,000), so n stays at this.
MAX_SPECTRAL_MEMORY_FRAMES = 1000
MIN_SPECTRAL_NORM_S, MAX_SPECTRAL_NORM_S = 0.1, 10.0
INT_FIELDS = ("sample_rate", "channels")
FLOAT_FIELDS = ("f_low", "f_high", "hop_ms", "window_ms", "release_db_per_s", "floor_dbfs", "spectral_norm_s")


class FrontendConfigError(ValueError):
    """A configuration the front end cannot run; the message says which field and how to fix it."""


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000  # Hz
    channels: int = 32  # gammatone channels, equally spaced on the ERB-rate scale
    f_low: float = 100.0  # Hz, centre frequency of the lowest channel
    f_high: float = 7000.0  # Hz, upper end of the ERB-rate span (the top channel sits one step below)
    hop_ms: float = 10.0  # one frame per hop
    window_ms: float = 20.0  # envelope integration window; a whole number of hops
    release_db_per_s: float = 10.0  # level normaliser: how fast the reference level falls after a peak
    floor_dbfs: float = -70.0  # level normaliser: the reference never falls below this level
    # Spectral view: when > 0, each frame also carries its channels minus the running average spectral shape of
    # the last this-many seconds of sound (a voice's and a microphone's colour, removed causally); 0 = off.
    spectral_norm_s: float = 0.0

    def __post_init__(self):
        # NumPy's numbers (a rate read with np.int64, a level in np.float32) as Python's of the same value, so that
        # the configuration validates, hashes and writes to JSON (np.float32(1.28) is 1.2799999713897705)
        for names, kind, to in ((INT_FIELDS, numbers.Integral, int), (FLOAT_FIELDS, numbers.Real, float)):
            for name in names:
                value = getattr(self, name)
                if isinstance(value, kind) and not isinstance(value, bool):
                    object.__setattr__(self, name, to(value))
        self.validate()

    def validate(self) -> None:
        def fail(msg):
            raise FrontendConfigError(msg)

        if not isinstance(self.sample_rate, int) or not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            fail(f"sample_rate={self.sample_rate!r}: use an integer rate from {MIN_SAMPLE_RATE} to "
                 f"{MAX_SAMPLE_RATE} Hz (resample the audio to it first)")
        if not isinstance(self.channels, int):  # 32.0 too: a count of filters
            fail(f"channels={self.channels!r}: must be a whole number (an int), {MIN_CHANNELS} to {MAX_CHANNELS}")
        if not MIN_CHANNELS <= self.channels <= MAX_CHANNELS:
            fail(f"channels={self.channels!r}: use {MIN_CHANNELS} to {MAX_CHANNELS} channels")
        for name in FLOAT_FIELDS:
            if not isinstance(getattr(self, name), float):
                fail(f"{name}={getattr(self, name)!r}: must be a number")
            if not math.isfinite(getattr(self, name)):
                fail(f"{name}={getattr(self, name)!r}: must be a finite number")
        nyquist = self.sample_rate / 2
        if not 20.0 <= self.f_low < self.f_high:
            fail(f"f_low={self.f_low} Hz: must be at least 20 Hz and below f_high={self.f_high} Hz")
        if self.f_high >= nyquist:
            fail(f"f_high={self.f_high} Hz is at or above Nyquist ({nyquist:g} Hz for sample_rate="
                 f"{self.sample_rate}): lower f_high or raise sample_rate")
        hop = self.sample_rate * self.hop_ms / 1000
        if not 0 < self.hop_ms <= MAX_HOP_MS:
            fail(f"hop_ms={self.hop_ms}: use a hop above 0 and at most {MAX_HOP_MS:g} ms (10 ms is usual)")
        if abs(hop - round(hop)) > 1e-9 or round(hop) < 1:
            fail(f"hop_ms={self.hop_ms}: must give a whole number of samples at {self.sample_rate} Hz "
                 f"(got {hop:.12g}); 10 ms works for every rate that is a multiple of 100 Hz")
        hops = self.window_ms / self.hop_ms
        if hops < 1 or abs(hops - round(hops)) > 1e-9 or round(hops) > 16:
            fail(f"window_ms={self.window_ms}: must be 1 to 16 whole hops of hop_ms={self.hop_ms}")
        if not 0 < self.release_db_per_s <= MAX_RELEASE_DB_PER_S:
            fail(f"release_db_per_s={self.release_db_per_s}: use a release above 0 and at most "
                 f"{MAX_RELEASE_DB_PER_S:g} dB/s (that already drops the reference 100 dB per 10 ms hop)")
        if not -120 <= self.floor_dbfs <= -10:
            fail(f"floor_dbfs={self.floor_dbfs}: use a level from -120 to -10 dBFS")
        if self.spectral_norm_s != 0 and not MIN_SPECTRAL_NORM_S <= self.spectral_norm_s <= MAX_SPECTRAL_NORM_S:
            fail(f"spectral_norm_s={self.spectral_norm_s}: use 0 (off) or {MIN_SPECTRAL_NORM_S:g} to "
                 f"{MAX_SPECTRAL_NORM_S:g} seconds")
        # The average's memory is spectral_norm_s in whole hops; under one hop it would round to 0 frames and the
        # view would silently be off while config.features still counted it.
        if self.spectral_norm_s != 0 and self.spectral_norm_s * 1000 < self.hop_ms * (1 - 1e-9):
            fail(f"spectral_norm_s={self.spectral_norm_s}: shorter than one hop (hop_ms={self.hop_ms}); use at least "
                 f"{self.hop_ms / 1000:g} s or a shorter hop")

    def design_problems(self) -> list[str]:
        """What makes this configuration a poor one to design with, though it runs exactly: `basilar train` and
        `basilar frontend` refuse it, while a bundle recorded with it still loads as before."""
        problems = []
        lowest = max(20.0, self.sample_rate / F_LOW_RATE_DIVISOR)
        if self.f_low < lowest:
            problems.append(f"f_low={self.f_low} Hz: at sample_rate={self.sample_rate} use at least {lowest:g} Hz; "
                            "lower channels lose the integer filters' 80 dB of accuracy")
        memory_frames = round(self.spectral_norm_s * 1000 / self.hop_ms)
        longest = MAX_SPECTRAL_MEMORY_FRAMES * self.hop_ms / 1000
        if memory_frames > MAX_SPECTRAL_MEMORY_FRAMES:
            problems.append(f"spectral_norm_s={self.spectral_norm_s}: {memory_frames} hops of hop_ms={self.hop_ms}; "
                            f"its integer average stays true over at most {MAX_SPECTRAL_MEMORY_FRAMES} hops: "
                            + (f"use at most {longest:g} s or a longer hop" if longest >= MIN_SPECTRAL_NORM_S
                               else f"use a hop of at least {MIN_SPECTRAL_NORM_S * 1000 / MAX_SPECTRAL_MEMORY_FRAMES:g}"
                                    " ms"))
        return problems

    @property
    def features(self) -> int:
        """Values per frame: the channels, and as many again when the spectral view is on."""
        return self.channels * (2 if self.spectral_norm_s else 1)

    @property
    def hop_samples(self) -> int:
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def window_hops(self) -> int:
        return round(self.window_ms / self.hop_ms)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_samples

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrontendConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FrontendConfigError(f"unknown front-end field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def hash(self) -> str:
        """Hex SHA-256 of the canonical configuration and the algorithm version."""
        canonical = {"algorithm": FRONTEND_ALGORITHM}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # f_low=100 and f_low=100.0 are the same configuration: float fields always hash as floats (and
            # + 0.0 makes a -0.0, which configures the same, hash as 0.0).
            canonical[field.name] = float(value) + 0.0 if field.type in (float, "float") else value
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()
