"""`basilar frontend` on real WAV files written by soundfile, through click's CliRunner."""
import re
import sys

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from edge.frontend import Frontend, FrontendConfig, reference
from firmware_tools.cli import main
from tests.conftest import require_module


def run(*args):
    return CliRunner().invoke(main, ["frontend", *map(str, args)])


def tone(freq, seconds, rate, amplitude=0.3):
    return amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


@pytest.fixture
def speechlike_16k(tmp_path):
    """1.5 s of 16 kHz int16 mono: a tone glide in noise, so every channel gets something."""
    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    glide = 0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t**2))
    noise = 0.01 * np.random.default_rng(0).standard_normal(t.size)
    samples = np.round((glide + noise) * 32767).astype(np.int16)
    path = tmp_path / "glide.wav"
    soundfile.write(path, samples, rate, subtype="PCM_16")
    return path, samples


def test_frames_are_saved_and_equal_the_front_end_on_the_same_samples(speechlike_16k, tmp_path):
    path, samples = speechlike_16k
    out = tmp_path / "frames.npy"
    result = run(path, "--out", out)
    assert result.exit_code == 0, result.output
    frames = np.load(out)
    np.testing.assert_array_equal(frames, Frontend(FrontendConfig()).process(samples))
    assert frames.shape == (150, 32) and frames.dtype == np.int8
    for text in ("1.50 s, 16000 Hz, 1 channel(s), WAV/PCM_16", f"hash {FrontendConfig().hash()}",
                 "150 frames x 32 channels, int8", "x real time", f"saved      {out}"):
        assert text in result.output
    assert "resampled" not in result.output


def test_spectral_view_and_a_bundles_front_end(speechlike_16k, tmp_path):
    """--spectral-norm-s adds the spectral view; --bundle takes the bundle's whole front end (the default: 8 kHz,
    32 channels and the spectral view, so 64 values per frame)."""
    path, samples = speechlike_16k
    out = tmp_path / "frames.npy"
    result = run(path, "--spectral-norm-s", 1.28, "--out", out)
    assert result.exit_code == 0, result.output
    config = FrontendConfig(spectral_norm_s=1.28)
    np.testing.assert_array_equal(np.load(out), Frontend(config).process(samples))
    assert "150 frames x 64 values (32 channels, then the same channels less" in result.output
    assert "spectral view over 1.28 s" in result.output and f"hash {config.hash()}" in result.output

    from edge.bundle import load_bundle

    default = load_bundle("default", check_model=False).frontend_config
    result = run(path, "--bundle", "default", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"hash {default.hash()}" in result.output and "resampled to 8000 Hz" in result.output
    assert np.load(out).shape[1] == default.features == 64
    refused = run(path, "--bundle", "default", "--channels", 48)
    assert refused.exit_code == 2 and "--bundle sets the front end; drop --channels" in refused.output


@pytest.mark.parametrize("rate, subtype, channels", [(44100, "PCM_24", 2), (48000, "FLOAT", 1),
                                                     (22050, "PCM_32", 3), (8000, "PCM_16", 1)])
def test_any_common_wav_is_resampled_and_a_tone_lands_in_its_channel(tmp_path, rate, subtype, channels):
    path = tmp_path / "tone.wav"
    audio = tone(1000.0, 1.0, rate)
    soundfile.write(path, np.repeat(audio[:, None], channels, axis=1), rate, subtype=subtype)
    out = tmp_path / "frames.npy"
    result = run(path, "--channels", 24, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"{rate} Hz, {channels} channel(s), WAV/{subtype}" in result.output
    assert ("resampled to 16000 Hz (soxr)" in result.output) == (rate != 16000)
    frames = np.load(out)
    assert frames.shape == (100, 24)
    cf = Frontend(FrontendConfig(channels=24)).centre_freqs
    loudest = np.bincount(frames[10:].argmax(axis=1)).argmax()
    assert loudest == np.abs(cf - 1000).argmin()


def test_sample_rate_channels_and_band_options_shape_the_config(speechlike_16k, tmp_path):
    path, _ = speechlike_16k
    out = tmp_path / "frames.npy"
    result = run(path, "--sample-rate", 8000, "--channels", 16, "--f-low", 150, "--out", out)
    assert result.exit_code == 0, result.output
    # At 8 kHz the default 7 kHz top would pass Nyquist: it drops to 7/16 of the rate.
    config = FrontendConfig(sample_rate=8000, channels=16, f_low=150.0, f_high=3500.0)
    assert f"hash {config.hash()}" in result.output and "8000 Hz, 16 channels 150-" in result.output
    assert np.load(out).shape == (150, 16)
    # 22050 Hz needs a hop of whole samples: 10 ms is 220.5 of them, 20 ms 441
    refused = run(path, "--sample-rate", 22050)
    assert refused.exit_code == 1 and "220.5" in refused.output and "--hop-ms" in refused.output
    result = run(path, "--sample-rate", 22050, "--hop-ms", 20, "--out", out)
    assert result.exit_code == 0, result.output
    config = FrontendConfig(sample_rate=22050, hop_ms=20.0, window_ms=40.0)
    assert f"hash {config.hash()}" in result.output and np.load(out).shape == (75, 32)


def test_filter_stage_saves_the_fixed_point_filter_output(speechlike_16k, tmp_path):
    path, samples = speechlike_16k
    out = tmp_path / "filters.npy"
    result = run(path, "--stage", "filters", "--channels", 8, "--out", out)
    assert result.exit_code == 0, result.output
    assert "fixed-point filter output, 8 channels x 24000 samples, float64" in result.output
    np.testing.assert_array_equal(np.load(out), Frontend(FrontendConfig(channels=8)).filterbank(samples))


def test_reference_flag_saves_the_float_reference_which_agrees_with_the_fixed_point(speechlike_16k, tmp_path):
    path, samples = speechlike_16k
    short = tmp_path / "short.wav"
    soundfile.write(short, samples[:4000], 16000, subtype="PCM_16")
    fixed_out, ref_out = tmp_path / "fixed.npy", tmp_path / "ref.npy"
    assert run(short, "--stage", "filters", "--channels", 8, "--out", fixed_out).exit_code == 0
    result = run(short, "--stage", "filters", "--reference", "--channels", 8, "--out", ref_out)
    assert result.exit_code == 0, result.output
    assert "float64 reference filter output" in result.output
    fixed, ref = np.load(fixed_out), np.load(ref_out)
    coefs = reference.erb_filter_coefficients(16000, Frontend(FrontendConfig(channels=8)).centre_freqs)
    np.testing.assert_array_equal(ref, reference.erb_filterbank(samples[:4000] / 32768.0, coefs))
    snr = 10 * np.log10((ref**2).sum(axis=1) / ((fixed - ref) ** 2).sum(axis=1))
    assert snr.min() > 80


@pytest.mark.parametrize("stage", ["frames", "filters"])
def test_plot_writes_a_cochleagram_png(speechlike_16k, tmp_path, stage):
    require_module("matplotlib")
    import matplotlib.image

    path, _ = speechlike_16k
    png = tmp_path / "cochleagram.png"
    result = run(path, "--stage", stage, "--plot", png)
    assert result.exit_code == 0, result.output
    assert f"plot       {png}" in result.output
    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 400 and image.shape[1] >= 800
    assert image[..., :3].std() > 0.1  # a picture, not a blank canvas


def test_plot_without_matplotlib_is_a_clear_error_and_the_frames_are_still_saved(speechlike_16k, tmp_path,
                                                                                  monkeypatch):
    path, _ = speechlike_16k
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` fail
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "frames.npy"
    result = run(path, "--out", out, "--plot", tmp_path / "c.png")
    assert result.exit_code == 1
    assert "--plot needs matplotlib: pip install 'basilar[host]'" in result.output
    assert np.load(out).shape == (150, 32)


def corrupt_wav(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    return path


@pytest.mark.parametrize("make_args, message", [
    (lambda p: [p / "missing.wav"], "missing.wav' does not exist"),
    (lambda p: [corrupt_wav(p)], "cannot read"),
    (lambda p: [p], "is a directory"),
    (lambda p: [p / "glide.wav", "--reference"], "--reference applies to --stage filters"),
    (lambda p: [p / "glide.wav", "--out", p / "frames.txt"], "name a .npy file"),
    (lambda p: [p / "glide.wav", "--out", p / "no" / "such" / "dir.npy"], "cannot write"),
    (lambda p: [p / "glide.wav", "--channels", 4], "channels=4: use 8 to 128 channels"),
    (lambda p: [p / "glide.wav", "--f-high", 9000], "at or above Nyquist.*--f-high"),
    (lambda p: [p / "glide.wav", "--sample-rate", 96000], "integer rate from 8000 to 48000"),
    (lambda p: [p / "glide.wav", "--stage", "spectrum"], "Invalid value for '--stage'"),
    (lambda p: [p / "glide.wav", "--spectral-norm-s", 50], "spectral_norm_s.*--spectral-norm-s"),
    (lambda p: [p / "glide.wav", "--sample-rate", 48000, "--f-low", 20], "f_low=20.0 Hz: at sample_rate=48000 use at "
                                                                          "least 30 Hz.*--f-low"),
    (lambda p: [p / "glide.wav", "--bundle", p / "nothing"], "no bundle at"),
    (lambda p: [p / "glide.wav", "--plot", p / "c.jpgx"], "cannot write the plot .*c.jpgx.*end the name in .png"),
    (lambda p: [p / "glide.wav", "--plot", p / "c"], "c: name the picture's type, e.g. .*c.png"),
])
def test_bad_input_is_a_clear_error_without_a_traceback(speechlike_16k, tmp_path, make_args, message):
    result = run(*make_args(tmp_path))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert re.search(message, result.output), result.output


@pytest.mark.parametrize("plot", [False, True])
def test_a_recording_shorter_than_one_hop_is_refused(tmp_path, plot):
    """Without --plot it printed "0 frames", saved an empty array and exited 0."""
    if plot:
        require_module("matplotlib")
    path = tmp_path / "blip.wav"
    soundfile.write(path, np.full(159, 3000, np.int16), 16000, subtype="PCM_16")
    result = run(path, "--out", tmp_path / "frames.npy", *(["--plot", tmp_path / "c.png"] if plot else []))
    assert result.exit_code == 1, result.output
    assert f"{path} is shorter than one 10 ms hop (159 samples at 16000 Hz)" in result.output
    assert not (tmp_path / "frames.npy").exists() and not (tmp_path / "c.png").exists()


def test_a_recording_that_resampling_leaves_empty_is_named_so(tmp_path):
    """It said the file "holds no audio (0 samples)", though it holds two."""
    path = tmp_path / "two.wav"
    soundfile.write(path, np.full(2, 3000, np.int16), 48000, subtype="PCM_16")
    result = run(path, "--sample-rate", "8000")
    assert result.exit_code == 1
    assert f"{path}'s 2 samples at 48000 Hz leave none at 8000 Hz" in result.output


def test_a_recording_of_no_samples_is_refused(tmp_path):
    """It printed "0 frames" and exited 0."""
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.int16), 8000, subtype="PCM_16")
    result = run(path, "--out", tmp_path / "frames.npy")
    assert result.exit_code == 1 and f"{path} holds no audio (0 samples)" in result.output
    assert "frames" not in result.output.replace("frames.npy", "") and not (tmp_path / "frames.npy").exists()


def test_a_file_cut_short_still_gives_what_is_there_then_fails(speechlike_16k, tmp_path):
    """The frames of the audio before the cut are saved; the exit code and the message say the file is short."""
    path, samples = speechlike_16k
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:data.index(b"data") + 8 + 16000 * 2])  # 1.0 of the header's 1.5 s
    out = tmp_path / "frames.npy"
    result = run(cut, "--out", out)
    assert result.exit_code == 1 and "is cut short" in result.output and "1.00 s" in result.output
    np.testing.assert_array_equal(np.load(out), Frontend(FrontendConfig()).process(samples[:16000]))


def test_the_filter_stage_refuses_what_would_not_fit_in_memory():
    import click

    from firmware_tools.frontend_cmd import check_memory_for_filters

    check_memory_for_filters(16000 * 60, 32, use_reference=True)  # a minute: fits anywhere this runs
    with pytest.raises(click.ClickException, match=r"--stage filters keeps every sample of every channel: "
                                                   r"3840.0 GB for this recording.*shorter excerpt"):
        check_memory_for_filters(10**10, 32, use_reference=False)  # a week at 16 kHz
