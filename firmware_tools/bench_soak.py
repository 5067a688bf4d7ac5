"""`basilar bench soak`: `basilar run` over hours or days of audio, as a device listens for days.

The real command in its own process (`basilar run - --json`, pinned to one core), fed one recording round and
round as raw PCM on its standard input, as fast as it takes it. Three things a device that runs for days needs:
- memory: the process's resident memory (VmRSS), sampled as it runs from the end of the first pass to the last
  byte fed (where it is in the audio: bytes written less what the pipe still holds). Its growth from the first
  tenth of those samples, when every buffer has reached its size, to the last tenth is what would fill a device
  in a week (target: <= 2 MB);
- hearing: every pass of the recording after the first hears the same audio after the same audio, so the front
  end, model and detector, all deterministic, must report the same words with the same scores at the same hops
  of the pass. Each pass's detections are compared with the second pass's (the first starts from rest, the last
  is cut by the end of the stream), their hops counted from where that pass began: a pass that differs, or a
  time that drifts, is a state that builds up;
- speed: audio seconds per second of the process's CPU time over the whole run.
The recording is cut to whole hops at the bundle's rate and fed at that rate, so every pass is the same samples
on the same hop grid; with --rate it is resampled once to that rate, cut to whole samples there too, and
`basilar run` resamples it back as it would a microphone's.
"""
from __future__ import annotations

import array
import fcntl
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import click
import numpy as np
import soxr

from edge.sources import RATES
from firmware_tools.bench import last_cpu, pin, pinning
from firmware_tools.bench_run import DEMO, pipeline_and_recording
from firmware_tools.cli_types import FloatRange

TARGETS = {"rss_growth_mb": 2.0, "peak_rss_mb": 150.0, "passes_differing": 0, "max_hop_shift": 2,
           "max_score_change": 0.01}
MIN_WORDS_A_PASS = 1  # a recording in which nothing is heard compares nothing: a target of its own
MIN_PASSES = 4  # the first (from rest), the second (the reference), one compared, the last (closed by the stream's end)
RSS_EVERY_S = 0.02  # wall-clock seconds between memory samples
FEED_BYTES = 1 << 14  # written at a time, so that where the child is in the audio is known to a few ms
SUMMARY = re.compile(r"basilar: done: ([0-9.]+) s of audio")


def rss_mb(pid: int) -> float | None:
    """Resident memory of a running process (decimal MB), or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def compare_passes(detections: list[dict], pass_hops: int, hop_s: float, passes: int) -> dict:
    """Each pass's detections as (label, score, start hop, end hop) within the pass, against the second pass's:
    the passes whose words differ (labels in order), and over the others the largest shift of a word's hops and
    change of its score. The first pass starts from rest and the last is closed by the end of the stream (a word
    running on past it is cut there), so neither is compared. The fixed-point filters carry their rounding residue
    from pass to pass, so a pass's frames may differ from the last one's by one step here and there
    (docs/running.md, "Days of audio"): a score moves in its last digits, a word may move by a hop; what must not
    happen is that it grows."""
    by_pass: list[list[tuple]] = [[] for _ in range(passes)]
    for d in detections:
        start_hop, end_hop = round(d["start_s"] / hop_s), round(d["end_s"] / hop_s)
        k = min(start_hop // pass_hops, passes - 1)
        by_pass[k].append((d["label"], d["score"], start_hop - k * pass_hops, end_hop - k * pass_hops))
    reference = by_pass[1]
    differing, hop_shift, score_change = [], 0, 0.0
    for k in range(2, passes - 1):
        if [d[0] for d in by_pass[k]] != [d[0] for d in reference]:
            differing.append(k)
            continue
        for (_, score, start, end), (_, ref_score, ref_start, ref_end) in zip(by_pass[k], reference):
            hop_shift = max(hop_shift, abs(start - ref_start), abs(end - ref_end))
            score_change = max(score_change, abs(score - ref_score))
    first = None
    if differing:
        first = {"pass": differing[0], "expected": reference, "got": by_pass[differing[0]]}
    counts = [len(p) for p in by_pass[1:-1]]
    return {"per_pass_min": min(counts), "per_pass_max": max(counts),
            "first_pass": len(by_pass[0]), "differing": differing, "first_difference": first, "hop_shift": hop_shift,
            "score_change": round(score_change, 4)}


def memory_figures(samples: list[tuple[float, float]]) -> dict:
    """(audio position in s, RSS MB) samples from the end of the first pass on: the largest in each tenth of the
    run (a step once, or a climb all along), the peak, and the growth from the first tenth to the last."""
    if not samples:
        raise click.ClickException("the run was over before its memory could be sampled after its first pass; "
                                   "give more --hours")
    positions = np.array([p for p, _ in samples])
    rss = np.array([r for _, r in samples])
    first, span = positions[0], positions[-1] - positions[0]
    tenth = np.minimum(((positions - first) / max(span, 1e-9) * 10).astype(int), 9)
    by_tenth = [rss[tenth == k].max() if (tenth == k).any() else None for k in range(10)]
    settled, last = by_tenth[0], by_tenth[9]  # never empty: they hold the first and the last sample
    return {"rss_settled_mb": round(float(settled), 2), "rss_end_mb": round(float(last), 2),
            "rss_growth_mb": round(float(last - settled), 2), "peak_rss_mb": round(float(rss.max()), 2),
            "rss_samples": len(samples),
            "rss_by_tenth_mb": [None if mb is None else round(float(mb), 2) for mb in by_tenth]}


def waiting_in_pipe(pipe) -> int:
    """Bytes written into a pipe that its reader has not read yet (0 once it is closed)."""
    if pipe.closed:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(pipe.fileno(), termios.FIONREAD, count)
    except (OSError, ValueError):  # closed meanwhile
        return 0
    return count[0]


def run_command(bundle: str, rate: int) -> list[str]:
    """`basilar run` reading raw PCM at `rate` from standard input, one JSON line a detection."""
    return [sys.executable, "-m", "firmware_tools.cli", "run", "-", "--bundle", bundle, "--format", "s16_le",
            "--rate", str(rate), "--json"]


def one_pass(recording: np.ndarray, rate: int, hop_samples: int, input_rate: int) -> tuple[int, bytes]:
    """(samples a pass at the bundle's rate, the pass as raw PCM at input_rate): the recording cut to whole hops
    that are also whole samples at input_rate, so that every pass is resampled onto the same grid."""
    step = math.lcm(hop_samples, rate // math.gcd(rate, input_rate))
    pass_samples = len(recording) // step * step
    if pass_samples < 2 * rate:
        raise click.ClickException("the recording is shorter than two seconds; give a longer one with --audio")
    audio = recording[:pass_samples]
    if input_rate != rate:
        size = pass_samples * input_rate // rate
        resampled = soxr.resample(audio.astype(np.float32) / 32768, rate, input_rate)[:size]
        audio = np.clip(np.rint(np.pad(resampled, (0, size - len(resampled))) * 32768), -32768, 32767)
    return pass_samples, audio.astype("<i2").tobytes()


def soak(bundle: str, recording: np.ndarray, rate: int, hop_samples: int, hours: float, cpu: int | None,
         progress=None, input_rate: int | None = None) -> dict:
    """Run `basilar run -` over `hours` of the recording played round and round, as raw PCM at input_rate
    (default the bundle's rate), which `basilar run` resamples as it would a microphone's; see the module's
    text."""
    input_rate = input_rate or rate
    pass_samples, pcm = one_pass(recording, rate, hop_samples, input_rate)
    passes = max(MIN_PASSES, int(np.ceil(hours * 3600 * rate / pass_samples)))
    total_bytes = passes * len(pcm)
    written = [0]  # bytes written to the child so far
    fed_all = threading.Event()
    detections: list[dict] = []
    not_json: list[str] = []
    with tempfile.TemporaryFile() as errors:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # children this process waited for before
        child = subprocess.Popen(run_command(bundle, input_rate), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errors)
        cpu = pin(child.pid, cpu)  # None where the OS would not pin it: reported as cpu null

        def feed():
            try:
                chunks = [pcm[start:start + FEED_BYTES] for start in range(0, len(pcm), FEED_BYTES)]
                for _ in range(passes):
                    for chunk in chunks:
                        child.stdin.write(chunk)
                        written[0] += len(chunk)
                child.stdin.close()
            except (BrokenPipeError, ValueError):
                pass  # the child ended early: said below
            fed_all.set()

        def read():
            for line in child.stdout:  # read to the end whatever comes, so the child never blocks on its output
                try:
                    detections.append(json.loads(line))
                except ValueError:
                    not_json.append(line.decode(errors="replace").strip())

        threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=read, daemon=True)]
        for t in threads:
            t.start()
        samples: list[tuple[float, float]] = []
        began = time.perf_counter()
        reported = 0
        try:
            while child.poll() is None:
                time.sleep(RSS_EVERY_S)
                read_bytes = written[0] - waiting_in_pipe(child.stdin)  # where the child is in the audio
                rss = rss_mb(child.pid)
                # From the end of the first pass (loaded, every buffer at its size) until the last byte is fed:
                # after that the child finishes and exits, which is not what it holds while it listens.
                if rss is not None and read_bytes >= len(pcm) and not fed_all.is_set():
                    samples.append((read_bytes / 2 / input_rate, rss))
                if progress and rss is not None and written[0] * 10 // total_bytes > reported:
                    reported = written[0] * 10 // total_bytes
                    progress(f"{written[0] / 2 / input_rate / 3600:.1f} h of audio fed, RSS {rss:.1f} MB")
        except KeyboardInterrupt:
            child.kill()
            child.wait()
            raise click.Abort() from None
        wall = time.perf_counter() - began
        for t in threads:
            t.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        errors.seek(0)
        stderr = errors.read().decode(errors="replace").strip().splitlines()
    summary = stderr[-1] if stderr else "no message"
    audio_s = passes * pass_samples / rate
    if child.returncode != 0:
        raise click.ClickException(f"`basilar run` exited with status {child.returncode}: {summary}")
    done = SUMMARY.match(summary)
    if written[0] < total_bytes or not done or abs(float(done.group(1)) - audio_s) > 1:
        raise click.ClickException(f"`basilar run` did not end as a full run does ('basilar: done: {audio_s:.1f} s "
                                   f"of audio ...'); it said: {summary}")
    if not_json:
        raise click.ClickException(f"`basilar run --json` printed a line that is not JSON: {not_json[0]!r}")
    hearing = compare_passes(detections, pass_samples // hop_samples, hop_samples / rate, passes)
    return {"audio_hours": round(audio_s / 3600, 2), "passes": passes, "pass_s": round(pass_samples / rate, 2),
            "detections": len(detections), "detections_first_pass": hearing["first_pass"],
            "detections_per_pass_min": hearing["per_pass_min"], "detections_per_pass_max": hearing["per_pass_max"],
            "passes_differing": len(hearing["differing"]), "first_difference": hearing["first_difference"],
            "max_hop_shift": hearing["hop_shift"], "max_score_change": hearing["score_change"],
            "speed_x": round(audio_s / cpu_s, 1), "speed_wall_x": round(audio_s / wall, 1),
            **memory_figures(samples), "summary": summary, "cpu": cpu,
            "warnings": [line for line in stderr if line.startswith("basilar: warning:")]}


@click.command("soak")
@click.option("--bundle", default="default", show_default=True, help="Bundle to run ('default': the shipped one).")
@click.option("--audio", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=DEMO,
              show_default="the demo recording", help="Recording to play round and round.")
@click.option("--hours", type=FloatRange(0.01, 1000), default=24.0, show_default=True,
              help="Hours of audio to run (6 to 9 s of this host's time an hour; four passes at least).")
@click.option("--rate", "input_rate", type=click.IntRange(*RATES), default=None,
              show_default="the bundle's rate", help="Feed raw PCM at this rate, which basilar run resamples as a "
                                                      "microphone's.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--check", is_flag=True, help="Exit non-zero when a target is missed.")
def bench_soak(bundle, audio, hours, input_rate, as_json, check):
    """`basilar run` over hours or days of audio: memory growth, the same hearing pass after pass, speed."""
    pipeline, recording = pipeline_and_recording(bundle, audio)
    cpu = last_cpu()  # for `basilar run`; this process, which feeds and reads it, is not pinned
    say = None if as_json else (lambda text: click.echo(f"  ... {text}", err=True))
    input_rate = input_rate or pipeline.sample_rate
    result = soak(bundle, recording, pipeline.sample_rate, pipeline.hop_samples, hours, cpu, say, input_rate)
    result = {"bundle": pipeline.bundle.id, "input_rate": input_rate, **result}
    missed = [name for name, limit in TARGETS.items() if result[name] > limit]
    missed += ["detections_per_pass_min"] if result["detections_per_pass_min"] < MIN_WORDS_A_PASS else []
    result["targets_met"] = not missed
    if as_json:
        click.echo(json.dumps(result))
    else:
        def mark(name):
            return "ok" if name not in missed else "MISSED"

        for warning in result["warnings"]:
            click.echo(warning, err=True)
        click.echo(f"basilar run -, bundle {pipeline.bundle.id[:12]}, {pinning(result['cpu'])}: "
                   f"{result['audio_hours']} h of audio at {input_rate} Hz, {result['passes']} passes of "
                   f"{result['pass_s']} s")
        click.echo(f"  memory   settled {result['rss_settled_mb']:.1f} MB, at the end {result['rss_end_mb']:.1f} MB: "
                   f"growth {result['rss_growth_mb']:+.2f} MB (target <= {TARGETS['rss_growth_mb']:g} MB)  "
                   f"{mark('rss_growth_mb')}; peak {result['peak_rss_mb']:.1f} MB (target <= "
                   f"{TARGETS['peak_rss_mb']:g} MB)  {mark('peak_rss_mb')}")
        tenths = " ".join("-" if mb is None else f"{mb:.1f}" for mb in result["rss_by_tenth_mb"])
        click.echo(f"           by tenth of the run: {tenths} MB")
        click.echo(f"  hearing  {result['detections']} detections, {result['detections_per_pass_min']}-"
                   f"{result['detections_per_pass_max']} a pass (target >= {MIN_WORDS_A_PASS})  "
                   f"{mark('detections_per_pass_min')} (the first, from rest: {result['detections_first_pass']}); "
                   f"passes unlike the second: {result['passes_differing']} (target 0)  {mark('passes_differing')}")
        click.echo(f"           a word moved at most {result['max_hop_shift']} hops (target <= "
                   f"{TARGETS['max_hop_shift']})  {mark('max_hop_shift')}, its score at most "
                   f"{result['max_score_change']:.4f} (target <= {TARGETS['max_score_change']:g})  "
                   f"{mark('max_score_change')}")
        if result["first_difference"]:
            click.echo(f"           first difference: {json.dumps(result['first_difference'])}")
        click.echo(f"  speed    {result['speed_x']:.1f}x real time (CPU), {result['speed_wall_x']:.1f}x (wall)")
    if check and missed:
        raise click.ClickException(f"target(s) missed: {', '.join(missed)}")
