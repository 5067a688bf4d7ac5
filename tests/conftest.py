"""Shared test helpers.

A test that needs a system component (sshd, socat, espeak-ng, ...) may skip on a laptop that lacks it, but
under CI=true a missing component is a failure: CI installs everything, so a skip there would hide a defect.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) when a needed system component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide {what}; install it in .ci/run")
    pytest.skip(f"needs {what}", allow_module_level=True)  # some modules require a package as they are imported


def require_program(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    require(path is not None, f"the program {name!r}")
    return path


def require_module(name: str):
    try:
        return __import__(name)
    except ImportError:
        require(False, f"the Python package {name!r}")


def in_a_room(audio: np.ndarray, rate: int, rt60_s: float, seed: int = 0) -> np.ndarray:
    """`audio` in a strongly reverberant room: the direct sound plus a tail of exponentially decaying noise (-60 dB
    after `rt60_s`) as loud as it; the same length as `audio` plus the tail."""
    n = int(rt60_s * rate)
    tail = np.random.default_rng(seed).standard_normal(n) * 10 ** (-3 * np.arange(n) / n)
    response = tail / np.sqrt(np.sum(tail**2))
    response[0] += 1.0
    size = len(audio) + n - 1
    fft_size = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(audio, fft_size) * np.fft.rfft(response, fft_size), fft_size)[:size]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real bundle (random weights, real int8 TFLite conversion) for tests that need any valid bundle."""
    require_module("tensorflow")
    from tests.bundles import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=1)


@pytest.fixture(scope="session")
def tiny_bundle_v2(tmp_path_factory) -> Path:
    """Another real bundle, different from tiny_bundle (other weights, so another id)."""
    require_module("tensorflow")
    from tests.bundles import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny_v2", seed=2)


def recorded_phrases(folder, texts, rate=16000):
    """Real WAV files of espeak-ng saying `texts`, each padded with half a second of silence on both sides."""
    import soundfile

    from firmware_tools import dataset

    folder.mkdir()
    for i, text in enumerate(texts):
        speech = dataset.espeak(text, "en-us", 50, 160, rate)
        pad = np.zeros(rate // 2)
        soundfile.write(folder / f"p{i}.wav", np.concatenate([pad, speech, pad]), rate)
