"""Training data: labelled clips, synthesized negatives, augmentation, and front-end features.

Every example is a stretch of audio run through the real integer front end (bit-exact with the device), so the
model trains on exactly the frames it will see. An example is a sequence of SEQ_FRAMES frames with a target per
frame: the background class before a word, the word's label around its end, and nothing (weight 0) elsewhere.
"""
import dataclasses
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import soundfile
import soxr

from edge.frontend import Frontend, FrontendConfig
from edge.sources import declared_frames, frames_to_play
from edge.wav_header import TrueSizeWav, empty_problem, length_problem, libsndfile_input
from firmware_tools.sound_events import sound_event

BACKGROUND = "_background_"
RECIPE = 7  # bump when example generation changes, so cached features are rebuilt
SEQ_FRAMES = 192  # frames per training example (1.92 s at 10 ms)
CONTEXT_FRAMES = 64  # the first frames of an example only give the model its past: no loss there
EARLIEST_WORD_END = CONTEXT_FRAMES + 40  # a word in a stream of sound ends this many frames or more into its example
LABEL_BEFORE_END_S = 0.10  # a word's label is the target from this long before its end ...
LABEL_AFTER_END_S = 0.30  # ... until this long after it
AFTER_WORD_GAP_S = 0.20  # then no loss for this long, then background
EVAL_LEAD_S, EVAL_TAIL_S = 0.2, 0.6  # silence around a clip when a clip is classified (train and eval alike)
ROOM_SHARE = 0.3  # of all examples, words and background alike: heard in a random reverberant room
NOISE_FLOOR_SHARE = 0.5  # of the examples with quiet around the word: a steady noise floor, not digital silence
# The file names the scan takes for audio: the common extensions of the formats libsndfile (soundfile) reads here.
FORMAT_SUFFIXES = {"WAV": (".wav", ".wave"), "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",),
                   "AIFF": (".aiff", ".aif", ".aifc"), "AU": (".au", ".snd"), "CAF": (".caf",), "W64": (".w64",),
                   "RF64": (".rf64",)}
AUDIO_SUFFIXES = tuple(suffix for fmt, suffixes in FORMAT_SUFFIXES.items() if fmt in soundfile.available_formats()
                       for suffix in suffixes)
# Audio that libsndfile does not read here (what phones and music players record, and the formats above this
# libsndfile lacks): not clips, but named, so that nobody thinks they were trained on.
OTHER_AUDIO_SUFFIXES = (".m4a", ".aac", ".wma", ".amr", ".3gp") + tuple(
    suffix for suffixes in FORMAT_SUFFIXES.values() for suffix in suffixes if suffix not in AUDIO_SUFFIXES)
CONVERT_ADVICE = "convert them to WAV, e.g. `ffmpeg -i IN.m4a OUT.wav` (sox reads .m4a only with a plugin)"
NOISE_COLOURS = ("white", "pink", "brown")  # what coloured_noise makes
# The kinds of background and their shares, without and with sound events (recipe 8 and recipe 9, whose events take
# their share from steady noise, speech and bursts).
BACKGROUND_KINDS = {
    False: (["silence", "noise", "speech", "bursts", "speech+bursts"], [0.1, 0.2, 0.4, 0.15, 0.15]),
    True: (["silence", "noise", "speech", "bursts", "speech+bursts", "events", "speech+events"],
           [0.1, 0.15, 0.35, 0.1, 0.1, 0.1, 0.1]),
}
# What copying a folder from a Mac or unpacking its zip leaves beside the audio: AppleDouble `._name.wav` files
# (metadata with an audio file's name), `__MACOSX/` trees of them, `.Trashes/`.
SYSTEM_FOLDER_NAMES = ("__MACOSX",)


def is_hidden(path: Path, root: Path) -> bool:
    """A hidden file, or a file in a hidden or system folder under root: nothing someone put there."""
    return any(p.startswith(".") or p in SYSTEM_FOLDER_NAMES for p in path.relative_to(root).parts)


def is_user_audio(path: Path, root: Path) -> bool:
    """An audio file someone put under root, not a hidden file or a file in a hidden or system folder."""
    return path.suffix.lower() in AUDIO_SUFFIXES and not is_hidden(path, root) and path.is_file()

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
ESPEAK_VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+klatt"]
FLITE_VOICES = ["kal", "awb", "rms", "slt"]
NON_TARGET_TEXT = [
    "the weather looks good today", "please open the window", "where did you put the keys",
    "this is a very quiet room", "turn left at the next corner", "the coffee is still hot",
    "we should leave before dark", "can you hear the birds outside", "my brother plays the piano",
    "hello there how are you", "the train was late again", "put the book on the table",
    "yes of course", "no thank you", "maybe later", "good morning everybody", "let us go home",
    "the cat is sleeping on the sofa", "bring me a glass of water", "that sounds like a plan",
    "the meeting starts soon", "listen carefully", "what a beautiful garden", "close the door please",
    "I like green apples", "the river is very wide", "she reads a lot of books", "help me with this box",
    "the music is too loud", "we went to the market", "thank you very much", "see you tomorrow",
]

# Random strings of these give the background class far more syllables than any phrase list (see the file's header).
NON_TARGET_WORDS = [w for w in (Path(__file__).with_name("non_target_words.txt").read_text().split("\n"))
                    if w and not w.startswith("#")]


@dataclasses.dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    speaker: str


UNKNOWN_SPEAKER = "unknown"  # a clip whose name does not say who speaks: always trained on, never held out


def files_under(root: Path, skip=()) -> list[Path]:
    """Every file under root, sorted, following links to folders (a label folder may be one; `Path.rglob` passes
    them by without a word) but never a link back up into a folder it is already in, nor into a folder of `skip`.
    A link to nothing is listed as a file."""
    files, ancestors = [], {str(root): {os.path.realpath(root)}}
    skipped = {os.path.realpath(folder) for folder in skip}
    for folder, dirs, names in os.walk(root, followlinks=True):
        above = ancestors.pop(folder)
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(folder, name))
            if real not in above and real not in skipped:  # a loop otherwise
                ancestors[os.path.join(folder, name)] = above | {real}
                kept.append(name)
        dirs[:] = kept
        files += [Path(folder) / name for name in names]
    return sorted(files)


def label_folder_around(root, folder, written=()) -> Path | None:
    """The label folder under root that folder is or is inside (`data/zero` for `data/zero/model`), following links
    as files_under does; None when it is in none (root itself, beside root, a folder of root holding no clips).
    written: folders of audio the run writes itself (OUT/morphs), which make no label folder."""
    root, real = Path(root), os.path.realpath(folder)
    if not root.is_dir():
        return None
    for candidate in sorted(path for path in root.iterdir() if path.is_dir() and not is_hidden(path, root)):
        inside = os.path.realpath(candidate)
        if (real == inside or real.startswith(inside + os.sep)) and any(
                is_user_audio(path, root) for path in files_under(candidate, written)):
            return candidate
    return None


def scan_labelled(data_dir, skip=(), warn=None) -> list[Clip]:
    """Audio files labelled by the sub-folder they are in (the first folder under data_dir: `yes/alice/1.wav` is
    "yes") or, directly in data_dir, by a leading `{label}_` in the file name.

    A name `{label}_{speaker}_{take}` (`7_jackson_12.wav`, `glass_break/glass_break_alice_0.wav`) names the
    speaker; any other is UNKNOWN_SPEAKER (never the folder: that is the label, and holding it out would hold out a
    whole class). skip: folders under data_dir not to read (what a training writes there); warn: a function told
    of audio files left out for their format.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of labelled audio files")
    clips, not_audio, other_audio = [], {}, []
    flat_by_parts = {}  # a name directly in root for each count of `_` in names there
    for path in files_under(root, skip):
        hidden = is_hidden(path, root)
        # A link to nothing where a clip or a whole label folder would be (os.walk lists a folder's as a file)
        if path.is_symlink() and not path.exists() and (path.suffix.lower() in AUDIO_SUFFIXES or not hidden):
            raise ValueError(f"{path} is a link to nothing (what it pointed at is gone); mend the link or remove it")
        if hidden:
            continue
        # One form of each name: a Mac writes "ü" as u and a combining mark, which would make another label (and
        # a folder in one form holding a file named in the other would lose its speaker)
        *folders, name = (unicodedata.normalize("NFC", part) for part in path.relative_to(root).parts)
        if not is_user_audio(path, root):
            if folders:  # by the label folder it is in
                not_audio.setdefault(path.relative_to(root).parts[0], []).append(path)
            if path.suffix.lower() in OTHER_AUDIO_SUFFIXES:
                other_audio.append(path)
            continue
        stem = Path(name).stem
        if folders:
            label = folders[0]
            if stem.startswith(label + "_"):
                rest = stem[len(label) + 1:]
            else:  # another name for the label (zero/0_jackson_0.wav): {word}_{speaker}_{take}, exactly
                parts = stem.split("_")
                rest = "_".join(parts[1:]) if len(parts) == 3 else ""
        else:
            label, underscore, rest = stem.partition("_")
            if not underscore or not label:  # skipped without a word, it would be missing from every figure
                raise ValueError(f"{path}: a file directly in {root} is labelled by the start of its name, "
                                 "`{label}_...`, and this one has none; rename it, put it in a sub-folder named "
                                 "by its label, or move it out")
            if stem.count("_") > 2:  # `lights_on_erin_0`: the label "lights", spoken by "on"?
                raise ValueError(f"{path}: a name directly in {root} is read as LABEL_SPEAKER_TAKE, and this one has "
                                 "more parts, so its label is unclear (a label or a take holding `_`); put the files "
                                 f"in one sub-folder per label, which names it: {root}/LABEL/{path.name}")
            flat_by_parts.setdefault(stem.count("_"), path)
        if label == BACKGROUND:
            raise ValueError(f"{path}: the label {BACKGROUND} is reserved for the background class that training "
                             "makes itself; rename the folder to the word it holds, or move it out of "
                             f"{root} (recordings of no target word go to --speech-dir)")
        speaker, underscore, take = rest.partition("_")
        speaker = speaker if speaker and underscore and take else UNKNOWN_SPEAKER
        clips.append(Clip(path, label, speaker))
    refuse_folders_without_audio(root, not_audio, {c.path.relative_to(root).parts[0] for c in clips})
    if 1 in flat_by_parts and 2 in flat_by_parts:  # `stop_1.wav` beside `lights_on_1.wav`: "lights" said by "on"?
        two, three = flat_by_parts[1].name, flat_by_parts[2].name
        raise ValueError(f"the names directly in {root} mix LABEL_TAKE ({two}) and LABEL_SPEAKER_TAKE ({three}), so "
                         f"a label holding `_` cannot be told from a speaker ({three}: the label "
                         f"{three.split('_')[0]!r} said by {three.split('_')[1]!r}?); name every file one way, or put "
                         f"the files in one sub-folder per label, which names it: {root}/LABEL/{three}")
    if other_audio and warn:
        warn(f"warning: {len(other_audio)} audio file(s) under {root} in a format not read here are left out "
             f"({other_audio[0]}{', ...' if len(other_audio) > 1 else ''}); {CONVERT_ADVICE}")
    if not clips:
        raise ValueError(f"no labelled audio in {root}: name files `{{label}}_....wav` or put them in one "
                         f"sub-folder per label ({', '.join(AUDIO_SUFFIXES)})")
    return clips


def refuse_folders_without_audio(root: Path, not_audio: dict, clip_folders: set) -> None:
    """A label folder holding files but no audio that can be read here (`no/*.m4a`) is refused: left out, its
    label would be missing from training and from every figure without a word. not_audio: the files that are not
    audio, by the folder under root (the label folder) they are in; clip_folders: those that hold clips."""
    for folder in sorted(set(not_audio) - clip_folders):
        files = not_audio[folder]
        kinds = ", ".join(sorted({path.suffix.lower() or "no extension" for path in files}))
        raise ValueError(f"{root / folder} holds no audio file that can be read here (only {kinds}: "
                         f"{files[0].name}{', ...' if len(files) > 1 else ''}), so its label would be left out; "
                         f"{CONVERT_ADVICE}, or move the folder out of {root} (audio: "
                         f"{', '.join(AUDIO_SUFFIXES)})")


def read_clip(path, sample_rate: int) -> np.ndarray:
    """A whole audio file as float64 mono in [-1, 1) at sample_rate."""
    audio = None
    try:
        if empty := empty_problem(path):
            raise ValueError(f"{empty}, or leave it out")
        audio, wav = libsndfile_input(path)
        with soundfile.SoundFile(audio) as file:
            declared, rate = declared_frames(file), file.samplerate
            data = file.read(frames_to_play(file, declared) or -1, dtype="float64", always_2d=True)
    except PermissionError:  # libsndfile would call it a "System error"
        raise ValueError(f"{path} cannot be read: permission denied; make it readable by the user running basilar, "
                         f"e.g. `chmod a+r {path}`") from None
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise ValueError(f"cannot read {path}: {exc}; convert it to WAV (e.g. `sox INPUT OUT.wav`), or leave it "
                         "out") from None
    finally:
        if isinstance(audio, TrueSizeWav):
            audio.close()
    problem = length_problem(path, wav)
    if problem:
        raise ValueError(f"{problem}; or leave it out")
    if len(data) < declared:  # libsndfile ends a cut or damaged file without an error
        raise ValueError(f"{path} ends early: its header declares {declared / rate:.2f} s of audio but "
                         f"{len(data) / rate:.2f} s could be read (cut short or damaged); copy the file again, or "
                         "re-record or re-encode it, or leave it out")
    if not len(data):
        raise ValueError(f"{path} holds no audio; record it again or leave it out")
    if not np.isfinite(data).all():
        raise ValueError(f"{path} holds samples that are not numbers (NaN or infinity); re-record or re-encode it, "
                         "or leave it out")
    mono = data.mean(axis=1)
    if data.shape[1] > 1 and np.any(data) and not np.any(mono):  # read_labelled_clip would call it all zero
        raise ValueError(f"{path}: its {data.shape[1]} channels cancel when averaged to mono (one is the other "
                         f"inverted), leaving silence; keep one channel (e.g. `sox {path} OUT.wav remix 1`), or leave "
                         "it out")
    out = soxr.resample(mono, rate, sample_rate) if rate != sample_rate else mono
    if not out.size:
        raise ValueError(f"{path} is too short: its {len(data)} samples at {rate} Hz leave nothing at {sample_rate} "
                         "Hz; record it again or leave it out")
    return out


def whole_word_s(config: FrontendConfig) -> float:
    """The longest clip that every training example holds whole: a word heard amid other sound ends
    EARLIEST_WORD_END frames or more into its example, and what would come before the example's start is cut."""
    return EARLIEST_WORD_END * config.hop_ms / 1000


def clips_longer_than(clips: list[Clip], seconds: float) -> list[tuple[Clip, float]]:
    """The clips whose headers say they last longer than `seconds`, with their lengths. A header that cannot be
    read is passed over: reading the clip itself says what is wrong with it."""
    longer = []
    for clip in clips:
        try:
            length = soundfile.info(str(clip.path)).duration
        except (soundfile.LibsndfileError, RuntimeError, OSError):
            continue
        if length > seconds:
            longer.append((clip, length))
    return longer


def read_labelled_clip(clip: Clip, sample_rate: int) -> np.ndarray:
    """A labelled clip's audio (read_clip); one of digital silence is refused by name: trained on, it would teach
    silence as its label, and scored, it would say nothing of how the word is heard."""
    audio = read_clip(clip.path, sample_rate)
    if not np.any(audio):
        raise ValueError(f"{clip.path} holds only digital silence (every sample 0), no {clip.label!r}; record it "
                         "again or leave it out")
    return audio


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


# ---- synthesized speech (espeak-ng and flite) ----

def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, voice: str, pitch: int, speed: int, sample_rate: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", tmp.name, text],
                       check=True, capture_output=True)
        x = read_clip(tmp.name, sample_rate)
    return trim_silence(x)


def sounding_span(x: np.ndarray, threshold_db: float = -40.0) -> tuple[int, int]:
    """[first, end) of the samples louder than threshold_db below the peak: a clip without its silent ends."""
    loud = np.flatnonzero(np.abs(x) > np.abs(x).max() * 10 ** (threshold_db / 20)) if x.size else x[:0]
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def trim_silence(x: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing samples quieter than threshold_db below the peak (FSDD clips are trimmed too)."""
    first, end = sounding_span(x, threshold_db)
    return x[first:end]


def synth_digits(sample_rate: int, count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """Spoken digits "0".."9" from many espeak-ng voices, pitches and rates: extra speakers to learn from."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        digit = i % 10
        voice = rng.choice(ESPEAK_VOICES) + rng.choice(ESPEAK_VARIANTS)
        out.append((espeak(DIGIT_WORDS[digit], voice, rng.randint(15, 85), rng.randint(110, 210), sample_rate),
                    str(digit)))
    return out


def flite_available() -> bool:
    return shutil.which("flite") is not None


def flite(text: str, voice: str, f0_hz: float, stretch: float, sample_rate: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["flite", "-voice", voice, "--setf", f"int_f0_target_mean={f0_hz:.0f}", "--setf",
                        f"duration_stretch={stretch:.2f}", "-t", text, "-o", tmp.name], check=True, capture_output=True)
        x = read_clip(tmp.name, sample_rate)
    return trim_silence(x)


def synth_digits_flite(sample_rate: int, count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """Spoken digits from flite's voices (awb, rms and slt are statistical voices built from recordings of real
    speakers, nearer to human speech than espeak-ng's formant synthesis), at random pitches and rates."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        digit = i % 10
        f0 = rng.uniform(85, 250)
        out.append((flite(DIGIT_WORDS[digit], rng.choice(FLITE_VOICES), f0, rng.uniform(0.75, 1.35), sample_rate),
                    str(digit)))
    return out


def synth_non_target_flite(sample_rate: int, count: int, seed: int, avoid=()) -> list[np.ndarray]:
    """Non-target speech in flite's voices, so that those voices are no cue for a digit; `avoid`: as in
    non_target_text."""
    rng = random.Random(seed)
    return [flite(non_target_text(rng, avoid), rng.choice(FLITE_VOICES), rng.uniform(85, 250),
                  rng.uniform(0.75, 1.35), sample_rate) for _ in range(count)]


def words_of(text: str) -> tuple[str, ...]:
    """A label or a phrase as lower-case words (`lights_on` and "Lights on!" are both ("lights", "on"))."""
    return tuple(re.findall(r"[a-z0-9']+", text.lower()))


def says(text: str | tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    """Whether text (or its words_of) holds the words of phrase, one after another."""
    words = words_of(text) if isinstance(text, str) else text
    return any(words[i:i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1))


def non_target_text(rng: random.Random, avoid=()) -> str:
    """An everyday phrase, or a random string of common words (far more variety of syllables than any phrase
    list). `avoid`: phrases (as words_of gives them) it must not say: the labels, which as background would teach
    the model that its own words are no target ("yes of course" for a label "yes"). The lists hold no number words,
    so for digits nothing is drawn again and the draws are what they were."""
    for _ in range(10_000):
        if rng.random() < 0.5:
            text = rng.choice(NON_TARGET_TEXT)
        else:
            text = " ".join(rng.choice(NON_TARGET_WORDS) for _ in range(rng.randint(2, 8)))
        words = words_of(text)
        if not any(says(words, phrase) for phrase in avoid):
            return text
    raise ValueError(f"almost every non-target phrase says one of the labels {[' '.join(p) for p in avoid]}; "
                     "give labels that are not among the commonest words, or --synth-speech 0 --flite-speech 0")


def synth_non_target(sample_rate: int, count: int, seed: int, avoid=()) -> list[np.ndarray]:
    """Non-target speech from many espeak-ng voices, for the background class; `avoid`: as in non_target_text."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        voice = rng.choice(ESPEAK_VOICES) + rng.choice(ESPEAK_VARIANTS)
        out.append(espeak(non_target_text(rng, avoid), voice, rng.randint(15, 85), rng.randint(110, 210),
                          sample_rate))
    return out


# ---- noise and augmentation ----

def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.arange(spectrum.size) + 1.0
    spectrum /= np.sqrt(f) if colour == "pink" else f
    x = np.fft.irfft(spectrum, n)
    return x / (x.std() + 1e-12)


def random_tilt(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A random first-order spectral tilt: microphones and voices differ in brightness."""
    a = rng.uniform(-0.6, 0.6)
    y = x.copy()
    y[1:] += a * x[:-1]
    return y


def random_speed(rng: np.random.Generator, x: np.ndarray, spread: float = 0.12) -> np.ndarray:
    """Resample by a random factor: tempo and vocal-tract length change together."""
    factor = rng.uniform(1 - spread, 1 + spread)
    return soxr.resample(x, 1000, round(1000 * factor))


def random_room(rng: np.random.Generator, x: np.ndarray, rate: int) -> np.ndarray:
    """x heard in a random room: the direct sound, then after 2-20 ms a diffuse tail of exponentially decaying
    noise (RT60 0.2-1.0 s, highs damped by a random one-pole low-pass), 12 dB quieter to 3 dB louder in all
    than the direct sound. Same length as x."""
    from scipy.signal import lfilter  # host only (training); `basilar eval` on a device imports this module

    rt60 = rng.uniform(0.2, 1.0)
    n = int(rt60 * rate)
    tail = rng.standard_normal(n) * 10 ** (-3 * np.arange(n) / (rt60 * rate))  # -60 dB at rt60
    tail = lfilter([1.0], [1.0, -rng.uniform(0.0, 0.8)], tail)  # walls and air absorb highs first
    tail[:int(rng.uniform(0.002, 0.02) * rate)] = 0
    tail *= np.sqrt(10 ** (-rng.uniform(-3, 12) / 10) / np.sum(tail ** 2))  # at least 0.18 s of noise: never 0
    tail[0] = 1.0  # the direct sound
    size = x.size + n
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(tail, size), size)[:x.size]


def set_peak(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = np.abs(x).max()
    return x * (10 ** (peak_dbfs / 20) / peak) if peak > 0 else x


class Augmenter:
    """Builds labelled example sequences around words, and background-only sequences."""

    def __init__(self, config: FrontendConfig, noise_speech: list[np.ndarray], seed: int, sound_events: bool = True):
        self.config = config
        self.sound_events = sound_events  # off: the backgrounds of recipe 8 and before, draw for draw
        self.rate = config.sample_rate
        self.hop = config.hop_samples
        self.noise_speech = noise_speech
        self.rng = np.random.default_rng(seed)

    def background(self, n: int) -> np.ndarray:
        """n samples of a random background: digital silence or steady noise, with non-target speech and/or
        noise bursts (sudden broadband sounds are what a level-normalised front end most easily mistakes for
        fricatives) or other sounds that are not speech (notes, chimes, sweeps, knocks: `sound_events`)."""
        rng = self.rng
        kinds, shares = BACKGROUND_KINDS[self.sound_events]
        kind = rng.choice(kinds, p=shares)
        if kind == "silence":
            return np.zeros(n)
        level = 10 ** (rng.uniform(-75, -35) / 20)
        x = coloured_noise(rng, n, rng.choice(NOISE_COLOURS)) * level
        if "speech" in kind and self.noise_speech:
            self._scatter(x, lambda: set_peak(
                random_speed(rng, self.noise_speech[rng.integers(len(self.noise_speech))]), rng.uniform(-40, -3)))
        if "bursts" in kind:
            self._scatter(x, self.noise_burst)
        if "events" in kind:
            self._scatter(x, lambda: sound_event(rng, self.rate) * 10 ** (rng.uniform(-45, -3) / 20))
        return x

    def noise_floor(self, n: int, word_peak: float) -> np.ndarray:
        """Steady hiss 30-70 dB below the word's peak: a live input is never digitally silent, and the level
        normaliser raises the hiss to full scale while nothing else is there (docs/models.md)."""
        rng = self.rng
        return coloured_noise(rng, n, rng.choice(NOISE_COLOURS)) * word_peak * 10 ** (-rng.uniform(30, 70) / 20)

    def noise_burst(self) -> np.ndarray:
        rng = self.rng
        n = int(rng.uniform(0.1, 1.5) * self.rate)
        burst = coloured_noise(rng, n, rng.choice(NOISE_COLOURS))
        ramp = min(n // 2, int(rng.uniform(0.002, 0.05) * self.rate))
        if ramp:
            envelope = np.linspace(0, 1, ramp)
            burst[:ramp] *= envelope
            burst[-ramp:] *= envelope[::-1]
        return set_peak(burst, rng.uniform(-45, -3))

    def _scatter(self, x: np.ndarray, make) -> None:
        """Add sounds from make() into x one after another, with random gaps."""
        pos = 0
        while True:
            pos += int(self.rng.uniform(0.0, 0.6) * self.rate)
            if pos >= x.size:
                return
            sound = make()
            end = min(x.size, pos + sound.size)
            x[pos:end] += sound[:end - pos]
            pos = end

    def augment_word(self, word: np.ndarray) -> np.ndarray:
        rng = self.rng
        if rng.random() < 0.8:
            word = random_speed(rng, word)
        if rng.random() < 0.7:
            word = random_tilt(rng, word)
        return set_peak(word, rng.uniform(-40, -1))

    def word_example(self, word: np.ndarray, label_index: int, background_index: int, previous=None):
        """(frames int8 (SEQ_FRAMES, C), targets int (SEQ_FRAMES,), weights float (SEQ_FRAMES,)).

        previous: an optional (audio, label_index) word placed 0.3-1.2 s before this one, as in a stream of
        words, so the model learns that an earlier word in its memory does not change what it hears now.
        """
        rng = self.rng
        word = self.augment_word(word)
        word_frames = int(np.ceil(word.size / self.hop))
        lead_frames = round(EVAL_LEAD_S * 1000 / self.config.hop_ms) + int(rng.integers(0, 10))
        tail_frames = round(LABEL_AFTER_END_S * 1000 / self.config.hop_ms)
        # The clip-evaluation condition, which is also how every stream begins: front end and model start from
        # rest a moment before the word, in quiet; every frame then counts, the first ones too.
        from_rest = rng.random() < 0.3 and lead_frames + word_frames + tail_frames <= SEQ_FRAMES
        clean = from_rest or rng.random() < 0.1  # quiet around the word: digital silence or a noise floor
        if from_rest:
            end_frame = lead_frames + word_frames
        else:
            end_frame = int(rng.integers(EARLIEST_WORD_END, SEQ_FRAMES - 35))
        start_frame = end_frame - word_frames
        warmup = 0 if clean else int(rng.uniform(0, 1.0) * self.rate)
        total = warmup + SEQ_FRAMES * self.hop
        audio = np.zeros(total) if clean else self.background(total)
        start = warmup + start_frame * self.hop
        if start < 0:  # a very long word: keep its end, drop its beginning
            word, start = word[-start:], 0
        if clean:
            audio[:max(0, start - int(EVAL_LEAD_S * self.rate))] = 0
        audio[start:start + word.size] += word[:total - start]
        if clean and rng.random() < NOISE_FLOOR_SHARE:
            audio += self.noise_floor(total, np.abs(word).max())
        targets = np.full(SEQ_FRAMES, background_index)
        weights = np.zeros(SEQ_FRAMES, np.float32)
        first_scored = 0 if from_rest else CONTEXT_FRAMES
        weights[first_scored:max(first_scored, start_frame)] = 1.0
        if previous is not None and not clean:
            prev = self.augment_word(previous[0])
            prev_end = start - int(rng.uniform(0.3, 1.2) * self.rate)
            prev_start = prev_end - prev.size
            if prev_start >= 0:
                audio[prev_start:prev_end] += prev
                self._label(targets, weights, (prev_start - warmup) // self.hop, (prev_end - warmup) // self.hop,
                            previous[1], limit=max(0, start_frame))
        if rng.random() < ROOM_SHARE:  # the room rings on everything it hears; the microphone's own hiss is added after
            audio = random_room(rng, audio, self.rate)
        if not clean and rng.random() < 0.5:
            audio += coloured_noise(rng, total, "white") * np.abs(word).max() * 10 ** (-rng.uniform(15, 40) / 20)
        frames = self.frames(audio)[-SEQ_FRAMES:]
        self._label(targets, weights, start_frame, end_frame, label_index, limit=SEQ_FRAMES,
                    first_scored=first_scored)
        # Once the word is well over, nothing is there any more: background again.
        weights[end_frame + tail_frames + round(AFTER_WORD_GAP_S * 1000 / self.config.hop_ms):] = 1.0
        return frames, targets, weights

    def _label(self, targets, weights, start_frame: int, end_frame: int, label_index: int, limit: int,
               first_scored: int = CONTEXT_FRAMES) -> None:
        """A word's frames carry no loss until shortly before its end; then its label until just after it."""
        first = max(first_scored, end_frame - round(LABEL_BEFORE_END_S * 1000 / self.config.hop_ms))
        last = min(limit, end_frame + round(LABEL_AFTER_END_S * 1000 / self.config.hop_ms))
        weights[max(0, start_frame):max(0, first)] = 0.0
        if last > first:
            targets[first:last] = label_index
            weights[first:last] = 1.0

    def background_example(self, background_index: int):
        from_rest = self.rng.random() < 0.3  # scored from the first frame, as when a stream begins
        warmup = 0 if from_rest else int(self.rng.uniform(0, 1.0) * self.rate)
        audio = self.background(warmup + SEQ_FRAMES * self.hop)
        if self.rng.random() < ROOM_SHARE:
            audio = random_room(self.rng, audio, self.rate)
        frames = self.frames(audio)[-SEQ_FRAMES:]
        weights = np.zeros(SEQ_FRAMES, np.float32)
        weights[0 if from_rest else CONTEXT_FRAMES:] = 1.0
        return frames, np.full(SEQ_FRAMES, background_index), weights

    def frames(self, audio: np.ndarray) -> np.ndarray:
        return Frontend(self.config).process(to_int16(audio))


def clip_audio(config: FrontendConfig, word: np.ndarray, noise_floor_dbfs: float | None = None,
               seed: int = 0) -> np.ndarray:
    """A clip as it is classified: the word with silence around it, int16.

    noise_floor_dbfs: white noise at this RMS level (dB full scale) under the whole clip, seeded by `seed`, in
    place of digital silence: the steady hiss a live input always has.
    """
    lead = np.zeros(int(EVAL_LEAD_S * config.sample_rate))
    tail = np.zeros(int(EVAL_TAIL_S * config.sample_rate))
    audio = np.concatenate([lead, word, tail])
    if noise_floor_dbfs is not None:
        audio = audio + np.random.default_rng(seed).standard_normal(audio.size) * 10 ** (noise_floor_dbfs / 20)
    return to_int16(audio)


def clip_frames(config: FrontendConfig, word: np.ndarray, noise_floor_dbfs: float | None = None,
                seed: int = 0) -> np.ndarray:
    """The frames a clip is classified from (clip_audio), from a fresh front end."""
    return Frontend(config).process(clip_audio(config, word, noise_floor_dbfs, seed))


def cache_key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
