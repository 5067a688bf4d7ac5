"""`basilar bench telemetry`: the serial telemetry targets, measured.

1. Decoder throughput on typical traffic (detections with a HEALTH now and then), one core.
2. A device process sending detection + health traffic paced to fill a given baud rate, over a real
   pseudo-terminal, for a few seconds: every frame must arrive (zero loss).
3. A long stream with random byte corruption (flipped, dropped, inserted bytes): every frame the corruption
   did not touch must be recovered, and every lost frame must be counted.
"""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time
import tty

import click

from edge.telemetry import DEFAULT_BAUD
from edge.telemetry.protocol import Detection, Health, StreamDecoder, decode_one, encode_frame
from firmware_tools.bench import pin_to_one_cpu
from firmware_tools.cli_types import FloatRange
from firmware_tools.line_noise import Corruption, frames_in, touched
from firmware_tools.telemetry_reader import SequenceTracker, TelemetryReader, TelemetrySession

HEALTH_EVERY = 50  # one HEALTH per this many frames in the synthetic traffic


def typical_traffic(frames: int, seed_ms: int = 0) -> bytes:
    out = bytearray()
    for i in range(frames):
        if i % HEALTH_EVERY == HEALTH_EVERY - 1:
            message = Health(i // 10, 180 + i % 50, 250 + i % 100, i // 1000, 0)
        else:
            message = Detection(i % 12, (i * 7919) % 65536, i * 100, i * 100 + 480)
        out += encode_frame(message, i, seed_ms + i * 7)
    return bytes(out)


def bench_decoder(frames: int, block: int, repeats: int) -> dict:
    stream = typical_traffic(frames)
    results = {}
    for name, make in (("decoder", StreamDecoder), ("session", TelemetrySession)):
        best = float("inf")
        for _ in range(repeats):
            sink = make()
            start = time.perf_counter()
            for i in range(0, len(stream), block):
                sink.feed(stream[i:i + block])
            best = min(best, time.perf_counter() - start)
        decoded = sink.stats.frames if name == "decoder" else sink.decoder.stats.frames
        assert decoded == frames, f"{name} decoded {decoded} of {frames} frames"
        results[name] = {"seconds": best, "mb_per_s": len(stream) / best / 1e6, "frames_per_s": frames / best}
    return {"bytes": len(stream), "frames": frames, "block": block, **results}


DEVICE = r"""
import os, sys, time
from edge.telemetry.emitter import TelemetryEmitter
fd, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
emitter = TelemetryEmitter.from_stream(os.fdopen(fd, "wb", buffering=0), device_id="bench", queue_size=4096)
start = time.monotonic()
sent_bytes = sent = i = 0
while time.monotonic() - start < seconds:
    due = start + sent_bytes / rate  # pace to the line: what a UART at this baud rate would carry
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    if i % 50 == 49:
        emitter.health(i, 0.2, 0.3, 0); sent_bytes += 33
    else:
        emitter.detection(i % 12, 0.8, i * 0.1, i * 0.1 + 0.48); sent_bytes += 27
    sent += 1; i += 1
emitter.log("end"); sent += 1
emitter.close(timeout=10)
print(sent, emitter.dropped)
"""


def bench_line(baud: int, seconds: float, utilization: float) -> dict:
    """A device process writes paced traffic into a pty; the reader reads the other end as a serial port."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    records = []
    reader = TelemetryReader(port, baud, emit=records.append, request_hello=False, say=lambda text: None)
    thread = threading.Thread(target=reader.run, daemon=True)
    rate = baud / 10 * utilization  # bytes per second: 8N1 is 10 bits per byte
    cpu_before = time.process_time()
    thread.start()
    time.sleep(0.3)  # the reader has opened the port (opening it discards what was already waiting)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    device = subprocess.run([sys.executable, "-c", DEVICE, str(master), str(rate), str(seconds)], pass_fds=[master],
                            env=env, capture_output=True, text=True, timeout=seconds + 60)
    if device.returncode != 0:
        raise click.ClickException(f"the device process failed: {device.stderr.strip()}")
    sent, dropped = map(int, device.stdout.split())
    deadline = time.monotonic() + 10
    while not any(r["type"] == "log" for r in records) and time.monotonic() < deadline:
        time.sleep(0.05)
    reader.stop()
    thread.join(5)
    cpu = time.process_time() - cpu_before
    os.close(master)
    os.close(slave)
    counters = reader.session.counters()
    received = counters["frames"]
    return {"baud": baud, "seconds": seconds, "offered_bytes_per_s": rate, "frames_sent": sent,
            "frames_received": received, "lost_frames": counters["lost_frames"], "dropped_on_device": dropped,
            "crc_errors": counters["crc_errors"], "framing_errors": counters["framing_errors"],
            "reader_cpu_percent": 100 * cpu / (seconds + 0.3)}


def bench_corruption(frames: int, rate: float, seed: int) -> dict:
    clean = typical_traffic(frames)
    corruption = Corruption(rate=rate, seed=seed)
    noisy = corruption.apply(clean)
    decoder, tracker, got = StreamDecoder(), SequenceTracker(), []
    for i in range(0, len(noisy), 4096):
        got += decoder.feed(noisy[i:i + 4096])
    for frame in got:
        tracker.observe(frame)
    spans = frames_in(clean)
    sent = [decode_one(encoded) for _, _, encoded in spans]
    hit = {sent[i].seq for i in touched([(lead, trail) for lead, trail, _ in spans], corruption.events)}
    received = {f.seq: f for f in got}
    intact = [f for f in sent if f.seq not in hit]
    recovered = sum(1 for f in intact if f.seq in received and received[f.seq].message == f.message)
    wrong = sum(1 for seq, f in received.items() if f.message != sent[seq].message)
    # lost frames a reader can count: those between the first and the last frame it received (none received: none)
    first, last = (min(received), max(received)) if received else (0, -1)
    countable = sum(1 for f in sent[first:last + 1] if f.seq not in received)
    stats = decoder.stats
    return {"frames": frames, "bytes": len(clean), "byte_error_rate": rate, "corruption_events":
            len(corruption.events), "frames_touched": len(hit), "intact_frames": len(intact),
            "intact_recovered": recovered, "touched_but_recovered": len(received) - recovered - wrong,
            "wrong_frames_accepted": wrong, "lost_frames": countable, "lost_frames_counted": tracker.lost,
            "crc_errors": stats.crc_errors, "framing_errors": stats.framing_errors}


def targets_met(decoder: dict, line: dict, noise: dict) -> bool:
    """>= 1 MB/s decoded; zero loss on the line; under corruption every untouched frame recovered, no wrong one
    accepted, and every lost frame counted (as the README says)."""
    return (decoder["decoder"]["mb_per_s"] >= 1 and line["lost_frames"] == 0
            and line["frames_received"] == line["frames_sent"] and noise["intact_recovered"] == noise["intact_frames"]
            and noise["wrong_frames_accepted"] == 0 and noise["lost_frames_counted"] == noise["lost_frames"])


@click.command()
@click.option("--frames", type=click.IntRange(1000, 10**7), default=200_000, show_default=True,
              help="Frames in the decoder throughput test.")
@click.option("--block", type=click.IntRange(1, 1 << 20), default=4096, show_default=True,
              help="Bytes per read in the throughput test.")
@click.option("--baud", type=click.IntRange(300, 4_000_000), default=DEFAULT_BAUD, show_default=True,
              help="Line rate the paced device traffic fills.")
@click.option("--seconds", type=FloatRange(0.5, 600), default=5.0, show_default=True,
              help="Duration of the paced line test.")
@click.option("--utilization", type=FloatRange(0.01, 1.0), default=0.9, show_default=True,
              help="Fraction of the line's capacity the device sends.")
@click.option("--corruption", "error_rate", type=FloatRange(0, 0.2), default=0.01, show_default=True,
              help="Fraction of bytes corrupted in the noise test.")
@click.option("--seed", default=1, show_default=True, help="Seed of the noise.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def bench_telemetry(frames, block, baud, seconds, utilization, error_rate, seed, as_json):
    """Decoder speed, zero loss at a baud rate over a pty, and recovery under random byte corruption."""
    cpu = pin_to_one_cpu()
    pinned = f"pinned to CPU {cpu}" if cpu is not None else "not pinned: the OS would not pin it"
    decoder = bench_decoder(frames, block, repeats=3)
    line = bench_line(baud, seconds, utilization)
    noise = bench_corruption(min(frames, 50_000), error_rate, seed)
    d, ln, n = decoder, line, noise
    ok = targets_met(decoder, line, noise)
    report = {"cpu": pinned, "decoder": decoder, "line": line, "corruption": noise, "targets_met": ok}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"basilar bench telemetry ({pinned})")
        click.echo(f"decoder     {d['decoder']['mb_per_s']:.1f} MB/s, {d['decoder']['frames_per_s']:,.0f} frames/s "
                   f"(frames to messages); with records for output {d['session']['mb_per_s']:.1f} MB/s "
                   f"[{d['frames']} frames, {d['bytes']} bytes, {d['block']}-byte reads; target >= 1 MB/s]")
        click.echo(f"line        {ln['baud']} baud, {ln['offered_bytes_per_s']:.0f} B/s for {ln['seconds']:g} s "
                   f"over a pty: {ln['frames_received']}/{ln['frames_sent']} frames received, {ln['lost_frames']} "
                   f"lost, {ln['dropped_on_device']} dropped on the device, "
                   f"{ln['crc_errors'] + ln['framing_errors']} bad; reader CPU {ln['reader_cpu_percent']:.1f}% "
                   "[target: zero loss]")
        click.echo(f"corruption  {n['byte_error_rate']:.1%} of {n['bytes']} bytes ({n['corruption_events']} events) "
                   f"touched {n['frames_touched']} of {n['frames']} frames: {n['intact_recovered']}/"
                   f"{n['intact_frames']} untouched frames recovered, {n['touched_but_recovered']} touched ones "
                   f"too, {n['wrong_frames_accepted']} wrong frames accepted; {n['lost_frames_counted']}/"
                   f"{n['lost_frames']} lost frames counted, {n['crc_errors']} CRC + {n['framing_errors']} "
                   "framing errors [target: all untouched recovered, every lost frame counted]")
        click.echo("all targets met" if ok else "TARGETS MISSED")
    if not ok:
        sys.exit(1)
