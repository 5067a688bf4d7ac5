"""Synthesized training voices: real espeak-ng and flite runs, labelled and trimmed as the recipe expects."""
import dataclasses

import numpy as np

from firmware_tools import dataset, training
from tests.conftest import require_program

RATE = 8000
DIGITS = [str(d) for d in range(10)]


def test_flite_digits_are_labelled_trimmed_speech():
    require_program("flite")
    clips = dataset.synth_digits_flite(RATE, 4, seed=1)
    assert [label for _, label in clips] == ["0", "1", "2", "3"]
    for audio, _ in clips:
        assert 0.15 * RATE < audio.size < 2.0 * RATE
        peak = np.abs(audio).max()
        assert 0.05 < peak <= 1.0
        # trimmed like the FSDD recordings: sound from the first sample to the last
        assert min(abs(audio[0]), abs(audio[-1])) > peak * 10 ** (-40 / 20)


def test_flite_synthesis_is_repeatable_for_a_seed():
    require_program("flite")
    first = dataset.synth_non_target_flite(RATE, 2, seed=7)
    again = dataset.synth_non_target_flite(RATE, 2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = dataset.synth_non_target_flite(RATE, 2, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_synthesized_digits_only_for_digit_labels():
    require_program("espeak-ng")
    require_program("flite")
    settings = dataclasses.replace(training.TrainSettings(), synth_digits=2, flite_digits=3, synth_non_target=1,
                                   flite_non_target=2)
    words, speech = training.synthesized(DIGITS, settings)
    assert [label for _, label in words] == ["0", "1", "0", "1", "2"]  # espeak-ng's, then flite's
    assert len(speech) == 3
    words, speech = training.synthesized(["no", "yes"], settings)
    assert words == [] and len(speech) == 3
