"""`basilar train DATA_DIR`: features, augmentation, training, int8 conversion and a bundle, with a report."""
import json
from pathlib import Path

import click

from firmware_tools.cli_errors import fail_on, require_extra
from firmware_tools.convert_cmd import bundle_detector, bundle_detector_options


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("basilar-model"), show_default=True,
              help="Folder for model.keras, the bundle and the reports.")
@click.option("--holdout", default="auto", show_default=True,
              help="Speakers to hold out for validation (names separated by commas); 'auto' picks the last "
                   "speaker, 'none' trains on all.")
@click.option("--loso", is_flag=True, help="Also report leave-one-speaker-out accuracy (one model per speaker).")
@click.option("--epochs", type=click.IntRange(1, 500), default=30, show_default=True,
              help="Passes over the training examples.")
@click.option("--width", type=click.IntRange(8, 256), default=48, show_default=True, help="Channels per layer.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds every random draw: synthesized voices, augmentation, initial weights (TensorFlow's "
                   "training is not bit-reproducible on every host).")
@click.option("--ensemble", type=click.IntRange(1, 4), default=1, show_default=True,
              help="Models trained with different seeds and averaged in one network (each step runs them all).")
@click.option("--synth-digits", type=click.IntRange(0, 100_000), default=600, show_default=True,
              help="Digit clips spoken by espeak-ng voices (only when the labels are 0-9).")
@click.option("--synth-speech", type=click.IntRange(0, 100_000), default=1600, show_default=True,
              help="Non-target phrases spoken by espeak-ng voices, for the background class.")
@click.option("--flite-digits", type=click.IntRange(0, 100_000), default=1200, show_default=True,
              help="Digit clips spoken by flite's voices (only when the labels are 0-9).")
@click.option("--flite-speech", type=click.IntRange(0, 100_000), default=800, show_default=True,
              help="Non-target phrases spoken by flite's voices, for the background class.")
@click.option("--speech-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Recordings of people saying no target word, for the background class (with --speech-list: "
                   "those it names).")
@click.option("--speech-list", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The recordings in --speech-dir to use: one a line, NAME or NAME: transcript.")
@click.option("--speech-credit", help="Who recorded the --speech-dir recordings and under what license, for the "
                                     "bundle's ATTRIBUTION.md.")
@click.option("--data-credit", help="Who recorded DATA_DIR's clips and under what license, for the bundle's "
                                   "ATTRIBUTION.md (FSDD's own attribution is written without it).")
@click.option("--copies", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Augmented examples made from each clip.")
@click.option("--background-examples", type=click.IntRange(0, 10**6), default=5000, show_default=True,
              help="Examples of background only (noise, silence, non-target speech).")
@click.option("--sound-events/--no-sound-events", default=True, show_default=True,
              help="Synthesized sounds that are not speech (notes, chords, bells, sweeps, knocks) in the background "
                   "class; --no-sound-events trains recipe 8, the shipped bundle's.")
@click.option("--morphs", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Words of each label in in-between voices, morphed with the WORLD vocoder from two training "
                   "speakers' takes (needs clips named LABEL_SPEAKER_TAKE; written to OUT/morphs).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache" / "basilar",
              show_default=True, help="Where computed features are cached.")
@click.option("--name", default="model", show_default=True, help="Bundle name recorded in the manifest.")
@bundle_detector_options
def train(data_dir, out_dir, holdout, loso, epochs, width, seed, ensemble, synth_digits, synth_speech, flite_digits,
          flite_speech, speech_dir, speech_list, speech_credit, data_credit, copies, background_examples, sound_events,
          morphs, cache_dir, name, threshold, smoothing_ms, refractory_ms):
    """Train a streaming model on labelled audio files (sub-folder per label, or files named LABEL_...)."""
    if (speech_list or speech_credit) and not speech_dir:
        raise click.UsageError("--speech-list and --speech-credit describe recordings in --speech-dir; "
                               "give --speech-dir too")
    if morphs and loso:
        raise click.UsageError("--loso trains one model per speaker without --morphs; for morphed folds run "
                               "`basilar train --holdout NAME --morphs N` once per speaker")
    require_extra("keras", "host", "train")
    if morphs:
        require_extra("pyworld", "host", "train --morphs")
    with fail_on():
        from firmware_tools.training import TrainSettings, run_training

        settings = TrainSettings(width=width, epochs=epochs, seed=seed, copies_per_clip=copies,
                                 background_examples=background_examples, synth_digits=synth_digits,
                                 synth_non_target=synth_speech, flite_digits=flite_digits,
                                 flite_non_target=flite_speech, ensemble=ensemble, data_credit=data_credit,
                                 sound_events=sound_events, morphs_per_label=morphs,
                                 recorded_speech=(str(speech_dir), speech_list and str(speech_list),
                                                  speech_credit or f"recordings from {speech_dir}")
                                 if speech_dir else None)
        if speech_dir and not (speech_credit or "").strip():  # said now, not after the training
            click.echo(f"warning: the bundle's ATTRIBUTION.md will name no author or license for the recordings in "
                       f"{speech_dir}; give them with --speech-credit before sharing the bundle", err=True)
        summary = run_training(data_dir, out_dir, holdout=holdout, loso=loso, settings=settings,
                               cache_dir=cache_dir, name=name, log=click.echo,
                               detector=bundle_detector(threshold, smoothing_ms, refractory_ms))
    click.echo(json.dumps(summary, indent=2))
