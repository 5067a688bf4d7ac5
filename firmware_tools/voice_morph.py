"""In-between voices: a word said by two training speakers, morphed with the WORLD vocoder into a voice between
theirs (`basilar train --morphs N`).

More real speakers are what every held-out figure lacks most (docs/models.md). Both takes are analysed with WORLD
(pyworld: F0, spectral envelope, aperiodicity in 5-ms frames), aligned by dynamic time warping on their log
envelopes, and resynthesised with the log envelope, the aperiodicity and the log F0 mixed by a weight w; the timing
and voicing are those of the speaker w favours. Host only: pyworld is in the `host` extra.
"""
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import soxr

from firmware_tools import dataset

FRAME_MS = 5.0
# WORLD's aperiodicity (D4C) needs 12 kHz or more: below, it has no band to measure and its voicing check reads
# memory it never wrote, so the same clip analyses differently from run to run (mmorise/World issues 49 and 154).
# Clips at lower rates are analysed and resynthesised at 16 kHz.
ANALYSIS_RATE = 16000
ENVELOPE_BANDS = 24  # log-spaced bands of the envelope the alignment compares
WEIGHTS = (0.3, 0.7)  # how far between the two voices a morph lies; never nearly one of them
MORPH_SPEAKER = "mix"  # a morph's speaker is "mix" and the two speakers' initials: "mixjt"


@dataclasses.dataclass(frozen=True)
class Morph:
    """One in-between word to make: `timing` (the speaker w favours, whose timing is kept) moved w of the way
    towards `other`."""
    label: str
    timing: dataset.Clip
    other: dataset.Clip
    weight: float
    speaker: str  # "mix" and the two speakers' initials
    name: str  # the file name: {label}_{speaker}_{k}.wav

    def record(self) -> dict:
        """What the morph is made of; its sources' size and modification time too, so that a clip replaced under
        the same name makes the morph again."""
        return {"label": self.label, "timing": str(self.timing.path), "other": str(self.other.path),
                "weight": self.weight, "sources": [source_identity(self.timing.path),
                                                   source_identity(self.other.path)]}


def source_identity(path: Path) -> list[int]:
    """A source clip's size and modification time in ns (what the feature cache keys a clip by, and its size)."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def take_order(clip: dataset.Clip) -> list:
    """Takes in their numbered order (7_jackson_2 before 7_jackson_10), so that a seed draws the same take
    whatever the listing's order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", clip.path.name)]


def initials(speakers: list[str]) -> dict[str, str]:
    """The shortest equally long prefixes that tell the speakers apart."""
    for length in range(1, max(map(len, speakers), default=0) + 1):
        prefixes = {s: s[:length] for s in speakers}
        if len(set(prefixes.values())) == len(speakers):
            return prefixes
    return {s: s for s in speakers}


def draw_morphs(clips: list[dataset.Clip], labels: list[str], per_label: int, seed: int) -> list[Morph]:
    """per_label morphs of each label that at least two speakers said: two of them drawn at random, a take of each
    and a weight. Clips of no known speaker are never drawn."""
    takes: dict[tuple[str, str], list[dataset.Clip]] = {}
    for clip in clips:
        if clip.speaker != dataset.UNKNOWN_SPEAKER:
            takes.setdefault((clip.label, clip.speaker), []).append(clip)
    for group in takes.values():
        group.sort(key=take_order)
    names = initials(sorted({speaker for _, speaker in takes}))
    rng = np.random.default_rng(seed)
    morphs = []
    for label in labels:
        speakers = sorted(speaker for lab, speaker in takes if lab == label)
        if len(speakers) < 2:
            continue
        for k in range(per_label):
            a, b = rng.choice(speakers, 2, replace=False)
            w = rng.uniform(*WEIGHTS)
            if w > 0.5:  # the timing is the favoured speaker's
                a, b, w = b, a, 1 - w
            clip_a = takes[label, a][rng.integers(len(takes[label, a]))]
            clip_b = takes[label, b][rng.integers(len(takes[label, b]))]
            speaker = f"{MORPH_SPEAKER}{names[a]}{names[b]}"
            morphs.append(Morph(label, clip_a, clip_b, float(w), speaker, f"{label}_{speaker}_{k}.wav"))
    return morphs


def log_bands(envelope: np.ndarray) -> np.ndarray:
    """The log spectral envelope in ENVELOPE_BANDS log-spaced bands: what the alignment compares."""
    edges = np.unique(np.round(np.geomspace(2, envelope.shape[1] - 1, ENVELOPE_BANDS + 1)).astype(int))
    return np.stack([np.log(envelope[:, lo:hi].mean(1) + 1e-12) for lo, hi in zip(edges[:-1], edges[1:])], 1)


def align(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each frame of a, the last frame of b that dynamic time warping pairs with it (squared distance)."""
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    total = np.full((len(a) + 1, len(b) + 1), np.inf)
    total[0, 0] = 0
    for i in range(1, len(a) + 1):
        row, prev = total[i], total[i - 1]
        for j in range(1, len(b) + 1):
            row[j] = cost[i - 1, j - 1] + min(prev[j], row[j - 1], prev[j - 1])
    i, j, path = len(a), len(b), []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = np.argmin([total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]])
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    match = np.zeros(len(a), int)
    for i, j in reversed(path):
        match[i] = j
    return match


class Analyser:
    """WORLD analyses of clips, each made once however many morphs use it."""

    def __init__(self, rate: int):
        self.rate = rate
        self.done: dict[Path, tuple] = {}

    def __call__(self, clip: dataset.Clip) -> tuple:
        """(audio at the training rate, F0, envelope, aperiodicity at analysis_rate(rate))."""
        import pyworld

        if clip.path not in self.done:
            audio = dataset.read_labelled_clip(clip, self.rate)
            rate = analysis_rate(self.rate)
            wide = soxr.resample(audio, self.rate, rate) if rate != self.rate else audio
            f0, envelope, aperiodicity = pyworld.wav2world(np.ascontiguousarray(wide), rate, frame_period=FRAME_MS)
            self.done[clip.path] = (audio, f0, envelope, aperiodicity)
        return self.done[clip.path]


def analysis_rate(rate: int) -> int:
    return max(rate, ANALYSIS_RATE)


def morph_audio(a: tuple, b: tuple, weight: float, rate: int) -> np.ndarray:
    """The in-between word as int16 at rate, as long and as loud (RMS) as a; a and b are Analyser results."""
    import pyworld

    audio_a, f0_a, env_a, ap_a = a
    _, f0_b, env_b, ap_b = b
    match = align(log_bands(env_a), log_bands(env_b))
    envelope = np.exp((1 - weight) * np.log(env_a + 1e-12) + weight * np.log(env_b[match] + 1e-12))
    aperiodicity = np.clip((1 - weight) * ap_a + weight * ap_b[match], 0, 1)
    f0 = f0_a.copy()
    voiced = (f0_a > 0) & (f0_b[match] > 0)  # elsewhere a's voicing, unvoiced frames included
    f0[voiced] = np.exp((1 - weight) * np.log(f0_a[voiced]) + weight * np.log(f0_b[match][voiced]))
    wide_rate = analysis_rate(rate)
    out = pyworld.synthesize(f0, envelope, aperiodicity, wide_rate, FRAME_MS)
    if wide_rate != rate:
        out = soxr.resample(out, wide_rate, rate)
    out = np.pad(out, (0, max(0, len(audio_a) - len(out))))[:len(audio_a)]
    out *= np.sqrt(np.mean(audio_a ** 2) / max(np.mean(out ** 2), 1e-12))
    out *= min(1.0, 0.99 / max(np.abs(out).max(), 1e-9))
    return np.round(out * 32767).astype(np.int16)


def make_morphs(morphs: list[Morph], folder: Path, rate: int, progress=lambda it, desc, total: it) -> list:
    """Write the morphs as 16-bit WAV files in folder (with morphs.json, what each was made of) and return them as
    clips. A file already there from the same draw is kept, so a second training with the same settings reuses
    both it and the features cached from it."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "morphs.json"
    try:
        before = json.loads(listing.read_text())
    except (OSError, ValueError):
        before = {}
    analyse, made, clips = Analyser(rate), {}, []
    for morph in progress(morphs, "morphs", len(morphs)):
        if analyse.done and morph.label != clips[-1].label:  # a label's analyses are done with (about 1 MB a clip)
            analyse = Analyser(rate)
        path, record = folder / morph.name, {**morph.record(), "rate": rate}
        if before.get(morph.name) != record or not path.is_file():
            path.unlink(missing_ok=True)
            audio = morph_audio(analyse(morph.timing), analyse(morph.other), morph.weight, rate)
            soundfile.write(path, audio, rate, subtype="PCM_16")
        made[morph.name] = record
        clips.append(dataset.Clip(path, morph.label, morph.speaker))
    for stale in set(before) - set(made):
        (folder / stale).unlink(missing_ok=True)
    listing.write_text(json.dumps(made, indent=1) + "\n")
    return clips
