"""`basilar telemetry`: read a device's serial telemetry (or replay a raw capture of it)."""
from __future__ import annotations

import contextlib
import sys

import click

from edge.telemetry import DEFAULT_BAUD
from firmware_tools.cli_types import BAUD_RATES, FloatRange, given_options, option_flag
from firmware_tools.stop_signals import stop_signals_routed_to
from firmware_tools.telemetry_reader import (STDOUT, LinesTable, LiveTable, TelemetryReader, TelemetrySession,
                                             escape_what_cannot_be_encoded, open_output_file, open_sink, replay,
                                             stdout_is_terminal, writing_to)


@click.command()
@click.argument("port", required=False)
@click.option("--baud", type=BAUD_RATES, default=DEFAULT_BAUD, show_default=True, help="Line speed.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table", show_default=True,
              help="table: a live view for people; jsonl/csv: one record per line for machines.")
@click.option("--output", type=click.Path(dir_okay=False), help="Also append every record to FILE, flushed as it "
              "arrives (CSV if --format csv, else JSONL).")
@click.option("--replay", "replay_path", type=click.Path(dir_okay=False),
              help="Decode a raw capture file instead of reading a port.")
@click.option("--capture", type=click.Path(dir_okay=False), help="Append the raw bytes from the port to FILE "
              "(for --replay later; runs appended to one FILE replay as runs of their own).")
@click.option("--wait", is_flag=True, help="If PORT does not exist yet, wait for it instead of failing (with "
              "--duration, a port that never opened is still an error).")
@click.option("--passive", is_flag=True, help="Never write to the port (by default the reader asks the device "
              "for its HELLO on connecting).")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many records from the device "
              "(detections, health, logs, HELLO, RELEASES; not the reader's own link and gap records).")
@click.option("--duration", type=FloatRange(min=0), help="Stop after this many seconds.")
def telemetry(port, baud, fmt, output, replay_path, capture, wait, passive, count, duration):
    """Show the telemetry a device sends over PORT (e.g. /dev/ttyUSB0): detections, health and logs.

    Corrupted frames are skipped and counted, lost frames show as sequence gaps, and a port that vanishes
    (cable pulled, device rebooting) is waited for and reopened. A summary goes to stderr at the end.
    """
    if replay_path and port:
        raise click.UsageError("give either PORT or --replay FILE, not both")
    if not replay_path and not port:
        raise click.UsageError("give the serial PORT to read (e.g. /dev/ttyUSB0) or --replay FILE")
    if replay_path:
        refuse_port_options(click.get_current_context())

    escape_what_cannot_be_encoded(sys.stdout)
    session = TelemetrySession()
    sinks = []  # (the name its write errors give, sink)
    written = 0

    def emit(record):
        nonlocal written
        for name, sink in sinks:
            with writing_to(name):
                sink.write(record)
        written += 1

    reader = out_file = None
    opened = stopped = False
    try:
        # Routed before the capture and output files open: either may be a FIFO whose open waits for a reader, and
        # a stop held while the command started ends it here too.
        with stop_signals_routed_to(_end_the_view):
            if not replay_path:
                # Made first: a capture file that cannot be opened stops the command before the port or any output.
                reader = TelemetryReader(port, baud, emit=emit, session=session, capture=capture, wait=wait,
                                         request_hello=not passive)
            if output:
                out_file, file_sink = open_output_file(output, "csv" if fmt == "csv" else "jsonl")
                sinks.append((output, file_sink))
            with writing_to(STDOUT):  # a table or CSV header
                if fmt == "table":
                    live = stdout_is_terminal() and not replay_path
                    sinks.append((STDOUT, LiveTable(sys.stdout, session, port or replay_path) if live
                                  else LinesTable(sys.stdout)))
                else:
                    sinks.append((STDOUT, open_sink(fmt, sys.stdout)))
            opened = True
            if replay_path:
                replay(replay_path, emit, session, max_records=count)
            else:
                reader.run(max_records=count, duration=duration)
    except KeyboardInterrupt:
        stopped = True  # stopping a live view is normal; everything received is already written
    finally:
        if opened or stopped:  # a file that could not be opened has said so, and nothing was read
            for _, sink in sinks:
                with contextlib.suppress(OSError):  # a write to it that failed has already said so
                    sink.close()  # the live table's last screen, before the summary
            click.echo(f"telemetry: {written} record(s) written; {session.summary()}", err=True)
        if out_file:
            with contextlib.suppress(OSError):
                out_file.close()


PORT_ONLY = ("baud", "capture", "wait", "passive", "duration")  # options that mean nothing to a replay


def refuse_port_options(ctx: click.Context) -> None:
    """A replay decodes a whole file at once and opens no port: an option for reading a port would be silently
    ignored, so it is refused (a --duration meant to cut the replay short would not)."""
    given = given_options(ctx, PORT_ONLY)
    if given:
        raise click.UsageError(f"{option_flag(ctx, given[0])} is for reading a port and does nothing with --replay; "
                               "leave it out (--count stops a replay early)")


def _end_the_view(signum, frame):
    """Ctrl-C and SIGTERM end a live view cleanly: every record written, the summary printed, exit 0."""
    raise KeyboardInterrupt
