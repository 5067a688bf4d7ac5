"""The training recipe: features from the integer front end, augmentation, a causal TCN, speaker-held-out checks.

Host only (TensorFlow). `run_training()` is what `basilar train` runs; `leave_one_speaker_out()` gives the
speaker-independent figures the README reports.
"""
import dataclasses
import json
import os
import re
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

from edge.frontend import FrontendConfig
from firmware_tools import dataset
from firmware_tools.recordings import read_recordings

DIGITS = [str(d) for d in range(10)]
# What the background class's sounds are made of with TrainSettings.sound_events, for the attribution.
SYNTH_SOUNDS = "Noise and other sounds (notes, chords, bells, sweeps, knocks)"
DEFAULT_FRONTEND = FrontendConfig(sample_rate=8000, channels=32, f_low=100.0, f_high=3800.0, spectral_norm_s=1.28)


@dataclasses.dataclass
class TrainSettings:
    frontend: FrontendConfig = DEFAULT_FRONTEND
    width: int = 48
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    copies_per_clip: int = 3  # augmented examples made from each real clip
    # Synthesized voices (docs/models.md): digits only when the labels are the digits 0-9; non-target speech
    # for the background class. Each engine is used where its program is installed.
    synth_digits: int = 600  # espeak-ng digit clips
    flite_digits: int = 1200  # flite digit clips
    synth_non_target: int = 1600  # espeak-ng non-target speech
    flite_non_target: int = 800  # flite non-target speech
    background_examples: int = 5000
    # Recordings of people saying no target word, for the background class beside the synthesized speech:
    # (folder, listing or None, credit for the bundle's attribution) as recordings.read_recordings reads
    # them; None for none.
    recorded_speech: tuple[str, str | None, str] | None = None
    data_credit: str | None = None  # who recorded DATA_DIR's clips and their license, for the bundle's attribution
    previous_word_probability: float = 0.5  # how often another word precedes the labelled one, as in a stream
    # Synthesized sounds that are not speech (notes, chords, bells, sweeps, knocks) in a fifth of the backgrounds
    # (recipe 9); off gives recipe 8's examples, draw for draw (docs/models.md, "Sounds that are not speech").
    sound_events: bool = True
    # In-between voices of each label, morphed with the WORLD vocoder from two training speakers' takes
    # (firmware_tools/voice_morph.py); 0 for none, as the shipped bundle's recipe 8.
    morphs_per_label: int = 0
    # Models trained apart (seeds seed, seed+1, ...) and averaged in one network. The shipped bundle is two of
    # width 36 (docs/models.md); the default here stays one of width 48, which trains in half the time.
    ensemble: int = 1
    seed: int = 0


def progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit="ex", leave=False)


def label_order(clips) -> list[str]:
    labels = sorted({c.label for c in clips})
    number = lambda s: s.isascii() and s.isdigit()  # "2" and "10"; not "²", which str.isdigit takes too
    return sorted(labels, key=lambda s: (not number(s), int(s) if number(s) else 0, s))


def example_settings(settings: TrainSettings) -> tuple:
    """The settings that shape the examples (and so key their cache); the rest only shape the fit."""
    return (settings.copies_per_clip, settings.synth_digits, settings.flite_digits, settings.synth_non_target,
            settings.flite_non_target, settings.background_examples, settings.previous_word_probability, settings.seed,
            *recordings_key(settings), *(("sound events",) if settings.sound_events else ()))


def recordings_key(settings: TrainSettings) -> tuple:
    """The recordings as the clips key the cache (path, time changed); nothing when there are none, so that the
    cache of a recipe without them is kept."""
    if settings.recorded_speech is None:
        return ()
    return (tuple((str(p), p.stat().st_mtime_ns) for p in recording_paths(settings)),)


def recording_paths(settings: TrainSettings) -> list[Path]:
    folder, listing, _ = settings.recorded_speech
    return [r.path for r in read_recordings(Path(folder), Path(listing) if listing else None)]


def recorded_speech(settings: TrainSettings) -> list[np.ndarray]:
    """The recordings of non-target speech, silence trimmed, at the front end's rate."""
    if settings.recorded_speech is None:
        return []
    rate = settings.frontend.sample_rate
    out = []
    for path in recording_paths(settings):
        speech = dataset.trim_silence(dataset.read_clip(path, rate))
        if not speech.size:
            raise silent_recording(path)
        out.append(speech)
    return out


def silent_recording(path) -> ValueError:
    """The refusal of a --speech-dir recording with no sound in it (training's, and make_demo's)."""
    return ValueError(f"{path} is silent: a --speech-dir recording must hold speech; record it again or leave it out")


def synth_engines() -> tuple[bool, bool]:
    return dataset.espeak_available(), dataset.flite_available()


def synthesized(labels, settings: TrainSettings):
    """Synthesized digits (when the labels are the digits) and non-target speech, from each installed engine."""
    rate, seed = settings.frontend.sample_rate, settings.seed
    digits = labels == DIGITS
    espeak, flite = synth_engines()
    words, speech = [], []
    avoid = [phrase for phrase in map(dataset.words_of, labels) if phrase]  # never a label as background
    if espeak:
        speech += dataset.synth_non_target(rate, settings.synth_non_target, seed, avoid)
    if flite:
        speech += dataset.synth_non_target_flite(rate, settings.flite_non_target, seed + 4, avoid)
    if digits and espeak:
        words += dataset.synth_digits(rate, settings.synth_digits, seed + 1)
    if digits and flite:
        words += dataset.synth_digits_flite(rate, settings.flite_digits, seed + 3)
    return words, speech


def examples_key(clips, labels, settings: TrainSettings) -> str:
    """What names the cached features of these clips, labels and settings."""
    # Other labels than the digits: features cached before the background avoided saying the labels are stale
    # (the digits' background draws what it drew, so their key, and the shipped recipe's cache, stay as they were).
    since = () if labels == DIGITS else ("background avoids the labels",)
    return dataset.cache_key(dataset.RECIPE, [(str(c.path), c.path.stat().st_mtime_ns) for c in clips], labels,
                             settings.frontend.hash(), example_settings(settings), synth_engines(), *since)


def read_clips(clips, config: FrontendConfig) -> dict:
    """Every clip's audio by clip, each read and checked (dataset.read_labelled_clip) before anything trains: a clip
    that cannot be used stops the run with its name then, not after the training (held-out ones too)."""
    return {clip: dataset.read_labelled_clip(clip, config.sample_rate) for clip in clips}


def build_examples(clips, labels, settings: TrainSettings, cache_dir: Path | None, audio: dict | None = None):
    """(frames int8 (N, T, C), targets int32 (N, T), weights float32 (N, T)), cached on disk. audio: clips already
    read (read_clips), not read again."""
    key = examples_key(clips, labels, settings)
    cache = cache_dir / f"examples-{key}.npz" if cache_dir else None
    cached = read_cached_examples(cache) if cache and cache.exists() else None
    if cached is not None:
        return cached
    cfg = settings.frontend
    audio = audio or {}
    words = [(audio[c] if c in audio else dataset.read_labelled_clip(c, cfg.sample_rate), c.label) for c in clips]
    synth_words, noise_speech = synthesized(labels, settings)
    noise_speech += recorded_speech(settings)
    words += synth_words
    aug = dataset.Augmenter(cfg, noise_speech, settings.seed, settings.sound_events)
    background = len(labels)
    jobs = [(w, labels.index(lab)) for w, lab in words for _ in range(settings.copies_per_clip)]
    jobs += [(None, background)] * settings.background_examples
    order = np.random.default_rng(settings.seed).permutation(len(jobs))
    frames, targets, weights = [], [], []
    pick = np.random.default_rng(settings.seed + 2)
    for i in progress(order, "features", len(order)):
        word, index = jobs[i]
        if word is None:
            f, t, w = aug.background_example(background)
        else:
            previous = None
            if pick.random() < settings.previous_word_probability:
                other, other_label = words[pick.integers(len(words))]
                previous = (other, labels.index(other_label))
            f, t, w = aug.word_example(word, index, background, previous)
        frames.append(f)
        targets.append(t)
        weights.append(w)
    out = np.stack(frames), np.stack(targets).astype(np.int32), np.stack(weights)
    if cache:
        write_cached_examples(cache, out)
    return out


def read_cached_examples(cache: Path):
    """The cached (frames, targets, weights), or None where the file cannot be read (a run stopped while an older
    version wrote it straight to its name, a disk that was full): then it is built again and replaced."""
    try:
        with np.load(cache) as z:
            return z["frames"], z["targets"], z["weights"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        print(f"basilar: warning: the feature cache {cache} is damaged ({e}); rebuilding it", file=sys.stderr)
        return None


def write_cached_examples(cache: Path, examples) -> None:
    """Written to a file beside the cache and renamed into place, so a Ctrl-C or a full disk leaves no half-written
    cache under the name the next run reads."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            np.savez(f, frames=examples[0], targets=examples[1], weights=examples[2])
        os.replace(partial, cache)
    finally:
        partial.unlink(missing_ok=True)


def fit(frames, targets, weights, labels, settings: TrainSettings, verbose: int = 2):
    """Train settings.ensemble models on the same examples; several are merged into one averaging network."""
    from firmware_tools.model import ModelSpec, merge_branches

    spec = ModelSpec(channels=settings.frontend.features, classes=len(labels) + 1, width=settings.width)
    models = [fit_one(frames, targets, weights, spec, settings, settings.seed + k, verbose)
              for k in range(settings.ensemble)]
    if len(models) == 1:
        return models[0], spec
    return merge_branches(models, spec), dataclasses.replace(spec, branches=len(models))


def fit_one(frames, targets, weights, spec, settings: TrainSettings, seed: int, verbose: int):
    import keras

    from firmware_tools.model import build_window_model

    keras.utils.set_random_seed(seed)
    model = build_window_model(spec)
    steps = settings.epochs * int(np.ceil(len(frames) / settings.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    model.fit(frames.astype(np.float32), targets, sample_weight=weights, batch_size=settings.batch_size,
              epochs=settings.epochs, verbose=verbose, shuffle=True)
    return model


MISSED = -1  # clip_decision of a one-label model's clip whose background outweighs the label


def clip_decision(posteriors: np.ndarray) -> int:
    """The label of a clip from per-frame posteriors (frames, labels): the one with the most posterior mass.

    The total over the clip, not the peak: int8 posteriors saturate at 255/256, so two labels that both peak
    near 1 tie in int8 where float still tells them apart; the total keeps float and int8 decisions together.
    With one label the background (1 - its posterior) is weighed too, else every clip would be the label: MISSED
    when the background's total is the larger.
    """
    totals = posteriors.sum(axis=0)
    if len(totals) == 1:
        return 0 if totals[0] > len(posteriors) - totals[0] else MISSED
    return int(totals.argmax())


def classify_frames(window_model, frames_list) -> np.ndarray:
    """Clip decisions from the float window model (background column dropped)."""
    predictions = []
    for frames in frames_list:
        scores = np.asarray(window_model(frames[None].astype(np.float32), training=False))[0]
        predictions.append(clip_decision(scores[:, :-1]))
    return np.array(predictions)


def clip_report(labels, truth, predicted) -> dict:
    n = len(labels)
    confusion = np.zeros((n, n), int)
    for t, p in zip(truth, predicted):
        if p != MISSED:
            confusion[t, p] += 1
    counts = np.bincount(np.asarray(truth, int), minlength=n)  # MISSED clips count here, not in the confusion
    # A label with no clips has no recall (None), not 0%.
    recall = {lab: float(confusion[i, i] / counts[i]) if counts[i] else None for i, lab in enumerate(labels)}
    report = {"accuracy": float(np.mean(np.asarray(truth) == np.asarray(predicted))), "clips": int(len(truth)),
              "recall": recall, "confusion": confusion.tolist(), "labels": labels}
    if n == 1:  # the clips the background outweighed the label in (clip_decision)
        report["missed"] = int(sum(p == MISSED for p in predicted))
    return report


def heldout_frames(clips, config: FrontendConfig, audio: dict):
    return [dataset.clip_frames(config, audio[c]) for c in clips]


def leave_one_speaker_out(data_dir, settings: TrainSettings, cache_dir=None, log=print, audio=None) -> dict:
    """One model per speaker, trained without that speaker's clips and scored on them. audio: data_dir's clips
    already read (read_clips), as run_training has them; else they are scanned and read here."""
    clips = list(audio) if audio is not None else dataset.scan_labelled(data_dir)
    labels = label_order(clips)
    speakers = sorted({c.speaker for c in clips} - {dataset.UNKNOWN_SPEAKER})
    if len(speakers) < 2:
        raise ValueError("--loso needs clips of two speakers or more, named LABEL_SPEAKER_TAKE.wav; found "
                         f"{', '.join(speakers) or 'none'}")
    # Every fold is checked now, not hours later when its turn comes
    splits = {speaker: split_holdout(clips, labels, [speaker], option="--loso") for speaker in speakers}
    audio = audio if audio is not None else read_clips(clips, settings.frontend)  # so is every clip
    folds = {}
    for speaker, (test_clips, train_clips) in splits.items():
        t0 = time.time()
        frames, targets, weights = build_examples(train_clips, labels, settings, cache_dir, audio)
        model, _ = fit(frames, targets, weights, labels, settings, verbose=0)
        truth = [labels.index(c.label) for c in test_clips]
        predicted = classify_frames(model, heldout_frames(test_clips, settings.frontend, audio))
        folds[speaker] = clip_report(labels, truth, predicted)
        log(f"held out {speaker}: accuracy {folds[speaker]['accuracy']:.3f} ({time.time() - t0:.0f} s)")
    accuracies = [f["accuracy"] for f in folds.values()]
    return {"folds": folds, "mean_accuracy": float(np.mean(accuracies)), "settings": _settings_dict(settings)}


def reports_by_speaker(labels, clips, predicted: list[str]) -> dict:
    """One clip report per speaker, from pooled predictions: held-out speakers differ by several points, and the
    pooled figure hides which one is hard."""
    reports = {}
    index = lambda label: labels.index(label) if label in labels else MISSED  # None: evaluate_bundle's MISSED
    for speaker in sorted({c.speaker for c in clips}):
        mine = [(c.label, p) for c, p in zip(clips, predicted) if c.speaker == speaker]
        reports[speaker] = clip_report(labels, [labels.index(t) for t, _ in mine], [index(p) for _, p in mine])
    return reports


def _settings_dict(settings: TrainSettings) -> dict:
    d = dataclasses.asdict(settings)
    d["frontend"] = settings.frontend.to_dict()
    return d


def holdout_speakers(holdout: str, speakers: list[str]) -> list[str]:
    """The speakers `--holdout` keeps out of training: 'auto' (the last one), 'none', or names separated by commas
    (holding out two of four speakers shows what a third training speaker is worth, docs/models.md)."""
    named = [s for s in speakers if s != dataset.UNKNOWN_SPEAKER]
    holdout = unicodedata.normalize("NFC", holdout)  # as the speakers are (a Mac's "ü" typed is u and a mark)
    if holdout == "auto":
        return named[-1:] if len(named) > 1 else []
    if holdout == "none":
        return []
    names = [name.strip() for name in holdout.split(",") if name.strip()]
    unknown = [name for name in names if name not in named]
    if unknown or not names:
        what = f"{', '.join(unknown)} is not" if unknown else "names no speaker; name some"
        raise ValueError(f"--holdout {holdout!r}: {what} among the speakers found: {', '.join(named) or 'none'} "
                         "(a file named LABEL_SPEAKER_TAKE.wav names its speaker)")
    if len(set(names)) == len(speakers):
        raise ValueError(f"--holdout {holdout!r} holds out every speaker, which leaves none to train on; "
                         "name fewer, or use --holdout none to train on all")
    return sorted(set(names))


def split_holdout(clips, labels, held_out: list[str], option: str = "--holdout"):
    """(held-out clips, training clips); refused where a label would have no training clip left. option: what
    held them out, for the advice."""
    held = [c for c in clips if c.speaker in held_out]
    train = [c for c in clips if c.speaker not in held_out]
    for label in labels:
        if not any(c.label == label for c in train):
            loso = option == "--loso"
            fix = (f"leave out --loso or record {label!r} by another speaker too" if loso
                   else "hold out another speaker or none (--holdout NAME or --holdout none)")
            raise ValueError(f"{'--loso holds out each speaker in turn: ' if loso else ''}holding out "
                             f"{', '.join(held_out)} leaves no clip of {label!r} to train on (every one is by "
                             f"{' or '.join(held_out)}); {fix}, or name the files {label}_SPEAKER_TAKE.wav so that "
                             "the speaker is read right")
    return held, train


FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # the whole corpus's
FSDD_NAME = re.compile(r"[0-9]_(" + "|".join(FSDD_SPEAKERS) + r")_[0-9]+\.wav")


def fsdd_clips(clips) -> list:
    """The clips named as the Free Spoken Digit Dataset names its recordings ({digit}_{speaker}_{take}.wav, with
    one of its speakers), wherever they are and whatever their label: a bundle trained on any of them is a derivative
    of FSDD and carries its attribution. A speaker's name alone (yes_theo_0.wav) says nothing of where a clip comes
    from."""
    return [c for c in clips if FSDD_NAME.fullmatch(c.path.name)]


def needs_credit(clips, settings: TrainSettings) -> bool:
    """Whether the bundle would name no author of some of the clips: no --data-credit, and clips not FSDD's."""
    return not (settings.data_credit or "").strip() and len(fsdd_clips(clips)) < len(clips)


def synthetic_data(labels, settings: TrainSettings) -> str:
    """What the training synthesized, for the bundle's attribution (what synthesized() makes)."""
    digits = labels == DIGITS
    made, engines = set(), []
    for engine, available, digit_clips, speech in zip(
            ("espeak-ng", "flite"), synth_engines(), (settings.synth_digits, settings.flite_digits),
            (settings.synth_non_target, settings.flite_non_target)):
        engine_made = {"digits"} if available and digits and digit_clips else set()
        engine_made |= {"non-target speech"} if available and speech else set()
        made |= engine_made
        engines += [engine] if engine_made else []
    sounds = SYNTH_SOUNDS if settings.sound_events else "Noise"
    morphs = (f" {settings.morphs_per_label} words of each label in voices between two training speakers', "
              "morphed from their recordings with the WORLD vocoder (pyworld).") if settings.morphs_per_label else ""
    if not made:
        return f"{sounds} synthesized with numpy.{morphs}"
    what = " and ".join(m for m in ("digits", "non-target speech") if m in made)
    return f"Extra {what} synthesized with {' and '.join(engines)}; {sounds.lower()} synthesized with numpy.{morphs}"


def folder_name(data_dir) -> str:
    """DATA_DIR as a shared bundle names it: the folder's own name (`.` typed in it, or a path through the user's
    home, says nothing of the data and what it should not)."""
    return Path(data_dir).resolve().name or str(Path(data_dir).resolve())


def provenance(data_dir, clips, labels, settings: TrainSettings) -> dict:
    """The bundle's provenance: FSDD's license and attribution whenever any clip is FSDD's (fsdd_clips), the user's
    credit after it."""
    from firmware_tools import bundler

    fsdd = fsdd_clips(clips)
    if fsdd:
        out = dict(bundler.FSDD_PROVENANCE)
        speakers = sorted({FSDD_NAME.fullmatch(c.path.name)[1] for c in fsdd})  # FSDD's name, whatever the label
        if len(fsdd) < len(clips):  # the user's own clips beside FSDD's
            out["training_data"] = (f"{folder_name(data_dir)}, with {len(fsdd)} recordings from the Free Spoken "
                                    f"Digit Dataset (Zohar Jackson and contributors), speakers {', '.join(speakers)}")
        elif speakers != ["jackson", "nicolas", "theo", "yweweler"]:  # not the copy the shipped bundle trained on
            out["training_data"] = ("Free Spoken Digit Dataset (Zohar Jackson and contributors), speakers "
                                    + ", ".join(speakers))
    else:
        out = {"training_data": folder_name(data_dir)}
    credit = (settings.data_credit or "").strip()
    if credit:  # a license's attribution comes first; the user's credit follows it
        out["attribution"] = " ".join(filter(None, (out.get("attribution"), credit)))
    out["synthetic_data"] = synthetic_data(labels, settings)
    if settings.recorded_speech:
        out["recorded_speech"] = settings.recorded_speech[2]
    return out


def make_folders(folders: dict) -> None:
    """Create each option's folder (and its parents), or say which option to change and why. folders: {option:
    folder}; a file given for any of them is refused before a folder is made (an empty OUT was left behind)."""
    for option, folder in folders.items():
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{option} {folder} is a file, not a folder; choose a folder for {option}")
    for option, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            writable = os.access(folder, os.W_OK)
        except OSError as exc:
            raise ValueError(f"{option} {folder}: cannot create the folder ({exc.strerror}); choose a folder you can "
                             f"write to for {option}") from None
        if not writable:
            raise ValueError(f"{option} {folder}: cannot write to the folder; choose one you can write to for "
                             f"{option}")


def refuse_folders_in_labels(data_dir, folders: dict, written=()) -> None:
    """--out or --cache-dir in a label folder (`--out data/zero`, `data/zero/model`) is refused: the scan passes it
    by, and the label's clips there with it (a model without 'zero', or with fewer of its clips, without a word).
    folders: {option: folder}; written: folders of audio the run writes itself (dataset.label_folder_around)."""
    for option, folder in folders.items():
        label_folder = dataset.label_folder_around(data_dir, folder, written)
        if label_folder is not None:
            where = "is" if os.path.realpath(folder) == os.path.realpath(label_folder) else "is inside"
            raise ValueError(f"{option} {folder} {where} the label folder {label_folder}: the scan passes {option} "
                             f"by, so the '{label_folder.name}' clips in it would be left out of training; choose a "
                             f"folder for {option} outside the label folders: beside {data_dir}, or a new one in it")


def run_training(data_dir, out_dir, *, holdout="auto", loso=False, cache_dir=None, name="model", log=print,
                 settings: TrainSettings | None = None, detector: dict | None = None) -> dict:
    """The whole `basilar train`: returns a summary and writes model.keras, bundle/ and report.{json,txt}.
    detector: the bundle's detector defaults where they differ from bundler.DEFAULT_DETECTOR."""
    from firmware_tools import bundler, evaluate, pipeline

    out = Path(out_dir)
    bundler.check_destination(out / "bundle")  # now, not after the training
    settings = settings or TrainSettings()
    problems = settings.frontend.design_problems()
    if problems:
        raise ValueError(f"front end: {'; '.join(problems)}")
    folders = {"--cache-dir": Path(cache_dir), "--out": out} if cache_dir else {"--out": out}
    refuse_folders_in_labels(data_dir, folders, written=[out / "bundle", out / "morphs"])
    # Now: a file or a folder it cannot write would fail after the training (the cache when the features are saved)
    make_folders(folders)
    seed = settings.seed
    # What the run writes is no data, should --out or --cache-dir be in DATA_DIR: a second run would read OUT as a
    # label (and OUT/morphs, which are not recordings, as clips); OUT/bundle and OUT/morphs when OUT is DATA_DIR
    written = [out, out / "bundle", out / "morphs", *([Path(cache_dir)] if cache_dir else [])]
    clips = dataset.scan_labelled(data_dir, skip=written, warn=log)
    labels = label_order(clips)
    if labels != DIGITS:  # synthesized words are digits only: the report must not claim any for other labels
        settings = dataclasses.replace(settings, synth_digits=0, flite_digits=0)
    speakers = sorted({c.speaker for c in clips})
    held_out = holdout_speakers(holdout, speakers)
    holdout = ",".join(held_out) or "none"
    log(f"{len(clips)} clips, labels {labels}, speakers {speakers}; holding out: {holdout}")
    bundle_provenance = provenance(data_dir, clips, labels, settings)
    if needs_credit(clips, settings):  # said now, not after the training
        own = len(clips) - len(fsdd_clips(clips))
        whose = f"the {own} clips of {data_dir} not FSDD's" if own < len(clips) else str(data_dir)
        log(f"warning: the bundle's ATTRIBUTION.md will name no author or license for {whose}; give them with "
            "--data-credit before sharing the bundle")
    warn_of_long_clips(clips, settings.frontend, log)
    held, train_clips = split_holdout(clips, labels, held_out)
    audio = read_clips(clips, settings.frontend)
    if settings.morphs_per_label:
        train_clips = with_morphs(train_clips, labels, settings, out / "morphs", log)
    for program, available in zip(("espeak-ng", "flite"), synth_engines()):
        if not available:
            log(f"warning: {program} is not installed, so the recipe's {program} voices are left out and the model "
                f"will differ from the shipped one; install it with `sudo apt install {program}`")
    summary = {"labels": labels, "speakers": speakers, "holdout": holdout, "settings": _settings_dict(settings)}
    if loso:
        summary["leave_one_speaker_out"] = leave_one_speaker_out(data_dir, settings, cache_dir, log=log, audio=audio)

    frames, targets, weights = build_examples(train_clips, labels, settings, cache_dir, audio)
    del audio  # the clips' samples: the fit has no use for them
    log(f"training on {len(frames)} examples of {frames.shape[1]} frames")
    model, spec = fit(frames, targets, weights, labels, settings, verbose=2)
    model_path = out / "model.keras"
    # An earlier run's reports describe its model: gone before this one replaces it, so that a run stopped or failed
    # from here on leaves no report beside a model it does not describe (the new ones are written at the end).
    for report in ("report.json", "report.txt"):
        (out / report).unlink(missing_ok=True)
    model.save(model_path)
    pipeline.write_sidecar(model_path, labels, settings.frontend, bundle_provenance, name)

    calibration, rest = pipeline.split_calibration(train_clips, seed)
    # The agreement is measured on clips the int8 ranges were not calibrated on, when there are any (a folder of
    # 64 clips or fewer all goes to calibration: then it is measured on those, and says so).
    check_clips = held or rest[:300] or calibration
    bundle, conversion = pipeline.convert_into_bundle(model_path, calibration, out / "bundle", settings.frontend,
                                                      labels, provenance=bundle_provenance, name=name,
                                                      detector=detector)
    agreement = evaluate.float_int8_agreement(model, bundle, check_clips)
    held_name = f"held-out speaker{'s' if len(held_out) > 1 else ''} {holdout}"
    on = held_name if held else "training clips" if rest else "the calibration clips (too few clips to keep any out)"
    summary["float_vs_int8"] = {"on": on, **agreement}
    if held:
        summary["heldout_int8"] = evaluate.evaluate_bundle(bundle, held)
        summary["heldout_int8"]["by_speaker"] = reports_by_speaker(labels, held, summary["heldout_int8"]["predicted"])
    summary["model_size_bytes"] = conversion["size_bytes"]
    summary["bundle"] = str(out / "bundle")
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.txt").write_text(format_summary(summary) + "\n")
    log(format_summary(summary))
    return {k: summary[k] for k in ("bundle", "holdout", "model_size_bytes", "float_vs_int8")}


def with_morphs(train_clips, labels, settings: TrainSettings, folder: Path, log) -> list:
    """The training clips and settings.morphs_per_label in-between voices of each label, written to folder (to
    listen to), in one order by file name: a copy of the data folder with the morphs in it trains the same."""
    from firmware_tools import voice_morph

    morphs = voice_morph.draw_morphs(train_clips, labels, settings.morphs_per_label, settings.seed + 5)
    if not morphs:
        raise ValueError("--morphs mixes two speakers saying the same word, and no label has clips of two known "
                         "speakers among the training clips; name files LABEL_SPEAKER_TAKE.wav (7_erin_0.wav), or "
                         "leave --morphs out")
    said = sorted({m.label for m in morphs}, key=labels.index)
    log(f"morphing {len(morphs)} in-between voices ({settings.morphs_per_label} each of {', '.join(said)}) into "
        f"{folder}")
    made = voice_morph.make_morphs(morphs, folder, settings.frontend.sample_rate, progress)
    return sorted(train_clips + made, key=lambda c: (c.path.name, str(c.path)))


def warn_of_long_clips(clips, config, log) -> None:
    """A word is learnt as ending where its clip ends: a longer clip loses its start in training, and silence
    after the word is learnt as part of it. Said before the long steps."""
    room_s = dataset.whole_word_s(config)
    longer = dataset.clips_longer_than(clips, room_s)
    if longer:
        clip, seconds = max(longer, key=lambda found: found[1])
        log(f"warning: {len(longer)} of {len(clips)} labelled clips last longer than {room_s:.2f} s (the longest: "
            f"{clip.path}, {seconds:.2f} s). Training hears each clip as one word that ends where the clip ends, "
            f"and in some examples cuts off what lies more than {room_s:.2f} s before that end: silence after a word "
            "is learnt as part of it, and the start of a long sound is lost. Trim each clip to its sound (e.g. `sox "
            "IN OUT silence 1 0.02 1% reverse silence 1 0.02 1% reverse`)")


def format_summary(summary: dict) -> str:
    from firmware_tools.evaluate import format_report

    lines = [f"labels: {', '.join(summary['labels'])}", f"speakers: {', '.join(summary['speakers'])}"]
    loso = summary.get("leave_one_speaker_out")
    if loso:
        lines.append("leave-one-speaker-out clip accuracy (float): " + ", ".join(
            f"{s} {f['accuracy'] * 100:.1f}%" for s, f in loso["folds"].items())
            + f"; mean {loso['mean_accuracy'] * 100:.1f}%")
    fi = summary.get("float_vs_int8")
    if fi:
        lines.append(f"float vs int8 on {fi['on']} ({fi['clips']} clips): agreement {fi['agreement'] * 100:.1f}%, "
                     f"float {fi['float_accuracy'] * 100:.1f}%, int8 {fi['int8_accuracy'] * 100:.1f}%")
    held = summary.get("heldout_int8")
    if held:
        lines += ["", f"int8 bundle on {fi['on']}:", format_report(held)]
        if len(held.get("by_speaker", {})) > 1:
            lines.append("by speaker: " + ", ".join(f"{s} {r['accuracy'] * 100:.1f}% of {r['clips']}"
                                                    for s, r in held["by_speaker"].items()))
    if "model_size_bytes" in summary:
        lines.append(f"\nstep model: {summary['model_size_bytes']} bytes")
    return "\n".join(lines)
