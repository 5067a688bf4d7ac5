"""`basilar frontend IN.wav`: run the cochlea front end over an audio file, save and picture what it makes."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from edge.frontend import OUTPUT_SCALE_DB, OUTPUT_ZERO_POINT, Frontend, FrontendConfig, FrontendConfigError
from edge.sources import FileSource, SourceError
from firmware_tools.cli_types import given_options

DEFAULTS = FrontendConfig()
HIGHEST_F_HIGH = 7 / 16  # of the sample rate, when the default f_high would reach Nyquist (3500 Hz at 8 kHz)


def read_audio(path: str, sample_rate: int) -> tuple[np.ndarray, FileSource, SourceError | None]:
    """The whole file as int16 mono at sample_rate (downmixed, resampled with soxr), the opened source, and the
    error that ended the reading early (a file cut short or damaged: the audio before it is returned)."""
    chunks, error = [], None
    with FileSource(path, sample_rate, chunk_ms=1000) as source:
        try:
            for chunk in source.chunks():
                chunks.append(chunk)
        except SourceError as err:
            error = err
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return samples, source, error


def make_config(sample_rate: int, channels: int, f_low: float | None, f_high: float | None,
                spectral_norm_s: float, hop_ms: float = DEFAULTS.hop_ms) -> FrontendConfig:
    if f_high is None:
        f_high = min(DEFAULTS.f_high, HIGHEST_F_HIGH * sample_rate)
    try:  # the window stays two hops, as by default
        config = FrontendConfig(sample_rate=sample_rate, channels=channels, f_high=float(f_high),
                                f_low=float(DEFAULTS.f_low if f_low is None else f_low),
                                spectral_norm_s=spectral_norm_s, hop_ms=hop_ms,
                                window_ms=DEFAULTS.window_ms / DEFAULTS.hop_ms * hop_ms)
        problems = config.design_problems()
        if problems:
            raise FrontendConfigError("; ".join(problems))
    except FrontendConfigError as err:
        raise click.ClickException(f"front-end settings: {err} (options --sample-rate, --channels, --f-low, "
                                   "--f-high, --hop-ms, --spectral-norm-s)") from None
    return config


def bundle_config(ctx: click.Context, bundle: str) -> FrontendConfig:
    """The front end of a bundle (what its model hears); the options that would shape another are refused."""
    from edge.bundle import BundleError, load_bundle

    shaping = given_options(ctx, ("channels", "sample_rate", "f_low", "f_high", "hop_ms", "spectral_norm_s"))
    if shaping:
        raise click.UsageError(f"--bundle sets the front end; drop --{shaping[0].replace('_', '-')}")
    try:
        return load_bundle(bundle, check_model=False).frontend_config
    except BundleError as err:
        raise click.ClickException(str(err)) from None


def run_stage(config: FrontendConfig, samples: np.ndarray, stage: str, use_reference: bool):
    """Returns (output array, seconds taken). Frames: int8 (frames, channels); filters: float64 (channels, n)."""
    frontend = Frontend(config)
    start = time.perf_counter()
    if stage == "frames":
        out = frontend.process(samples)
    elif use_reference:
        from edge.frontend import reference

        coefs = reference.erb_filter_coefficients(config.sample_rate, frontend.centre_freqs)
        out = reference.erb_filterbank(samples / 32768.0, coefs)
    else:
        out = frontend.filterbank(samples)
    return out, time.perf_counter() - start


def check_memory_for_filters(samples: int, channels: int, use_reference: bool) -> None:
    """The filter stage keeps every sample of every channel (int32, then float64; the reference more): refuse a
    recording whose output would not fit in the memory there is, before the system's out-of-memory killer ends it."""
    needed = samples * channels * (8 * 3 if use_reference else 4 + 8)
    try:
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return  # not Linux: no figure to check against
    if needed > available:
        raise click.ClickException(
            f"--stage filters keeps every sample of every channel: {needed / 1e9:.1f} GB for this recording, and "
            f"{available / 1e9:.1f} GB of memory is available. Give it a shorter excerpt (e.g. `sox IN.wav "
            "part.wav trim 0 30`) or fewer --channels; the frames stage streams and needs little")


def describe_output(out: np.ndarray, config: FrontendConfig, stage: str, use_reference: bool) -> str:
    if stage == "frames":
        if config.features == config.channels:
            shape = f"{out.shape[0]} frames x {out.shape[1]} channels"
        else:
            shape = (f"{out.shape[0]} frames x {out.shape[1]} values ({config.channels} channels, then the same "
                     "channels less the running average spectral shape)")
        return (f"{shape}, int8 ({OUTPUT_SCALE_DB:.3f} dB per step, "
                f"{OUTPUT_ZERO_POINT} = the normaliser's reference level)")
    which = "float64 reference" if use_reference else "fixed-point"
    return (f"{which} filter output, {out.shape[0]} channels x {out.shape[1]} samples, float64 "
            "(int16 full scale = 1.0)")


def save(out: np.ndarray, path: Path) -> None:
    try:
        np.save(path, out)
    except OSError as err:
        raise click.ClickException(f"cannot write {path} ({err.strerror or err}); pick a writable path") from None


def plot(out: np.ndarray, config: FrontendConfig, centre_freqs, stage: str, use_reference: bool, source_name: str,
         path: Path) -> None:
    from firmware_tools import cochleagram

    if stage == "frames":
        levels = cochleagram.frames_to_db(out[:, :config.channels])  # the level-normalised channels
        title = f"{source_name}: front-end frames, {config.channels} channels, hop {config.hop_ms:g} ms"
        label = f"dB re the normaliser's reference ({OUTPUT_SCALE_DB:.3f} dB per int8 step)"
        low, high, codes = (-128 - OUTPUT_ZERO_POINT) * OUTPUT_SCALE_DB, 0.0, True
    else:
        levels = cochleagram.filter_output_to_db(out, config.hop_samples)
        which = "float64 reference" if use_reference else "fixed-point"
        title = f"{source_name}: {which} gammatone filter output, RMS per {config.hop_ms:g} ms"
        label = "dB re full-scale sine"
        low, high, codes = -90.0, 0.0, False
    try:
        cochleagram.draw(levels, centre_freqs, config, str(path), title=title, colour_label=label, vmin=low,
                         vmax=high, int8_codes=codes)
    except cochleagram.PlotError as err:
        raise click.ClickException(str(err)) from None


@click.command()
@click.argument("audio", metavar="IN.wav", type=click.Path(exists=True, dir_okay=False))
@click.option("--channels", type=int, default=DEFAULTS.channels, show_default=True,
              help="Gammatone channels, equally spaced on the ERB-rate scale.")
@click.option("--sample-rate", type=int, default=DEFAULTS.sample_rate, show_default=True,
              help="Rate the audio is resampled to before the front end (Hz).")
@click.option("--f-low", type=float, default=None, help=f"Lowest centre frequency in Hz  [default: {DEFAULTS.f_low:g}]")
@click.option("--f-high", type=float, default=None,
              help=f"Upper end of the channel span in Hz  [default: {DEFAULTS.f_high:g}, or 7/16 of the sample "
                   "rate if that is lower]")
@click.option("--hop-ms", type=float, default=DEFAULTS.hop_ms, show_default=True,
              help="Frame hop in ms (the window is two hops); it must be a whole number of samples: 20 ms at "
                   "22050 or 44100 Hz.")
@click.option("--spectral-norm-s", type=float, default=DEFAULTS.spectral_norm_s, show_default=True,
              help="Add the spectral view (each channel less its running average over this many seconds of "
                   "sound; 0 for none).")
@click.option("--bundle", help="Use this bundle's front end ('default': the shipped one), to see what its model "
                               "hears.")
@click.option("--stage", type=click.Choice(["frames", "filters"]), default="frames", show_default=True,
              help="frames: the int8 frames a model takes; filters: the gammatone filter outputs.")
@click.option("--reference", "use_reference", is_flag=True,
              help="With --stage filters: use the float64 reference filterbank instead of the fixed-point one.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the output as a NumPy .npy file: frames (frames, channels) int8, or filter output "
                   "(channels, samples) float64.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw a cochleagram PNG (needs matplotlib).")
@click.pass_context
def frontend(ctx, audio, channels, sample_rate, f_low, f_high, hop_ms, spectral_norm_s, bundle, stage, use_reference,
             out, plot_path):
    """Run the cochlea front end over IN.wav (any WAV/FLAC/OGG, any rate, width and channel count).

    Prints a summary; --out saves the frames (or the filter output with --stage filters); --plot draws a
    cochleagram.
    """
    if use_reference and stage != "filters":
        raise click.UsageError("--reference applies to --stage filters (the frames stage is integer-only)")
    if out is not None and out.suffix != ".npy":
        raise click.BadParameter(f"{out}: name a .npy file, e.g. {out.with_suffix('.npy')}", param_hint="--out")
    if plot_path is not None and not plot_path.suffix:  # matplotlib would add .png to the name given
        raise click.BadParameter(f"{plot_path}: name the picture's type, e.g. {plot_path}.png (or .svg, .pdf)",
                                 param_hint="--plot")
    config = bundle_config(ctx, bundle) if bundle else make_config(sample_rate, channels, f_low, f_high,
                                                                    spectral_norm_s, hop_ms)
    try:
        samples, source, read_error = read_audio(audio, config.sample_rate)
    except SourceError as err:
        raise click.ClickException(str(err)) from None
    if not samples.size:  # "0 frames" and exit 0 said nothing was wrong
        raise click.ClickException(
            str(read_error) if read_error
            else f"{audio}'s {source.frames_read} samples at {source.file_rate} Hz leave none at "
                 f"{config.sample_rate} Hz; give a longer recording" if source.frames_read
            else f"{audio} holds no audio (0 samples); give a recording with sound in it")
    if stage == "frames" and samples.size < config.hop_samples and read_error is None:
        raise click.ClickException(
            f"{audio} is shorter than one {config.hop_ms:g} ms hop ({samples.size} samples at {config.sample_rate} "
            "Hz), so it makes no frame; give a longer recording")
    if stage == "filters":
        check_memory_for_filters(samples.size, config.channels, use_reference)

    result, seconds = run_stage(config, samples, stage, use_reference)
    duration = samples.size / config.sample_rate
    speed = f"{duration / seconds:,.0f}x real time" if seconds > 0 and duration > 0 else "n/a"
    resampled = f", resampled to {config.sample_rate} Hz (soxr)" if source.file_rate != config.sample_rate else ""
    cf = Frontend(config).centre_freqs  # the design is cached: no second filter design
    click.echo(f"input      {audio}: {duration:.2f} s, {source.file_rate} Hz, {source.file_channels} channel(s), "
               f"{source.file_format}{resampled}")
    click.echo(f"front end  {config.sample_rate} Hz, {config.channels} channels {cf[0]:.0f}-{cf[-1]:.0f} Hz "
               f"(ERB-spaced), hop {config.hop_ms:g} ms, window {config.window_ms:g} ms"
               + (f", spectral view over {config.spectral_norm_s:g} s" if config.spectral_norm_s else ""))
    click.echo(f"config     hash {config.hash()}")
    click.echo(f"output     {describe_output(result, config, stage, use_reference)}")
    click.echo(f"time       {seconds:.3f} s ({speed})")
    if out is not None:
        save(result, out)
        click.echo(f"saved      {out}")
    if plot_path is not None:
        plot(result, config, cf, stage, use_reference, Path(audio).name, plot_path)
        click.echo(f"plot       {plot_path}")
    if read_error is not None:
        raise click.ClickException(str(read_error))
