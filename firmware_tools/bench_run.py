"""`basilar bench run`: the whole on-device pipeline (front end + model step + detector) on one core.

Three figures, each against its target (times are this thread's CPU time, so that other programs taking the
core do not count as our processing; wall-clock figures are shown beside them):
- speed: audio streamed in 100 ms chunks as `basilar run` does, in multiples of real time (>= 200x);
- per-hop time: the same audio fed one hop at a time, as a low-latency live source would, p50 and p99 of the
  time from a hop's samples to its detector update (p99 <= 1 ms);
- resident memory: peak RSS of this process with the interpreter and bundle loaded, after the two passes above
  and before the benchmark's own arrays of the split below (<= 150 MB, decimal megabytes).
The recording is held once and looped, so the figures do not grow with --seconds. Plus where the time goes (front
end, model steps, detector; CPU time too) from separate passes over the same audio.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import click
import numpy as np

from firmware_tools.bench import pin_to_one_cpu, pinning
from firmware_tools.cli_types import FloatRange

DEMO = Path(__file__).resolve().parent.parent / "edge" / "demo" / "demo.wav"
TARGETS = {"speed_x": 200.0, "hop_p99_ms": 1.0, "peak_rss_mb": 150.0}


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    from edge.sources import FileSource, SourceError

    with FileSource(path, sample_rate) as source:
        chunks = list(source.chunks())
    if not chunks:  # a file of a few samples leaves none at the bundle's rate
        raise SourceError(f"{path} holds no audio at {sample_rate} Hz (it is empty or too short); give a recording "
                          "to stream with --audio")
    return np.concatenate(chunks)


def pipeline_and_recording(bundle: str, audio: Path):
    """The bundle's pipeline (one interpreter thread) and the recording at its rate; a clear error for either."""
    from edge.runloop import Pipeline, PipelineError
    from edge.sources import SourceError

    try:
        pipeline = Pipeline.from_bundle(bundle, num_threads=1)
        return pipeline, load_audio(audio, pipeline.sample_rate)
    except (PipelineError, SourceError) as err:
        raise click.ClickException(str(err)) from err


def looped(recording: np.ndarray, total: int, size: int):
    """`total` samples of the recording played round and round, as views of `size` samples (the last shorter):
    one copy of the recording in memory however long the benchmark runs."""
    # Any `size` samples from any offset are contiguous in the ring (a recording shorter than `size` repeats).
    ring = np.tile(recording, -(-size // len(recording)) + 1)
    for start in range(0, total, size):
        offset = start % len(recording)
        yield ring[offset:offset + min(size, total - start)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB; the target is MB


def measure(pipeline, recording: np.ndarray, seconds: float, chunk_ms: float, hop_seconds: float) -> dict:
    rate = pipeline.sample_rate
    chunk = int(rate * chunk_ms / 1000)
    total_samples = int(seconds * rate)

    # Speed: the run loop's path, 100 ms chunks.
    pipeline.reset()
    detections = 0
    began, began_cpu = time.perf_counter(), time.thread_time()
    for samples in looped(recording, total_samples, chunk):
        detections += len(pipeline.process(samples))
    detections += len(pipeline.flush())
    total, total_cpu = time.perf_counter() - began, time.thread_time() - began_cpu

    # Per-hop time: one hop per call.
    pipeline.reset()
    hop = pipeline.hop_samples
    count = int(hop_seconds * rate) // hop
    per_hop_cpu, per_hop_wall = np.empty(count), np.empty(count)
    for i, samples in enumerate(looped(recording, count * hop, hop)):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        pipeline.process(samples)
        per_hop_wall[i] = time.perf_counter_ns() - w0
        per_hop_cpu[i] = time.thread_time_ns() - c0
    rss = peak_rss_mb()  # the pipeline's, before the arrays of the split below

    # Where the time goes: each stage over the same audio on its own (CPU time, as the figures above).
    pipeline.reset()
    audio = np.concatenate(list(looped(recording, total_samples, chunk)))
    t0 = time.thread_time()
    frames = np.concatenate([pipeline.frontend.process(audio[s:s + chunk]) for s in range(0, len(audio), chunk)])
    t1 = time.thread_time()
    per_chunk = chunk // hop
    posteriors = np.concatenate([pipeline.runner.run(frames[s:s + per_chunk])
                                 for s in range(0, len(frames), per_chunk)])
    t2 = time.thread_time()
    for s in range(0, len(posteriors), per_chunk):  # the detector, with the input levels its end-pointing uses
        samples = audio[s * hop:(s + per_chunk) * hop]
        pipeline.detector.update(posteriors[s:s + per_chunk], pipeline.input_levels(samples))
    t3 = time.thread_time()

    return {
        "audio_s": round(seconds, 1),
        "chunk_ms": chunk_ms,
        "detections": detections,
        "speed_x": round(seconds / total_cpu, 1),
        "speed_wall_x": round(seconds / total, 1),
        "hops_timed": count,
        "hop_p50_ms": round(float(np.percentile(per_hop_cpu, 50)) / 1e6, 4),
        "hop_p99_ms": round(float(np.percentile(per_hop_cpu, 99)) / 1e6, 4),
        "hop_max_ms": round(float(per_hop_cpu.max()) / 1e6, 4),
        "hop_wall_p50_ms": round(float(np.percentile(per_hop_wall, 50)) / 1e6, 4),
        "hop_wall_p99_ms": round(float(np.percentile(per_hop_wall, 99)) / 1e6, 4),
        "frontend_us_per_hop": round((t1 - t0) / len(frames) * 1e6, 2),
        "model_step_us": round((t2 - t1) / len(frames) * 1e6, 2),
        "detector_us_per_hop": round((t3 - t2) / len(frames) * 1e6, 2),
        "peak_rss_mb": round(rss, 1),
    }


@click.command("run")
@click.option("--bundle", default="default", show_default=True, help="Bundle to run ('default': the shipped one).")
@click.option("--audio", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=DEMO,
              show_default="the demo recording", help="Speech to stream (looped to --seconds).")
@click.option("--seconds", type=FloatRange(1, 3600), default=300.0, show_default=True,
              help="Audio to stream for the speed figure.")
@click.option("--hop-seconds", type=FloatRange(1, 3600), default=60.0, show_default=True,
              help="Audio to feed one hop at a time for the per-hop figures.")
@click.option("--chunk-ms", type=FloatRange(10, 1000), default=100.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--check", is_flag=True, help="Exit non-zero when a target is missed.")
def bench_run(bundle, audio, seconds, hop_seconds, chunk_ms, as_json, check):
    """End-to-end speed, per-hop latency and memory of `basilar run` on one core."""
    cpu = pin_to_one_cpu()
    pipeline, recording = pipeline_and_recording(bundle, audio)
    result = measure(pipeline, recording, seconds, chunk_ms, hop_seconds)
    result = {"bundle": pipeline.bundle.id, "cpu": cpu, **result}
    missed = [name for name, limit in TARGETS.items()
              if (result[name] < limit if name == "speed_x" else result[name] > limit)]
    result["targets_met"] = not missed
    if as_json:
        click.echo(json.dumps(result))
    else:
        def mark(name):
            return "ok" if name not in missed else "MISSED"

        click.echo(f"basilar run pipeline, bundle {pipeline.bundle.id[:12]}, {pinning(cpu)}, "
                   f"{result['audio_s']:.0f} s of audio in {chunk_ms:g} ms chunks")
        click.echo(f"  speed (CPU)    {result['speed_x']:8.1f}x real time   (target >= "
                   f"{TARGETS['speed_x']:.0f}x)  {mark('speed_x')}")
        click.echo(f"  speed (wall)   {result['speed_wall_x']:8.1f}x real time")
        click.echo(f"  per hop (CPU)  p50 {result['hop_p50_ms']:.3f} ms, p99 {result['hop_p99_ms']:.3f} ms, max "
                   f"{result['hop_max_ms']:.3f} ms over {result['hops_timed']} hops   (target p99 <= "
                   f"{TARGETS['hop_p99_ms']:g} ms)  {mark('hop_p99_ms')}")
        click.echo(f"  per hop (wall) p50 {result['hop_wall_p50_ms']:.3f} ms, p99 {result['hop_wall_p99_ms']:.3f} ms")
        click.echo(f"  peak RSS       {result['peak_rss_mb']:8.1f} MB   (target <= {TARGETS['peak_rss_mb']:.0f} MB)  "
                   f"{mark('peak_rss_mb')}")
        click.echo(f"  per hop split (CPU)  front end {result['frontend_us_per_hop']:.1f} us, model step "
                   f"{result['model_step_us']:.1f} us, detector {result['detector_us_per_hop']:.1f} us")
    if check and missed:
        raise click.ClickException(f"target(s) missed: {', '.join(missed)}")
