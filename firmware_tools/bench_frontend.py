"""`basilar bench frontend`: speed of the fixed-point front end beside the usual alternatives, on one core.

Everything is timed in the same run on the same white noise (best of N repeats, time.perf_counter):
  - ours, whole front end: Frontend.process, int16 samples -> int8 frames;
  - ours, filter stage: the Cython gammatone cascade alone (cython_kernels.gammatone.cascade);
  - scipy.signal.sosfilt running the float64 reference, one channel at a time (four sections per channel);
  - cmsisdsp's arm_biquad_cascade_df1_q31, one channel at a time (four stages, the same filter in Q31);
  - pymicro_features, TFLite-Micro's fixed-point FFT front end (40 channels, fixed), where installed.
Every filter implementation is also checked against the float64 output (SNR), so they all do the same work.

The arithmetic limit: our cascade costs 16 multiply-accumulates per channel-sample (4 sections x a0, a1, b1, b2);
the report gives the MAC rate that implies, and MACs per clock cycle where the clock is known.

`--accuracy` adds the per-channel SNR of the fixed-point filter stage against the float64 reference
(edge.frontend.reference) for white noise at -40 and -6 dBFS.
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable

import click
import numpy as np

from cython_kernels import gammatone
from firmware_tools.bench import pin_to_one_cpu
from firmware_tools.cli_errors import require_extra
from edge.frontend import Frontend, FrontendConfig, reference
from edge.frontend.design import INPUT_SHIFT, SIGNAL_LIMIT, impulse_response_l1
from edge.frontend.state import FrontendState
from firmware_tools.cli_types import FloatRange

MACS_PER_CHANNEL_SAMPLE = 16
SAMPLE_RATE = 16000
TIMING_LEVEL_DBFS = -20.0
ACCURACY_LEVELS_DBFS = (-40.0, -6.0)
NOT_INSTALLED = "not installed: pip install 'basilar[bench]'"
CMSIS_POST_SHIFT = 2  # Q31 coefficients hold coef / 4: the pole terms reach 2


def white_noise(dbfs: float, n: int, seed: int) -> np.ndarray:
    """int16 Gaussian white noise with an RMS of `dbfs` relative to full scale."""
    x = np.random.default_rng(seed).standard_normal(n) * 32768 * 10 ** (dbfs / 20)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


@dataclasses.dataclass
class Contender:
    """One implementation under test. `run()` is timed; `prepare()` runs untimed before each try; `outputs()`
    (untimed, after the race) gives its filter output per channel in the reference's units, for the SNR check."""

    name: str
    channels: int
    run: Callable[[], object]
    prepare: Callable[[], object] = lambda: None
    outputs: Callable[[], list] | None = None
    missing: str | None = None  # why it cannot run here
    best: float = math.inf


def race(contenders: list[Contender], repeats: int) -> None:
    """Best wall time of each contender. The tries go round-robin, so a burst of load on a shared machine hits
    every implementation alike instead of one of them."""
    for _ in range(repeats):
        for c in contenders:
            if c.missing is None:
                c.prepare()
                start = time.perf_counter()
                c.run()
                c.best = min(c.best, time.perf_counter() - start)


def snr_db(test: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / max(((test - ref) ** 2).sum(), 1e-300)))


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "cpu_model": platform.processor() or platform.machine(), "cpu_mhz": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    info["cpu_model"] = value.strip()
                elif key.strip() == "cpu MHz" and info["cpu_mhz"] is None:
                    info["cpu_mhz"] = float(value)
    except OSError:
        pass
    return info


def entry(c: Contender, audio_seconds: float, **extra) -> dict:
    if c.missing is not None:
        return {"name": c.name, "channels": c.channels, "available": False, "note": c.missing}
    return {"name": c.name, "channels": c.channels, "available": True, "seconds": c.best,
            "x_realtime": audio_seconds / c.best,
            "ns_per_channel_sample": c.best / (audio_seconds * SAMPLE_RATE * c.channels) * 1e9, **extra}


def ours(config: FrontendConfig, x: np.ndarray) -> list[Contender]:
    frontend = Frontend(config)
    coef = frontend.coeffs.filterbank.coef
    out = np.empty((x.size, config.channels), np.int32)
    state = FrontendState.initial(frontend.coeffs)

    def at_rest():
        state.filter[:] = 0
        state.filter_io[:] = 0

    scale = float(1 << (15 + INPUT_SHIFT))
    return [
        Contender("basilar front end (int16 -> int8 frames)", config.channels, lambda: frontend.process(x),
                  prepare=frontend.reset),
        # Each try starts from rest, so `out` holds the filter output from rest afterwards.
        Contender("basilar filter stage (Cython cascade)", config.channels,
                  lambda: gammatone.cascade(coef, state.filter, state.filter_io, x, out), prepare=at_rest,
                  outputs=lambda: list(out.T / scale)),
    ]


def per_channel(filter_one, channels) -> None:
    """Run filter_one on every channel, dropping each output before the next (as a streaming user would), so
    the timing is not inflated by holding every channel's output at once."""
    for channel in channels:
        filter_one(channel)


def reference_sos(config: FrontendConfig) -> list[np.ndarray]:
    """Each channel of the float64 reference as four scipy second-order sections."""
    coefs = reference.erb_filter_coefficients(config.sample_rate, Frontend(config).centre_freqs)
    return list(reference.second_order_sections(coefs))


def scipy_sosfilt(config: FrontendConfig, x: np.ndarray) -> Contender:
    """The float64 reference through scipy, one channel at a time; its output is the yardstick for the SNRs."""
    from scipy import signal

    sos = reference_sos(config)
    xf = x / 32768.0
    return Contender("scipy.signal.sosfilt float64 (per channel)", config.channels,
                     lambda: per_channel(lambda s: signal.sosfilt(s, xf), sos),
                     outputs=lambda: [signal.sosfilt(s, xf) for s in sos])


def cmsis_channel(cmsisdsp, fb, channel: int):
    """One channel of our quantised filter as a CMSIS-DSP Q31 biquad cascade instance, at rest."""
    stages = []
    for k in range(4):  # CMSIS stage: y = b0 x + b1 x1 + b2 x2 + a1 y1 + a2 y2 (feedback signs flipped)
        stages += [fb.a0[k, channel], fb.a1[k, channel], 0, -fb.b1[channel], -fb.b2[channel]]
    coefs = (np.array(stages, np.int64) >> (CMSIS_POST_SHIFT - 1)).astype(np.int32)  # Q30 -> Q31 / 2^post_shift
    instance = cmsisdsp.arm_biquad_casd_df1_inst_q31()
    cmsisdsp.arm_biquad_cascade_df1_init_q31(instance, 4, coefs, np.zeros(16, np.int32), CMSIS_POST_SHIFT)
    return instance


def cmsis_biquads(config: FrontendConfig, x: np.ndarray) -> Contender:
    name = "cmsisdsp arm_biquad_cascade_df1_q31 (per channel)"
    try:
        import cmsisdsp
    except ImportError:
        return Contender(name, config.channels, lambda: None, missing=NOT_INSTALLED)
    fb = Frontend(config).coeffs.filterbank
    xq = x.astype(np.int32) << INPUT_SHIFT  # the same headroom as ours
    instances = [cmsis_channel(cmsisdsp, fb, c) for c in range(config.channels)]
    scale = float(1 << (15 + INPUT_SHIFT))
    return Contender(name, config.channels, lambda: per_channel(lambda i: cmsisdsp.arm_biquad_cascade_df1_q31(i, xq),
                                                                instances),
                     outputs=lambda: [cmsisdsp.arm_biquad_cascade_df1_q31(cmsis_channel(cmsisdsp, fb, c), xq) / scale
                                      for c in range(config.channels)])


def micro_frontend(x: np.ndarray) -> Contender:
    name = "pymicro_features (TFLite-Micro FFT front end)"
    try:
        from pymicro_features import MicroFrontend
    except ImportError:
        return Contender(name, 40, lambda: None, missing=NOT_INSTALLED)
    audio = x.tobytes()
    step = 2 * SAMPLE_RATE // 100  # it takes 10 ms (160 samples) per call

    def run():
        frontend = MicroFrontend()
        pos = 0
        while pos + step <= len(audio):
            pos += 2 * frontend.process_samples(audio[pos:pos + step]).samples_read

    return Contender(name, 40, run)


def run_speed(seconds: float, repeats: int, channel_counts: list[int]) -> dict:
    x = white_noise(TIMING_LEVEL_DBFS, int(seconds * SAMPLE_RATE), seed=1)
    groups = []
    for channels in channel_counts:
        config = FrontendConfig(sample_rate=SAMPLE_RATE, channels=channels)
        groups.append([*ours(config, x), scipy_sosfilt(config, x), cmsis_biquads(config, x)])
    micro = micro_frontend(x)
    race([c for group in groups for c in group] + [micro], repeats)

    audio_seconds = x.size / SAMPLE_RATE
    results, speedups = [], []
    for whole, filters, scipy_run, cmsis in groups:
        yardstick = scipy_run.outputs()
        for c in (whole, filters, scipy_run, cmsis):
            extra = {"yardstick": True} if c is scipy_run else {}
            if c.outputs is not None and c is not scipy_run and c.missing is None:
                extra["snr_vs_float64_db"] = min(snr_db(y, ref) for y, ref in zip(c.outputs(), yardstick))
            results.append(entry(c, audio_seconds, **extra))
        for other in (scipy_run, cmsis):
            if other.missing is None:
                speedups.append({"channels": whole.channels, "over": other.name,
                                 "front_end": other.best / whole.best, "filter_stage": other.best / filters.best})
        del yardstick
    results.append(entry(micro, audio_seconds))
    return {"results": results, "speedups": speedups}


def arithmetic(results: list[dict], cpu_mhz: float | None) -> list[dict]:
    out = []
    for r in results:
        if r["name"].startswith("basilar filter stage"):
            rate = MACS_PER_CHANNEL_SAMPLE / (r["ns_per_channel_sample"] * 1e-9)
            out.append({"channels": r["channels"], "macs_per_channel_sample": MACS_PER_CHANNEL_SAMPLE,
                        "gmac_per_s": rate / 1e9, "macs_per_cycle": rate / (cpu_mhz * 1e6) if cpu_mhz else None})
    return out


def run_accuracy(seconds: float, channel_counts: list[int]) -> list[dict]:
    report = []
    for channels in channel_counts:
        config = FrontendConfig(sample_rate=SAMPLE_RATE, channels=channels)
        frontend = Frontend(config)
        coefs = reference.erb_filter_coefficients(SAMPLE_RATE, frontend.centre_freqs)
        bound = impulse_response_l1(frontend.coeffs.filterbank).max() * (32768 << INPUT_SHIFT)
        row = {"channels": channels, "headroom_used": float(bound / SIGNAL_LIMIT), "levels": []}
        for dbfs in ACCURACY_LEVELS_DBFS:
            x = white_noise(dbfs, int(seconds * SAMPLE_RATE), seed=2)
            fixed, ref = frontend.filterbank(x), reference.erb_filterbank(x / 32768.0, coefs)
            snr = 10 * np.log10((ref**2).sum(axis=1) / ((fixed - ref) ** 2).sum(axis=1))
            worst = int(snr.argmin())
            row["levels"].append({"dbfs": dbfs, "snr_min_db": float(snr.min()), "snr_median_db": float(np.median(snr)),
                                  "worst_channel_hz": float(frontend.centre_freqs[worst])})
        report.append(row)
    return report


def format_report(report: dict) -> str:
    m = report["machine"]
    cpu = f"CPU {report['pinned_cpu'] if report['pinned_cpu'] is not None else 'not pinned'} ({m['cpu_model']})"
    timed = (f"{report['audio_seconds']:g} s of white noise at {SAMPLE_RATE} Hz, best of {report['repeats']}, "
             if report.get("results") else "")  # --no-speed: nothing timed
    lines = [f"basilar bench frontend: {timed}{cpu}"]
    if report.get("results"):
        lines.append(f"  {'implementation':<52}{'ch':>4}{'x real time':>13}{'ns/ch-sample':>14}{'SNR dB':>8}")
        for r in report["results"]:
            if not r["available"]:
                lines.append(f"  {r['name']:<52}{r['channels']:>4}  {r['note']}")
                continue
            snr = f"{r['snr_vs_float64_db']:8.1f}" if "snr_vs_float64_db" in r else ("     ref" if r.get("yardstick") else "")
            lines.append(f"  {r['name']:<52}{r['channels']:>4}{r['x_realtime']:>13,.0f}"
                         f"{r['ns_per_channel_sample']:>14.2f}{snr}")
        lines.append(f"  (SNR: each filter's output against float64 on the same {report['timing_signal_dbfs']:g} dBFS noise,"
                     " worst channel)")
        lines.append("  speed-up of ours (whole front end / filter stage alone) over:")
        for s in report["speedups"]:
            lines.append(f"    {s['over']:<50} {s['channels']:>3} ch: {s['front_end']:5.1f}x / "
                         f"{s['filter_stage']:5.1f}x")
        lines.append(f"  arithmetic: {MACS_PER_CHANNEL_SAMPLE} multiply-accumulates per channel-sample")
        for a in report["arithmetic"]:
            per_cycle = (f", {a['macs_per_cycle']:.2f} MAC per cycle at {m['cpu_mhz']:.0f} MHz"
                         if a["macs_per_cycle"] else "")
            lines.append(f"    {a['channels']} ch filter stage: {a['gmac_per_s']:.2f} GMAC/s{per_cycle}")
    if report.get("accuracy"):
        lines.append(f"accuracy: fixed-point filter stage vs float64 reference, {report['accuracy_seconds']:g} s "
                     "of white noise per level, SNR per channel")
        for row in report["accuracy"]:
            for level in row["levels"]:
                lines.append(f"  {row['channels']:>3} ch at {level['dbfs']:>5.0f} dBFS: min {level['snr_min_db']:6.1f} dB"
                             f" ({level['worst_channel_hz']:.0f} Hz), median {level['snr_median_db']:6.1f} dB")
            lines.append(f"  {row['channels']:>3} ch full scale: the worst input reaches "
                         f"{100 * row['headroom_used']:.0f}% of the 2^30 signal bound (proven: no overflow)")
    return "\n".join(lines)


def parse_channels(ctx, param, value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
        for c in counts:
            FrontendConfig(channels=c)
    except ValueError as err:
        raise click.BadParameter(f"{value!r}: give channel counts from 8 to 128, e.g. 32,64 ({err})") from None
    if not counts:
        raise click.BadParameter(f"{value!r} names no channel count; give one or more, e.g. 32,64")
    return counts


@click.command()
@click.option("--seconds", type=FloatRange(0.05, 600), default=10.0, show_default=True,
              help="Length of the noise each implementation processes.")
@click.option("--repeats", type=click.IntRange(1, 1000), default=5, show_default=True, help="Best of this many runs.")
@click.option("--channels", default="32,64", show_default=True, callback=parse_channels,
              help="Comma-separated channel counts.")
@click.option("--cpu", type=int, default=None, help="CPU to pin to [default: the last one available].")
@click.option("--accuracy", is_flag=True, help="Also report per-channel SNR against the float64 reference.")
@click.option("--accuracy-seconds", type=FloatRange(0.05, 600), default=1.0, show_default=True,
              help="Noise length per level for --accuracy (the float reference is slow pure NumPy).")
@click.option("--no-speed", is_flag=True, help="Skip the timings (with --accuracy: the accuracy report only).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench_frontend(seconds, repeats, channels, cpu, accuracy, accuracy_seconds, no_speed, as_json):
    """Time the front end on one core beside scipy, CMSIS-DSP and TFLite-Micro's front end."""
    if no_speed and not accuracy:
        raise click.UsageError("--no-speed leaves nothing to measure; add --accuracy")
    if not no_speed:
        # its yardstick (the accuracy report alone needs none); on a device scipy alone, not the host's tensorflow
        require_extra("scipy", "host", "bench frontend", install="scipy")
    pinned = pin_to_one_cpu(cpu)
    info = machine()
    report = {"machine": info, "pinned_cpu": pinned, "sample_rate": SAMPLE_RATE}
    if not no_speed:  # the timing's settings only where a timing ran
        report.update({"audio_seconds": seconds, "repeats": repeats, "timing_signal_dbfs": TIMING_LEVEL_DBFS})
        report.update(run_speed(seconds, repeats, channels))
        report["arithmetic"] = arithmetic(report["results"], info["cpu_mhz"])
    if accuracy:
        report["accuracy_seconds"] = accuracy_seconds
        report["accuracy"] = run_accuracy(accuracy_seconds, channels)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
