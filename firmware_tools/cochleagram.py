"""Cochleagram pictures: front-end frames (or filter outputs) against time and centre frequency.

matplotlib is an optional extra (`pip install 'basilar[host]'`); it is imported only when a picture is drawn.
"""
from __future__ import annotations

import numpy as np

from edge.frontend import OUTPUT_SCALE_DB, OUTPUT_ZERO_POINT, FrontendConfig

FREQ_TICKS_HZ = [20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]
FILTER_FLOOR_DB = -100.0


class PlotError(Exception):
    """The picture cannot be drawn; the message says why and what to do."""


def frames_to_db(frames: np.ndarray) -> np.ndarray:
    """int8 frames -> dB relative to the level normaliser's reference (0 dB = zero point 127)."""
    return (frames.astype(np.float64) - OUTPUT_ZERO_POINT) * OUTPUT_SCALE_DB


def filter_output_to_db(filtered: np.ndarray, hop_samples: int) -> np.ndarray:
    """(channels, samples) filter output -> (hops, channels) RMS level in dB re a full-scale sine."""
    hops = filtered.shape[1] // hop_samples
    blocks = filtered[:, :hops * hop_samples].reshape(filtered.shape[0], hops, hop_samples)
    rms = np.sqrt((blocks**2).mean(axis=2)).T
    return np.maximum(20 * np.log10(np.maximum(rms * np.sqrt(2), 1e-12)), FILTER_FLOOR_DB)


def _band_edges(centre_freqs: np.ndarray) -> np.ndarray:
    """Edges between channels (geometric midpoints), so each channel's row is drawn around its centre."""
    cf = np.asarray(centre_freqs, dtype=np.float64)
    if cf.size == 1:
        return np.array([cf[0] / 1.1, cf[0] * 1.1])
    mid = np.sqrt(cf[1:] * cf[:-1])
    return np.concatenate([[cf[0] ** 2 / mid[0]], mid, [cf[-1] ** 2 / mid[-1]]])


def draw(levels_db: np.ndarray, centre_freqs: np.ndarray, config: FrontendConfig, path: str, *, title: str,
         colour_label: str, vmin: float, vmax: float, int8_codes: bool) -> None:
    """Write a PNG of levels_db (hops, channels). With int8_codes the colour bar also shows the int8 values."""
    if levels_db.shape[0] == 0:
        raise PlotError(f"nothing to plot: the audio is shorter than one {config.hop_ms:g} ms hop")
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
    except ImportError as err:
        raise PlotError("--plot needs matplotlib: pip install 'basilar[host]' (or pip install matplotlib)") from err

    hop_s = config.hop_samples / config.sample_rate
    times = np.arange(levels_db.shape[0] + 1) * hop_s
    edges = _band_edges(centre_freqs)
    width = float(np.clip(4 + times[-1] * 0.25, 8, 16))
    fig = Figure(figsize=(width, 4.8), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(times, edges, levels_db.T, cmap="magma", vmin=vmin, vmax=vmax, shading="flat",
                         rasterized=True)
    ax.set_yscale("log")
    ticks = [f for f in FREQ_TICKS_HZ if edges[0] <= f <= edges[-1]]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(ticks, [f"{f:g}" for f in ticks])
    ax.set_ylim(edges[0], edges[-1])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("centre frequency (Hz)")
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(mesh, ax=ax, pad=0.04 if int8_codes else 0.01)
    bar.set_label(colour_label)
    if int8_codes:
        codes = bar.ax.secondary_yaxis(
            "left", functions=(lambda db: db / OUTPUT_SCALE_DB + OUTPUT_ZERO_POINT,
                             lambda q: (q - OUTPUT_ZERO_POINT) * OUTPUT_SCALE_DB))
        codes.set_ylabel("int8 value")
    try:
        fig.savefig(path)
    except OSError as err:
        raise PlotError(f"cannot write the plot to {path} ({err.strerror or err}); pick a writable path") from err
    except ValueError as err:  # matplotlib: a file suffix it has no writer for
        raise PlotError(f"cannot write the plot to {path} ({err}); end the name in .png, .svg or .pdf") from err
