"""Recordings of people saying something that is not a target word, picked from a folder by a listing.

`make_demo --speech-dir` puts them between the digits of a test stream; `basilar train --speech-dir` puts them in
the background class.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from firmware_tools import dataset

# The listing of the shipped recipe's recorded speech (its voices come from three Debian packages).
SHIPPED_LISTING = Path(__file__).with_name("recorded_non_target_speech.txt")


class RecordingsError(ValueError):
    """A folder or listing of recordings that cannot be used; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class Recording:
    """A recording of someone saying something that is not a target word, and what (for the attribution)."""
    path: Path
    transcript: str = ""


def read_recordings(speech_dir: Path, listing: Path | None = None) -> list[Recording]:
    """The recordings `listing` names in `speech_dir`, in its order, or every audio file there, sorted by name.

    A listing has one recording a line, `NAME` or `NAME: transcript` (NAME with or without its suffix; blank
    lines, and lines that start with `;` or `#`, are skipped): so a corpus's own transcript file can serve,
    once its lines with digits in them are taken out.
    """
    if not speech_dir.is_dir():
        raise RecordingsError(f"--speech-dir {speech_dir} is not a folder of recordings")
    if listing is None:
        found = sorted(p for p in speech_dir.iterdir() if dataset.is_user_audio(p, speech_dir))
        if not found:
            raise RecordingsError(f"no audio files ({', '.join(dataset.AUDIO_SUFFIXES)}) in {speech_dir}")
        return [Recording(p) for p in found]
    try:
        lines = listing.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is no part of a name
    except UnicodeDecodeError as err:
        raise RecordingsError(f"{listing} is not UTF-8 text (byte {err.start}); save it as UTF-8, e.g. "
                              f"`iconv -f latin1 -t utf-8 {listing} > listing.txt`") from err
    recordings, folders = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith((";", "#")):
            continue
        name, _, transcript = line.partition(":")
        path = speech_dir / name.strip()
        if path.suffix.lower() not in dataset.AUDIO_SUFFIXES:  # NAME without its suffix (`take.one` too)
            path = _with_audio_suffix(path, folders) or path
        if not path.is_file():
            raise RecordingsError(f"{listing} line {number}: no recording {path}; "
                                  f"{_where_to_look(speech_dir, path, listing)}")
        recordings.append(Recording(path, transcript.strip()))
    if not recordings:
        raise RecordingsError(f"{listing} names no recordings")
    return recordings


def _with_audio_suffix(path: Path, folders: dict) -> Path | None:
    """The audio file named path's name and an audio suffix in any case (`hello` is `hello.WAV`), `.wav` first.
    folders: each folder's files, listed once (a listing names hundreds of files in one folder)."""
    if path.parent not in folders:
        try:
            names = sorted(p.name for p in path.parent.iterdir())
        except OSError:  # no such folder: said when the recording is not found
            names = []
        # by (name, suffix in lower case); the lower-case file wins where both `a.WAV` and `a.wav` are there
        folders[path.parent] = {(n[:-len(s)], s): n for n in names for s in dataset.AUDIO_SUFFIXES
                                if n.lower().endswith(s)}
    found = (folders[path.parent].get((path.name, s)) for s in dataset.AUDIO_SUFFIXES)
    return next((path.parent / n for n in found if n), None)


def _where_to_look(speech_dir: Path, path: Path, listing: Path) -> str:
    """What a missing recording most likely means: a whole voice not installed, or the wrong --speech-dir."""
    folder = path.parent
    if folder != speech_dir and folder.is_relative_to(speech_dir) and not folder.is_dir():
        # A listing of several voices names each voice's folder; only the shipped one says where its voices come from.
        if listing.resolve() == SHIPPED_LISTING.resolve():
            source = ("the voices it names (`sudo apt install asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav "
                      "asterisk-prompt-it-menardi-wav`)")
        else:
            source = f"the voices {listing} names"
        return (f"there is no folder {folder.relative_to(speech_dir)} in --speech-dir {speech_dir}: install "
                f"{source}, or pass the --speech-dir they are in")
    return "is --speech-dir the folder the listing was made for?"
