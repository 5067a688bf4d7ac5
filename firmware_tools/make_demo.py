"""Build the demo recording that `basilar run` plays out of the box, and its expected detections.

    python3 -m firmware_tools.make_demo [--fsdd ../shared/data/fsdd/recordings] [--out edge/demo]

A stream like a device hears it: spoken digits from all four FSDD speakers (8 kHz, resampled to 16 kHz), with
quiet stretches, noise bursts and ordinary speech that is not a digit (synthesized with espeak-ng, or with
festival's ked voice or others, or recordings of people: `--speech-dir`) between them, and recorded sounds that
are not speech if asked (`--sound-dir`), over a low background hiss. Writes demo.wav (16 kHz mono int16),
demo_truth.csv (label,start_s,end_s: where each digit was placed), demo_non_target.csv (kind,start_s,end_s: where
the non-digit speech and the noise bursts are, for false alarms per minute of non-target speech; the recorded
sounds are `noise` too) and ATTRIBUTION.md. Seeded, so a rebuild gives the same layout.
"""
from __future__ import annotations

import csv
import functools
import subprocess
import tempfile
import zlib
from pathlib import Path

import click
import numpy as np
import soundfile

from firmware_tools import dataset
from firmware_tools.cli_errors import fail_on
from firmware_tools.cli_types import FloatRange
from firmware_tools.recordings import Recording, RecordingsError, read_recordings

RATE = 16000
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler")
# Everyday phrases with no digit words and no near-homophones of them (to, for, ate, won, oh, ...).
PHRASES = (
    ("please open the window", "en-us", 160, 50),
    ("the weather is lovely this morning", "en-gb", 150, 40),
    ("where did you put my keys", "en-us+f3", 170, 60),
    ("turn the lights off in the kitchen", "en-gb-x-rp", 145, 35),
    ("good evening, how was your day", "en-us+m3", 155, 55),
    ("the quick brown fox jumps over the lazy dog", "en-029", 175, 45),
)
# More non-digit speech for longer test streams (`--phrases`); none of it is in the training recipe's texts.
MORE_PHRASES = (
    "the library closes early on sundays", "could you pass the salt", "my phone battery is almost empty",
    "the garden needs water after this hot week", "she painted the fence blue", "the bus stops near the bakery",
    "let me check the calendar", "he forgot his umbrella again", "the soup needs a little more pepper",
    "our neighbours have a friendly dog", "the printer is out of paper", "what time does the film start",
    "the children are playing in the park", "I would like a cup of tea", "the mountain road is closed",
    "please speak a little louder", "the shop on the corner sells fresh bread", "we planted tomatoes in spring",
    "the lift is broken so take the stairs", "her sister lives by the sea", "the kettle is boiling",
    "this jacket is warm enough in winter", "the station was crowded this evening", "do you know the way home",
    "the cake smells wonderful", "turn down the radio please", "a storm is coming from the west",
    "the keys are in the blue bowl", "he always walks the dog after dinner", "the apples in the basket are ripe",
    "let us meet at the cafe", "the ceiling light flickers", "my uncle fixes old bicycles",
    "the lake was calm and quiet", "remember the back door key", "the baby is finally asleep",
)
FESTIVAL_VOICE = "voice_ked_diphone"
MORE_VOICES = (("en-us", 150, 50), ("en-gb+m2", 165, 40), ("en-gb-scotland+f2", 140, 60), ("en-029+m5", 175, 35),
               ("en-us+f4", 185, 70), ("en-gb-x-rp+m7", 130, 45), ("en-gb-x-gbclan", 160, 55))
PAUSES_S = (0.9, 1.4)  # seconds between items
HISS_DBFS = -58.0  # a quiet room through a microphone
BURST_DBFS = -30.0  # noise bursts, RMS: about 6 dB under the words
REPO = Path(__file__).resolve().parent.parent
DEFAULT_FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"


def rms_normalise(clip: np.ndarray, dbfs: float) -> np.ndarray:
    rms = np.sqrt(np.mean(clip**2)) + 1e-12
    return clip * (10 ** (dbfs / 20) / rms)


def read_clip(path: Path) -> np.ndarray:
    """An audio file as float32 mono at RATE (the same reader and resampler as training's)."""
    try:
        return dataset.read_clip(path, RATE).astype(np.float32)
    except ValueError as err:  # not audio, or cut short
        raise click.ClickException(str(err)) from None


def read_recorded_speech(path: Path) -> np.ndarray:
    """A --speech-dir recording (read_clip); a silent one is refused, as training refuses it: it would be a stretch
    of no length in demo_non_target.csv, and no speech in the stream."""
    from firmware_tools.training import silent_recording

    clip = read_clip(path)
    if not np.any(clip):
        raise click.ClickException(str(silent_recording(path)))
    return clip


def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
                           check=True, capture_output=True, timeout=60)
        except FileNotFoundError as err:
            raise click.ClickException("espeak-ng is needed to synthesize the non-digit speech: "
                                       "sudo apt install espeak-ng") from err
        except subprocess.CalledProcessError as err:
            raise click.ClickException(f"espeak-ng failed for voice {voice!r}: {err.stderr.decode().strip()}")
        return read_clip(out)


def festival(text: str, voice: str, speed: int, pitch: int, voices=(FESTIVAL_VOICE,)) -> np.ndarray:
    """`text` in one of festival's `voices` (by default ked's diphones: a real speaker's, and a voice no training
    recipe hears, so a stream made with it measures false alarms on an unfamiliar voice). With several voices a
    checksum of the text picks one, so a phrase always gets the same voice. The phrase's rate carries over
    (160 words/min is festival's own pace); voice and pitch are espeak-ng's and are not used."""
    festival_voice = festival_voice_for(text, voices)
    with tempfile.TemporaryDirectory() as tmp:
        text_file, out = Path(tmp) / "phrase.txt", Path(tmp) / "speech.wav"
        text_file.write_text(text)
        command = ["text2wave", "-eval", f"({festival_voice})", "-eval",
                   f"(Parameter.set 'Duration_Stretch {160 / speed:.3f})", str(text_file), "-o", str(out)]
        try:
            result = subprocess.run(command, capture_output=True, timeout=60)
        except FileNotFoundError as err:
            raise click.ClickException("festival is needed for --speech-engine festival: "
                                       "sudo apt install festival festvox-kdlpc16k") from err
        # text2wave exits 0 when the voice is unknown; it just writes nothing.
        if result.returncode != 0 or not out.exists():
            raise click.ClickException(
                f"festival could not speak in {festival_voice} ({result.stderr.decode().strip()[-300:]}); "
                "voice_ked_diphone comes from the festvox-kdlpc16k package (sudo apt install festvox-kdlpc16k), "
                "other voices from their own festvox-* packages")
        return read_clip(out)


def festival_voice_for(text: str, voices) -> str:
    return voices[zlib.crc32(text.encode()) % len(voices)]


SPEECH_ENGINES = {"espeak-ng": espeak, "festival": festival}


def noise_burst(rng: np.random.Generator, seconds: float, colour: str) -> np.ndarray:
    white = rng.standard_normal(int(seconds * RATE)).astype(np.float32)
    if colour == "brown":  # a leaky integrator turns white noise into a low rumble
        from scipy.signal import lfilter
        white = lfilter([1.0], [1.0, -0.995], white).astype(np.float32)
    ramp = np.minimum(1.0, np.minimum(np.arange(len(white)), np.arange(len(white))[::-1]) / (0.05 * RATE))
    return white * ramp


def speech_phrases(count: int) -> list[tuple[str, str, int, int]]:
    """The first `count` non-digit phrases, with voices: PHRASES, then MORE_PHRASES, then round again."""
    more = [(text, *MORE_VOICES[i % len(MORE_VOICES)]) for i, text in enumerate(MORE_PHRASES)]
    every = list(PHRASES) + more
    return [every[i % len(every)] for i in range(count)]


def build(fsdd: Path, seed: int = 2024, speakers=SPEAKERS, repeats: int = 2, phrases: int | None = None,
          speech_engine: str = "espeak-ng", festival_voices=(FESTIVAL_VOICE,), pauses=PAUSES_S,
          hiss_dbfs: float = HISS_DBFS, recordings: list[Recording] | None = None, sounds: list[Path] = (),
          bursts: int | None = None, burst_dbfs: float = BURST_DBFS):
    """The demo as (float samples, truth rows, non-target rows, digit files used, phrases used).

    Every digit `repeats` times, the speakers taking turns, at takes chosen at random; the non-digit phrases
    and noise bursts `repeats // 2` times each (at least once), or `phrases` phrases from a longer list, spoken by
    `speech_engine` (SPEECH_ENGINES; festival in `festival_voices`), with pauses drawn from `pauses` (seconds)
    between them, over a steady hiss at `hiss_dbfs`. Given `recordings`, those are the non-digit speech instead
    of synthesized phrases: each once, or the first `phrases` of them (round again when there are fewer). Each of
    `sounds` (recordings of things that are not speech) goes in once, as `noise`. `bursts`: that many noise bursts
    instead (white and brown by turns), each at `burst_dbfs` RMS. With one held-out speaker this makes a
    speaker-independent test stream for `basilar eval-stream`.
    """
    speak = SPEECH_ENGINES[speech_engine]
    if speak is festival:
        speak = functools.partial(festival, voices=tuple(festival_voices))
    rng = np.random.default_rng(seed)
    digits = [d for d in range(10) for _ in range(repeats)]
    rng.shuffle(digits)
    items = []
    for i, digit in enumerate(digits):
        speaker = speakers[i % len(speakers)]
        path = fsdd / f"{digit}_{speaker}_{int(rng.integers(0, 50))}.wav"
        if not path.exists():
            raise click.ClickException(f"FSDD recording {path} not found; pass --fsdd with the folder holding "
                                       "{digit}_{speaker}_{take}.wav files")
        items.append(("digit", str(digit), path))
    rounds = max(1, repeats // 2)
    if recordings:
        count = len(recordings) if phrases is None else phrases
        spoken = [recordings[i % len(recordings)] for i in range(count)]
        items += [("speech", r.transcript, functools.partial(read_recorded_speech, r.path)) for r in spoken]
    else:
        spoken = speech_phrases(len(PHRASES) * rounds if phrases is None else phrases)
        items += [("speech", text, functools.partial(speak, text, voice, speed, pitch))
                  for text, voice, speed, pitch in spoken]
    burst_kinds = (("noise", "white", 0.8), ("noise", "brown", 1.2))  # taking turns
    items += [burst_kinds[i % 2] for i in range(2 * rounds if bursts is None else bursts)]
    items += [("sound", path.name, path) for path in sounds]
    order = rng.permutation(len(items))

    pieces, truth, non_target, used_files = [], [], [], []
    cursor = 1.0  # seconds; the stream opens with a quiet second
    for index in order:
        kind, name, extra = items[index]
        if kind == "digit":
            clip = rms_normalise(read_clip(extra), -24 + rng.uniform(-4, 4))
            truth.append((name, cursor, cursor + len(clip) / RATE))
            used_files.append(extra.name)
        elif kind == "speech":
            clip = rms_normalise(extra(), -24 + rng.uniform(-4, 4))
            # Where it sounds: a synthesized phrase ends in up to 0.35 s of silence and a recorded prompt starts
            # and ends in its room's quiet, which are no minutes of speech to count false alarms per.
            first, end = dataset.sounding_span(clip)
            non_target.append(("speech", cursor + first / RATE, cursor + end / RATE))
        elif kind == "sound":
            clip = rms_normalise(read_clip(extra), -24 + rng.uniform(-6, 6))
            first, end = dataset.sounding_span(clip)
            non_target.append(("noise", cursor + first / RATE, cursor + end / RATE))
        else:
            clip = rms_normalise(noise_burst(rng, extra, name), burst_dbfs)
            non_target.append(("noise", cursor, cursor + len(clip) / RATE))
        pieces.append((cursor, clip))
        cursor += len(clip) / RATE + rng.uniform(*pauses)
    total = int((cursor + 0.5) * RATE)
    audio = (rng.standard_normal(total) * 10 ** (hiss_dbfs / 20)).astype(np.float32)  # a microphone's hiss
    for start, clip in pieces:
        first = int(round(start * RATE))
        audio[first:first + len(clip)] += clip
    peak = np.max(np.abs(audio))
    if peak > 0.99:
        audio *= 0.99 / peak
    return audio, truth, non_target, used_files, sorted(set(spoken), key=spoken.index)


ATTRIBUTION = """\
# Demo recording: attribution and license

`demo.wav` is a derivative of the **Free Spoken Digit Dataset** (FSDD) by Zohar Jackson and contributors
(https://github.com/Jakobovski/free-spoken-digit-dataset, git commit 26eb9aaf76e81b692f806f9140c2d2777410d7a1),
licensed under Creative Commons Attribution-ShareAlike 4.0 International (CC BY-SA 4.0,
https://creativecommons.org/licenses/by-sa/4.0/).

The demo is therefore also licensed under **CC BY-SA 4.0**. Changes made: the recordings listed below were resampled
from 8 kHz to 16 kHz, set to a common level (+-4 dB), and placed in one stream with pauses, noise bursts, a
background hiss and {speech_kind} non-digit speech between them. `demo_truth.csv` gives where each digit was placed.

Built by `python3 -m firmware_tools.make_demo` (seed {seed}).

## FSDD recordings used ({count}, from {speakers})
{files}

{speech_section}
{sound_section}"""


def espeak_version() -> str:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown version"
    words = out.split()
    return words[words.index("NG") + 2].rstrip(":") if "NG" in words else out.strip()


def phrase_line(speech_engine: str, festival_voices, text: str, voice: str, speed: int, pitch: int) -> str:
    if speech_engine == "espeak-ng":
        return f"- \"{text}\" (voice {voice}, {speed} words/min, pitch {pitch})"
    return f"- \"{text}\" ({festival_voice_for(text, festival_voices)}, {speed} words/min)"


def write_rows(path: Path, header, rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for name, start, end in rows:
            writer.writerow([name, f"{start:.3f}", f"{end:.3f}"])


def write_demo(fsdd: Path, out_dir: Path, seed: int = 2024, speakers=SPEAKERS, repeats: int = 2,
               phrases: int | None = None, speech_engine: str = "espeak-ng", festival_voices=(FESTIVAL_VOICE,),
               pauses=PAUSES_S, hiss_dbfs: float = HISS_DBFS, recordings: list[Recording] | None = None,
               speech_credit: str = "", sounds: list[Path] = (), sound_credit: str = "", bursts: int | None = None,
               burst_dbfs: float = BURST_DBFS):
    audio, truth, non_target, used, phrases = build(fsdd, seed, speakers, repeats, phrases, speech_engine,
                                                    festival_voices, pauses, hiss_dbfs, recordings, sounds, bursts,
                                                    burst_dbfs)
    out_dir.mkdir(parents=True, exist_ok=True)
    wav, csv_path = out_dir / "demo.wav", out_dir / "demo_truth.csv"
    soundfile.write(wav, np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16), RATE,
                    subtype="PCM_16")
    write_rows(csv_path, ("label", "start_s", "end_s"), truth)
    write_rows(out_dir / "demo_non_target.csv", ("kind", "start_s", "end_s"), non_target)
    if recordings:
        kind, section = "recorded", recorded_section(phrases, speech_credit)
    else:
        kind, section = "synthetic", synthetic_section(speech_engine, festival_voices, phrases)
    (out_dir / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(
        seed=seed, count=len(used), speakers=", ".join(sorted(set(speakers))), files="\n".join(f"- `{name}`" for name in used),
        speech_kind=kind, speech_section=section, sound_section=sound_section(sounds, sound_credit)))
    return wav, csv_path


def synthetic_section(speech_engine: str, festival_voices, phrases) -> str:
    engine = (f"espeak-ng {espeak_version()}" if speech_engine == "espeak-ng"
              else f"festival, {', '.join(festival_voices)}")
    lines = [phrase_line(speech_engine, festival_voices, *phrase) for phrase in phrases]
    return "\n".join([f"## Synthetic speech ({engine}), not digits", *lines])


def sound_section(sounds: list[Path], credit: str) -> str:
    if not sounds:
        return ""
    lines = [f"- `{path}`" for path in sounds]
    return "\n".join(["", "## Recorded sounds, not speech", *([credit, ""] if credit else []), *lines, ""])


def recorded_section(recordings: list[Recording], credit: str) -> str:
    lines = [f"- `{r.path.name}`" + (f": \"{r.transcript}\"" if r.transcript else "") for r in recordings]
    return "\n".join(["## Recorded speech, not digits", *([credit, ""] if credit else []), *lines])


def sounds_under(folder: Path) -> list[Path]:
    """The audio files under folder (by their extensions, hidden and system files left out, as training reads a
    folder), sorted."""
    sounds = [p for p in dataset.files_under(folder) if dataset.is_user_audio(p, folder)]
    if not sounds:
        raise click.ClickException(f"--sound-dir {folder} holds no audio file (by extension: "
                                   f"{', '.join(dataset.AUDIO_SUFFIXES)})")
    return sounds


@click.command()
@click.option("--fsdd", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_FSDD, show_default=True,
              help="Folder of FSDD recordings {digit}_{speaker}_{take}.wav.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=REPO / "edge" / "demo",
              show_default=True, help="Where to write demo.wav, demo_truth.csv, demo_non_target.csv and ATTRIBUTION.md.")
@click.option("--seed", type=int, default=2024, show_default=True)
@click.option("--speakers", default=",".join(SPEAKERS), show_default=True,
              help="Comma-separated FSDD speakers whose digits go in (one held-out speaker makes a test stream).")
@click.option("--repeats", type=click.IntRange(1, 50), default=2, show_default=True, help="Times each digit occurs.")
@click.option("--phrases", type=click.IntRange(0, 500), default=None,
              help="Non-digit phrases in the stream [default: 6 per two repeats].")
@click.option("--speech-engine", type=click.Choice(sorted(SPEECH_ENGINES)), default="espeak-ng", show_default=True,
              help="Who speaks the non-digit phrases: espeak-ng's voices, or festival's ked voice, which no "
                   "training recipe hears (false alarms on an unfamiliar voice).")
@click.option("--festival-voice", "festival_voices", multiple=True, default=[FESTIVAL_VOICE], show_default=True,
              help="festival voice for --speech-engine festival; repeat it to share the phrases among several "
                   "(each phrase's voice is picked by a checksum of its text).")
@click.option("--pause-s", "pauses", type=(FloatRange(0, 10), FloatRange(0, 10)), default=PAUSES_S,
              show_default=True, metavar="LO HI", help="Pauses between items, drawn from LO to HI seconds.")
@click.option("--hiss-dbfs", type=FloatRange(-90, -10), default=HISS_DBFS, show_default=True,
              help="Level of the steady background noise (white) under the whole stream.")
@click.option("--bursts", type=click.IntRange(0, 500), default=None,
              help="Noise bursts between the words, white (0.8 s) and brown (1.2 s) by turns [default: one of each "
                   "per two repeats].")
@click.option("--burst-dbfs", type=FloatRange(-90, -3), default=BURST_DBFS, show_default=True,
              help="RMS level of each noise burst (the words are at -24 +- 4 dBFS RMS).")
@click.option("--speech-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of recordings of people saying things that are not digits: they are the non-digit "
                   "speech instead of synthesized phrases (false alarms on real voices). Each once, or the first "
                   "--phrases.")
@click.option("--speech-list", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --speech-dir: which recordings, one a line, NAME or 'NAME: transcript' [default: all].")
@click.option("--speech-credit", default="",
              help="With --speech-dir: who recorded the speech and under what license, for ATTRIBUTION.md.")
@click.option("--sound-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of recordings of sounds that are not speech (chimes, music, knocks): each audio file "
                   "under it goes in once, between the digits (false alarms on everyday sounds).")
@click.option("--sound-credit", default="",
              help="With --sound-dir: who made the sounds and under what license, for ATTRIBUTION.md.")
def main(fsdd: Path, out_dir: Path, seed: int, speakers: str, repeats: int, phrases: int | None,
         speech_engine: str, festival_voices: tuple[str, ...], pauses: tuple[float, float], hiss_dbfs: float,
         speech_dir: Path | None, speech_list: Path | None, speech_credit: str, sound_dir: Path | None,
         sound_credit: str, bursts: int | None, burst_dbfs: float):
    """Build the demo recording and its expected detections."""
    if pauses[0] > pauses[1]:
        raise click.BadParameter(f"{pauses[0]} {pauses[1]}: LO must not exceed HI", param_hint="--pause-s")
    if speech_dir is None and (speech_list or speech_credit):
        raise click.UsageError("--speech-list and --speech-credit need --speech-dir")
    if sound_dir is None and sound_credit:
        raise click.UsageError("--sound-credit needs --sound-dir")
    if speech_dir is not None and click.get_current_context().get_parameter_source("speech_engine") \
            is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--speech-dir brings its own speech; leave out --speech-engine")
    if speech_engine != "festival" and click.get_current_context().get_parameter_source("festival_voices") \
            is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--festival-voice chooses festival's voices; add --speech-engine festival")
    names = tuple(s.strip() for s in speakers.split(",") if s.strip())
    if not names:
        raise click.BadParameter("names no speaker; e.g. --speakers nicolas", param_hint="--speakers")
    with fail_on(RecordingsError):
        recordings = read_recordings(speech_dir, speech_list) if speech_dir is not None else None
    sounds = sounds_under(sound_dir) if sound_dir is not None else []
    if not fsdd.is_dir():
        raise click.ClickException(f"FSDD folder {fsdd} not found; pass --fsdd")
    wav, csv_path = write_demo(fsdd, out_dir, seed, names, repeats, phrases, speech_engine, festival_voices,
                               pauses, hiss_dbfs, recordings, speech_credit, sounds, sound_credit, bursts, burst_dbfs)
    info = soundfile.info(wav)
    rows = sum(1 for _ in csv_path.open()) - 1
    click.echo(f"wrote {wav} ({info.duration:.1f} s, {info.samplerate} Hz) and {csv_path} ({rows} digits)")
    if speech_dir is not None and not speech_credit:
        click.echo(f"warning: {out_dir / 'ATTRIBUTION.md'} names no author or licence for the recordings; give them "
                   "with --speech-credit before sharing the stream", err=True)


if __name__ == "__main__":
    main()
