"""Synthesized sounds that are not speech, for the background class: notes, chords, bells, sweeps and knocks.

A device hears beeps, ringtones, music, door knocks and dishes between the words. Noise alone does not teach a
model that a harmonic sound with a pitch and a vowel-like spectrum is not a word: trained without such sounds, the
shipped network (recipe 8) takes about one recorded chime, instrument or game sound in four for a digit
(docs/models.md, "Sounds that are not speech"). Each maker returns `seconds` of float64 samples at `rate`;
sound_event picks one and sets its peak to 1, and the caller sets the level.
"""
import numpy as np

MAX_PARTIALS = 24


def _times(n: int, rate: int) -> np.ndarray:
    return np.arange(n) / rate


def _unit_peak(x: np.ndarray) -> np.ndarray:
    """x scaled to a peak of 1 (silence stays silence)."""
    return x / (np.abs(x).max() or 1)


def _attack_decay(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Struck or plucked (a fast attack and an exponential decay) or held (a plateau with a short release)."""
    t = _times(n, rate)
    attack = min(n, max(1, int(rng.uniform(0.001, 0.03) * rate)))
    envelope = np.ones(n)
    envelope[:attack] = np.linspace(0, 1, attack)
    if rng.random() < 0.6:
        envelope *= np.exp(-t / rng.uniform(0.04, 0.8))
    else:
        release = min(n, max(1, int(rng.uniform(0.005, 0.05) * rate)))
        envelope[n - release:] *= np.linspace(1, 0, release)
    return envelope


def _resonances(rng: np.random.Generator):
    """A random instrument body: gain (linear) as a function of frequency, one to three resonances 6-20 dB high
    and a third of an octave to an octave wide, or none (half the time)."""
    if rng.random() < 0.5:
        return lambda f: 1.0
    centres = np.exp(rng.uniform(np.log(250), np.log(3500), size=int(rng.integers(1, 4))))
    widths = rng.uniform(0.33, 1.0, size=centres.size) * np.log(2)
    heights = rng.uniform(6, 20, size=centres.size)
    return lambda f: 10 ** (sum(h * np.exp(-0.5 * (np.log(f / c) / w) ** 2)
                                for c, w, h in zip(centres, widths, heights)) / 20)


def note(rng: np.random.Generator, rate: int, seconds: float, f0: float | None = None) -> np.ndarray:
    """One pitched note: a harmonic series (slightly stretched, as a string's is) with a random spectral slope,
    sometimes shaped by an instrument body's resonances, higher partials dying faster, and sometimes vibrato.
    Piano, guitar, whistle, beep, cello and trumpet alike."""
    n = max(1, int(seconds * rate))
    t = _times(n, rate)
    f0 = f0 or np.exp(rng.uniform(np.log(100), np.log(2000)))
    body = _resonances(rng)
    stretch = rng.uniform(0, 1e-3) if rng.random() < 0.5 else 0.0
    slope = rng.uniform(0.5, 3.0)
    vibrato = rng.uniform(0, 0.015) * np.sin(2 * np.pi * rng.uniform(4, 7) * t) if rng.random() < 0.3 else 0.0
    phase = 2 * np.pi * f0 * np.cumsum(1 + vibrato) / rate
    decay = rng.uniform(0.0, 3.0)  # how much faster partial k dies: exp(-decay * (k - 1) * t)
    x = np.zeros(n)
    for k in range(1, MAX_PARTIALS + 1):
        ratio = k * np.sqrt(1 + stretch * k * k)
        if ratio * f0 >= 0.45 * rate:
            break
        gain = k ** -slope * body(ratio * f0) * 10 ** (rng.uniform(-6, 6) / 20)
        x += gain * np.exp(-decay * (k - 1) * t) * np.sin(ratio * phase + rng.uniform(0, 2 * np.pi))
    return x * _attack_decay(rng, n, rate)


def chord(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """Two to four notes struck together, a few semitones apart: a desktop's chimes, a ringtone, a strummed guitar."""
    root = np.exp(rng.uniform(np.log(100), np.log(1200)))
    steps = np.cumsum(rng.integers(2, 8, size=int(rng.integers(1, 4))))  # semitones above the root
    x = note(rng, rate, seconds, root)
    for step in steps:
        x += _unit_peak(note(rng, rate, seconds, root * 2 ** (step / 12))) * rng.uniform(0.4, 1)
    return x


def bell(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """Partials at unrelated frequencies, each decaying on its own: bells, glasses, metal struck."""
    n = max(1, int(seconds * rate))
    t = _times(n, rate)
    x = np.zeros(n)
    for _ in range(int(rng.integers(2, 9))):
        f = np.exp(rng.uniform(np.log(150), np.log(0.45 * rate)))
        gain, decay = rng.uniform(0.2, 1), np.exp(-t / rng.uniform(0.05, 1.5))
        x += gain * decay * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    attack = min(n, max(1, int(0.002 * rate)))
    x[:attack] *= np.linspace(0, 1, attack)
    return x


def sweep(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A tone gliding between two pitches, with a few harmonics: sirens, alarms, interface sounds."""
    n = max(1, int(seconds * rate))
    t = _times(n, rate)
    f_from, f_to = np.exp(rng.uniform(np.log(150), np.log(0.4 * rate), size=2))
    if rng.random() < 0.3:  # a siren goes up and down
        f = f_from + (f_to - f_from) * 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(0.5, 4) * t))
    else:
        f = f_from * (f_to / f_from) ** (t / t[-1] if n > 1 else 0)
    phase = 2 * np.pi * np.cumsum(f) / rate
    x = np.zeros(n)
    for k in range(1, int(rng.integers(1, 5)) + 1):
        fade = np.clip((0.45 * rate - k * f) / (0.05 * rate), 0, 1)  # a partial gliding up fades out, no click
        x += fade * k ** -rng.uniform(0.5, 2) * np.sin(k * phase)
    return x * _attack_decay(rng, n, rate)


def knocks(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """One to six impacts, each a click exciting a few damped resonances: knocks, taps, dishes, footsteps."""
    n = max(1, int(seconds * rate))
    x = np.zeros(n)
    modes = np.exp(rng.uniform(np.log(80), np.log(0.45 * rate), size=int(rng.integers(2, 6))))
    taus = rng.uniform(0.004, 0.08, size=modes.size)
    m = min(n, int(0.4 * rate))
    t = _times(m, rate)
    hit = sum(np.exp(-t / tau) * np.sin(2 * np.pi * f * t) for f, tau in zip(modes, taus))
    click = min(m, max(1, int(0.002 * rate)))
    hit[:click] += rng.standard_normal(click)  # the contact's click
    pos = 0
    for _ in range(int(rng.integers(1, 7))):
        end = min(n, pos + m)
        x[pos:end] += rng.uniform(0.5, 1) * hit[:end - pos]
        pos += int(rng.uniform(0.08, 0.35) * rate)
        if pos >= n:
            break
    return x


def melody(rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """Notes of 0.08-0.6 s one after another, overlapping or not, until the sound's end: jingles, ringtones, chimes,
    a bar of music."""
    n = max(1, int(seconds * rate))
    x = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.08, 0.6) * rate)
        tone = note(rng, rate, length / rate)
        end = min(n, pos + tone.size)
        x[pos:end] += _unit_peak(tone)[:end - pos]
        pos += int(length * rng.uniform(0.5, 1.2))
    return x


MAKERS = (note, chord, bell, sweep, knocks, melody)


def sound_event(rng: np.random.Generator, rate: int) -> np.ndarray:
    """A random non-speech sound of 0.1-2 s, its peak at 1."""
    make = MAKERS[int(rng.integers(len(MAKERS)))]
    return _unit_peak(make(rng, rate, rng.uniform(0.1, 2.0)))
