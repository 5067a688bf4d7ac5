"""`basilar run`, `basilar devices`, `basilar service`: the on-device runtime's commands.

The click layer only parses options and turns errors into messages; the work is in edge.runloop and friends.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import unicodedata
from pathlib import Path

import click

from edge.detector import TRIGGERS, same_label
from edge.sources import PCM_FORMATS, RATES, SourceError, StopFlag, parse_mic_spec
from edge.telemetry import DEFAULT_BAUD
from firmware_tools.cli_types import BAUD_RATES, FloatRange, given_options, option_flag
from firmware_tools.stop_signals import route_stop_signals

DEFAULT_ROOT = "/opt/basilar"
DEMO_RECORDING = Path(__file__).resolve().parent.parent / "edge" / "demo" / "demo.wav"


def demo_audio(audio: str) -> Path | None:
    """The shipped demo recording, when AUDIO is the word `demo` and no file of that name is here (a folder of that
    name, as in edge/, is no recording)."""
    return DEMO_RECORDING if audio == "demo" and not Path(audio).is_file() else None


def input_kind(audio: str) -> str:
    """What AUDIO names: "stdin" (`-`), "mic" (mic[:DEVICE]) or "file"."""
    return "stdin" if audio == "-" else "mic" if parse_mic_spec(audio)[0] else "file"


# The options that describe the input, and the inputs they describe. Given for another input they are refused, not
# ignored: a stereo WAV's `--channels 2` or a file's `--rate 48000` would otherwise change nothing without a word.
INPUT_OPTIONS = {"pcm_format": ("stdin",), "rate": ("stdin",), "channels": ("stdin", "mic"), "realtime": ("file",)}
WHY_NOT = {
    ("file", "pcm_format"): "a file is read by its own header",
    ("file", "rate"): "a file is read by its own header",
    ("file", "channels"): "a file is read by its own header (its channels are averaged)",
    ("mic", "pcm_format"): "a microphone is opened at a rate and format it supports, and resampled",
    ("mic", "rate"): "a microphone is opened at a rate and format it supports, and resampled",
    ("mic", "realtime"): "a microphone is live already",
    ("stdin", "realtime"): "standard input comes at the pace of what writes it (to pace a file, give the file)",
}
INPUT_NAMES = {"stdin": "standard input", "mic": "a microphone", "file": "a file"}
INPUTS_DESCRIBED = {"stdin": "raw PCM on standard input ('-')", "mic": "a microphone (mic[:DEVICE])", "file": "a file"}


def refuse_input_options_that_do_not_apply(ctx: click.Context, audio: str) -> None:
    """A usage error for an input option given on the command line that does not describe AUDIO's kind."""
    kind = input_kind(audio)
    for name in given_options(ctx, INPUT_OPTIONS):
        kinds = INPUT_OPTIONS[name]
        if kind in kinds:
            continue
        option = option_flag(ctx, name)
        described = " or ".join(INPUTS_DESCRIBED[k] for k in kinds)
        raise click.UsageError(f"{option} is for {described}, not {INPUT_NAMES[kind]}: {WHY_NOT[kind, name]}; leave "
                               f"{option} out" + (" (headerless PCM in a file: `basilar run - --format F --rate R "
                                                  "--channels N < FILE`)" if kind == "file" else ""))


# The serial link's options: what each needs to do anything (given without it they are refused, not ignored), and
# what it does
LINK_OPTIONS = {"baud": (("serial",), "sets the speed of the --serial link"),
                "device_id": (("serial",), "names this device in the --serial link's HELLO"),
                "keep": (("serial", "root"), "is how many releases stay under --root after a bundle is uploaded over "
                                             "--serial")}


def refuse_link_options_without_a_link(ctx: click.Context, serial: str | None, root: Path | None) -> None:
    """A usage error for --baud, --device-id or --keep given without the --serial (and --root) they act through."""
    have = {"serial": serial is not None, "root": root is not None}
    for name in given_options(ctx, LINK_OPTIONS):
        needs, does = LINK_OPTIONS[name]
        missing = [f"--{need}" for need in needs if not have[need]]
        if missing:
            option = option_flag(ctx, name)
            raise click.UsageError(f"{option} {does}, and {' and '.join(missing)} "
                                   f"{'is' if len(missing) == 1 else 'are'} not given: it would change nothing; "
                                   f"add {' and '.join(missing)}, or leave {option} out")


def parse_label_thresholds(pairs: tuple[str, ...]) -> dict[str, float]:
    thresholds = {}
    for pair in pairs:
        label, sep, value = pair.rpartition("=")
        label = same_label(label)  # as the bundle's labels are compared
        try:
            if not sep or not label:
                raise ValueError
            value = float(value)
        except ValueError:
            raise click.BadParameter(f"{pair!r}: write LABEL=VALUE, e.g. --threshold-for 7=0.8",
                                     param_hint="--threshold-for") from None
        if label in thresholds:  # which one was meant cannot be told
            raise click.BadParameter(f"label {label!r} is given twice ({label}={thresholds[label]:g} and {pair}); "
                                     "give each label once", param_hint="--threshold-for")
        thresholds[label] = value
    return thresholds


def detector_options(command):
    """The detector overrides shared by `run` and `eval-stream`; defaults come from the bundle's manifest."""
    options = [
        click.option("--threshold", type=float, help="Detection threshold for every label (0..1)."),
        click.option("--threshold-for", multiple=True, metavar="LABEL=VALUE",
                     help="Threshold for one label (repeat)."),
        click.option("--smoothing-ms", type=float, help="Posterior smoothing window."),
        click.option("--refractory-ms", type=float, help="Quiet time after a detection."),
        click.option("--release-ratio", type=float, help="Hysteresis: an event ends below threshold x this."),
        click.option("--min-duration-ms", type=float, help="Shorter events are dropped."),
        click.option("--trigger", type=click.Choice(TRIGGERS),
                     help="What opens an event: one label's score ('label') or all labels' scores together "
                          "('word', then the label with the most posterior over the event is reported)."),
        click.option("--end-quiet-ms", type=float,
                     help="Report a word only if a pause this long follows it (0: also inside running speech)."),
        click.option("--end-quiet-db", type=float, help="How far below the word (in dB) that pause must fall."),
        click.option("--min-score", type=float,
                     help="Drop a detection whose label's peak score stays under this (0: keep all)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def detector_overrides(threshold, threshold_for, smoothing_ms, refractory_ms, release_ratio,
                       min_duration_ms, trigger, end_quiet_ms, end_quiet_db, min_score) -> dict:
    return dict(threshold=threshold, thresholds=parse_label_thresholds(threshold_for) or None,
                smoothing_ms=smoothing_ms, refractory_ms=refractory_ms, release_ratio=release_ratio,
                min_duration_ms=min_duration_ms, trigger=trigger, end_quiet_ms=end_quiet_ms,
                end_quiet_db=end_quiet_db, min_score=min_score)


def resolve_bundle(ctx: click.Context, bundle: str, root: Path | None) -> str | Path:
    """The bundle to load: --bundle, or ROOT/current as `basilar deploy` leaves it."""
    if root is None:
        return bundle
    if ctx.get_parameter_source("bundle") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give either --bundle or --root, not both")
    from edge.releases import ReleaseStore

    store = ReleaseStore(root)
    current = store.current_path()
    if current is None:
        link = root / "current"
        why = (f"{link} points at {os.readlink(link)}, which is no installed release" if link.is_symlink()
               else f"no valid {link} link")
        raise click.ClickException(f"no bundle is active under {root} ({why}); deploy one with `basilar deploy "
                                   "BUNDLE ssh://...` (over a serial line: run `"
                                   f"{device_tool('edge.telemetry.agent PORT --root', root)}` here, then `basilar "
                                   "deploy BUNDLE serial://PORT` on the host), "
                                   f"or run with --bundle{_rollback_hint(store, root)}")
    problem = store.damage(current.name)  # what ran must be what was deployed: the manifest too, not only its files
    if problem is not None:
        raise click.ClickException(f"the active bundle {current.name[:12]} under {root} is damaged ({problem}); "
                                   "deploy it again (basilar deploy uploads a damaged release anew) or install its "
                                   f"archive on the device ({device_tool('edge.releases install', root)} ARCHIVE) "
                                   f"to mend it{_rollback_hint(store, root)}")
    return current


def device_tool(module_and_command: str, root: Path) -> str:
    """A command line for one of basilar's device tools (`python -m ...`) on ROOT, run by this very Python (a
    bare python3 may be one without basilar) from / (in a checkout, `python -m` takes its unbuilt sources first)."""
    return f"cd / && {shlex.quote(sys.executable)} -m {module_and_command} {shlex.quote(str(root))}"


def _rollback_hint(store, root: Path) -> str:
    """How to bring a device whose active bundle cannot run back up at once, when its previous one is intact."""
    previous = store.previous()
    if previous is None or previous == store.current() or store.damage(previous) is not None:
        return ""
    return (f"; or go back to the previous bundle {previous[:12]}, which is intact: "
            f"`{device_tool('edge.releases rollback', root)}`")


def serial_port(ctx, param, value):
    """--serial: an empty port (`--serial "$PORT"` with PORT unset) would quietly run without telemetry."""
    if value is not None and not value.strip():
        raise click.BadParameter("the port is empty (an unset variable?); name one, e.g. /dev/ttyAMA0")
    return value


def device_id_option(ctx, param, value):
    """--device-id: HELLO carries it in a str8, so a longer one would mean no HELLO ever reached the host."""
    if value is not None and len(value.encode("utf-8", "surrogateescape")) > 255:
        raise click.BadParameter(f"{len(value.encode('utf-8', 'surrogateescape'))} bytes in UTF-8; the telemetry "
                                 "HELLO holds at most 255: give a shorter name")
    return value


class SerialLink:
    """`--serial`: telemetry out, and (with --root) bundle uploads in, swapped into the running loop."""

    def __init__(self, port: str, baud: int, device_id: str, root: Path | None, on_new_bundle, keep: int = 3):
        from edge.telemetry.link import DeviceLink

        receiver = None
        self.store = None
        if root is not None:
            from edge.releases import ReleaseStore
            from edge.telemetry.upload import release_store_receiver

            self.store = ReleaseStore(root)
            receiver = release_store_receiver(self.store, keep, on_new_bundle=on_new_bundle)
        try:
            self.link = DeviceLink(port, baud, device_id=device_id, receiver=receiver, store=self.store)
        except Exception as err:  # pyserial's errors name the port and the reason
            hint = ("" if "in use by another program" in str(err) else  # the name and the rights are fine then
                    "; check the name (ls /dev/tty*) and that this user may use it (group dialout)")
            raise click.ClickException(f"cannot open serial port {port} at {baud} baud ({err}){hint}") from err
        self.emitter = self.link.emitter

    def close(self) -> None:
        self.link.close()


@click.command()
@click.argument("audio", required=False)
@click.option("--input", "input_", metavar="AUDIO", help="Same as the AUDIO argument.")
@click.option("--bundle", default="default", show_default=True,
              help="Bundle directory or .tar.gz archive; 'default' is the shipped spoken-digit bundle.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Device root deployed by `basilar deploy`: run ROOT/current (and accept --serial uploads).")
@click.option("--realtime", is_flag=True, help="Pace a file like a live source instead of as fast as possible.")
@click.option("--format", "pcm_format", type=click.Choice(list(PCM_FORMATS), case_sensitive=False),
              default="S16_LE", show_default=True, help="Sample format of raw PCM on standard input.")
@click.option("--rate", type=click.IntRange(*RATES), default=16000, show_default=True,
              help="Sample rate of raw PCM on standard input (resampled to the bundle's).")
@click.option("--channels", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Channels of raw PCM on standard input, or to open a microphone with; they are averaged.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line per detection.")
@detector_options
@click.option("--serial", metavar="PORT", callback=serial_port,
              help="Also send detections and health over this serial port.")
@click.option("--baud", type=BAUD_RATES, default=DEFAULT_BAUD, show_default=True)
@click.option("--device-id", callback=device_id_option,
              help="Name sent in the telemetry HELLO (at most 255 bytes in UTF-8) [default: the host name].")
@click.option("--keep", type=click.IntRange(2, 100), default=3, show_default=True,
              help="With --root and --serial: releases kept after a bundle is uploaded over the serial link.")
@click.option("--health-every", type=FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds between health reports (stderr, serial); 0 for none.")
@click.option("--threads", type=click.IntRange(1, 16), default=1, show_default=True, help="Interpreter threads.")
@click.pass_context
def run(ctx, audio, input_, bundle, root, realtime, pcm_format, rate, channels, as_json, threshold,
        threshold_for, smoothing_ms, refractory_ms, release_ratio, min_duration_ms, trigger, end_quiet_ms,
        end_quiet_db, min_score, serial, baud, device_id, keep, health_every, threads):
    """Listen to AUDIO and print what is heard.

    AUDIO is an audio file (WAV, FLAC, OGG; any rate and channel count), '-' for raw PCM on standard input
    (e.g. `arecord -f S16_LE -r 16000 -c 1 | basilar run -`), or mic[:DEVICE] for a live input (see
    `basilar devices`). The word `demo` plays the shipped demo recording. Stops cleanly on Ctrl-C or SIGTERM.
    """
    from edge import __version__
    from edge.runloop import DetectorOptionError, Pipeline, PipelineError, RunLoop
    from edge.sinks import JsonSink, OutputError, TelemetrySink, TextSink

    if audio and input_:
        raise click.UsageError("give the audio either as AUDIO or with --input, not both")
    audio = audio or input_
    if not audio:
        raise click.UsageError("say what to listen to: a file, '-' for standard input, or mic[:DEVICE]")
    audio = str(demo_audio(audio) or audio)
    refuse_input_options_that_do_not_apply(ctx, audio)
    refuse_link_options_without_a_link(ctx, serial, root)
    if sys.stdout is None:  # started with standard output closed (`>&-`): nowhere to write what it hears
        raise click.UsageError("standard output is closed: basilar run writes its detections there; redirect it "
                               "(`> detections.txt`) or to /dev/null when --serial carries them")
    if audio == "-" and sys.stdin is None:  # started with standard input closed (`<&-`)
        raise click.UsageError("'-' reads audio from standard input, which is closed here; pipe audio in, or give "
                               "a file or 'mic'")
    if audio == "-" and sys.stdin.isatty():  # it would wait for audio nobody can type
        raise click.UsageError("'-' reads audio from standard input, which is a terminal here; pipe it in, e.g. "
                               "`arecord -f S16_LE -r 16000 -c 1 | basilar run -`, or give a file or 'mic'")
    overrides = detector_overrides(threshold, threshold_for, smoothing_ms, refractory_ms, release_ratio,
                                   min_duration_ms, trigger, end_quiet_ms, end_quiet_db, min_score)
    # From here on a stop signal (a service stopped while it starts; one held since the program started, too) ends
    # the run cleanly once the loop can.
    stop = StopFlag()
    stopped_by, restore_handlers = _install_stop_handlers(stop)
    ctx.call_on_close(restore_handlers)  # however the command ends
    ctx.call_on_close(_drop_what_cannot_be_written)
    bundle_ref = resolve_bundle(ctx, bundle, root)
    try:
        pipeline = Pipeline.from_bundle(bundle_ref, detector_overrides=overrides, num_threads=threads)
    except DetectorOptionError as err:  # the values given, not the bundle: exit 2 like any other bad option
        raise click.UsageError(str(err)) from err
    except PipelineError as err:
        raise click.ClickException(str(err)) from err
    except OSError as err:  # a path the system refuses (a name too long), which load_bundle does not catch
        if err.filename is None:
            raise
        raise click.ClickException(f"cannot read the bundle {err.filename}: {err.strerror}; check the path") from err

    try:
        source = _open_source(audio, pipeline.sample_rate, realtime, pcm_format, rate, channels, stop,
                              stated=stated_layout(ctx))
    except SourceError as err:
        raise click.ClickException(str(err)) from err

    sink = JsonSink() if as_json else TextSink()
    _warn_through(sink, ctx)
    loop = RunLoop(pipeline, source, [sink], health_every_s=health_every, stop=stop)
    link = None
    if serial:
        def on_new_bundle(bundle_id: str) -> None:
            """The serial link's thread, after an upload was installed and made current: load it and hand it
            to the loop, which switches between two chunks. Raising refuses the upload with this message."""
            try:
                loop.swap_pipeline(Pipeline.from_bundle(link.store.path_of(bundle_id),
                                                        detector_overrides=overrides, num_threads=threads))
            except PipelineError as err:  # the installer puts `current` back to the bundle that is running
                raise RuntimeError(f"the new bundle cannot run on this device ({err}); the device keeps running "
                                   f"{loop.pipeline.bundle.id[:12]}, which stays current") from err

        try:
            link = SerialLink(serial, baud, device_id or socket.gethostname(), root, on_new_bundle, keep)
        except click.ClickException:
            source.close()
            raise
        telemetry = TelemetrySink(link.emitter, __version__)
        loop.sinks.append(telemetry)

    try:
        stats = loop.run()
    except BrokenPipeError:  # from standard output only: a failed line on standard error is dropped
        return  # whoever read our output has gone (`| head`): _drop_what_cannot_be_written mutes standard output
    except OutputError as err:
        raise click.ClickException(f"{err} (stopped after {loop.stats.audio_s:.1f} s of audio, "
                                   f"{loop.stats.detections} detections made{_overruns(loop)})") from err
    except (SourceError, PipelineError) as err:
        raise click.ClickException(f"{err} (stopped after {loop.stats.audio_s:.1f} s of audio; "
                                   f"{loop.stats.detections} detections were written{_overruns(loop)})") from err
    except Exception as err:  # an interpreter or front-end failure mid-stream
        raise click.ClickException(f"processing failed after {loop.stats.audio_s:.1f} s of audio "
                                   f"({type(err).__name__}: {err}); {loop.stats.detections} detections were "
                                   f"written before it{_overruns(loop)}") from err
    finally:
        source.close()
        if link is not None:
            if health_every > 0:  # the host's last word on the run (overruns since the last report too)
                telemetry.health(loop.final_health())
            link.close()  # sends what is queued, then stops the link's threads
    how = f"stopped by {stopped_by[0]}" if stopped_by else "done"
    ran = loop.pipeline.bundle  # which model heard it: the shipped digits one unless told otherwise
    sink.log(f"{how}: {stats.describe()}; bundle {ran.manifest.get('name') or '?'} {ran.id[:12]}")


def stated_layout(ctx: click.Context) -> tuple[str, ...]:
    """Which of the raw PCM layout's format, rate and channels were given (a WAV stream's header may differ)."""
    given = given_options(ctx, ("pcm_format", "rate", "channels"))
    return tuple("format" if name == "pcm_format" else name for name in given)


def _open_source(audio, sample_rate, realtime, pcm_format, rate, channels, stop, stated=()):
    from edge.sources import open_source

    return open_source(audio, sample_rate, realtime=realtime, pcm_format=pcm_format, pcm_rate=rate,
                       channels=channels, stop=stop, stated=stated)


def _install_stop_handlers(stop: StopFlag):
    """SIGINT/SIGTERM ask the loop to stop after the current chunk; a second Ctrl-C interrupts at once.

    Returns (the names of the signals received, a function that puts the previous handlers back).
    """
    stopped_by: list[str] = []

    def handle(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        stopped_by.append(signal.Signals(signum).name)

    return stopped_by, route_stop_signals(handle)


class _SinkWarnings(logging.Handler):
    """The serial link's own warnings (a port that failed, telemetry left unsent), as the run's other warnings:
    `basilar: warning: ...` on standard error, and dropped if that cannot take them."""

    def __init__(self, sink):
        super().__init__(logging.WARNING)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.warn(record.getMessage())


def _warn_through(sink, ctx: click.Context) -> None:
    logger = logging.getLogger("edge.telemetry")
    handler = _SinkWarnings(sink)
    logger.addHandler(handler)
    ctx.call_on_close(lambda: logger.removeHandler(handler))


def _overruns(loop) -> str:
    """For an error message: the audio a live input lost, which the final summary would have given."""
    count = loop.source.overruns
    return f"; {count} audio overruns (blocks lost: processing fell behind the input)" if count else ""


def _drop_what_cannot_be_written() -> None:
    """Python flushes standard output and error once more as it exits, and some builds (Debian's and Raspberry Pi
    OS's 3.11.2) still hold a write that failed then: that flush fails again and the exit status becomes 120. What a
    full disk or a reader gone refused has been said (or was a note to lose), so it is dropped here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input device.")
def devices(as_json):
    """List the audio inputs `basilar run mic:DEVICE` can use."""
    from edge.sources import import_sounddevice, list_inputs

    try:
        inputs = list_inputs(import_sounddevice())
    except SourceError as err:
        raise click.ClickException(str(err)) from err
    if as_json:
        for device in inputs:
            click.echo(json.dumps(device))
        return
    if not inputs:
        click.echo("no audio inputs found (plug in a microphone; is this user in the 'audio' group?)")
        return
    for d in inputs:
        mark = "*" if d["default"] else " "
        click.echo(f"{mark} {d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)")
    click.echo("use: basilar run mic:INDEX   (* = default input)")


UNIT_TEMPLATE = """\
# basilar: listen on boot, report detections, restart on failure.
# Install: sudo cp basilar.service /etc/systemd/system/ && sudo systemctl daemon-reload
#          sudo systemctl enable --now basilar
# Logs:    journalctl -u basilar -f
[Unit]
Description=basilar machine hearing ({audio})
After=sound.target
Wants=sound.target
# Keep retrying however often it fails: a device in the field has nobody to restart it.
StartLimitIntervalSec=0

[Service]
Type=simple
User={user}
SupplementaryGroups=audio dialout
ExecStart={exec_start}
Restart=on-failure
RestartSec=2
# SIGTERM makes basilar flush pending detections and exit 0.
KillSignal=SIGTERM
TimeoutStopSec=10
StandardOutput=journal
StandardError=journal
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
# Serial deploys install bundles under the device root.
ReadWritePaths={read_write}

[Install]
WantedBy=multi-user.target
"""


UNIT_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def unit_word(value: str, *, env: bool = True) -> str:
    """VALUE as one word of a unit file, quoted the way systemd reads it (systemd.syntax(7)), not a shell: `%`
    starts a specifier and, in ExecStart=, `$` a variable; other words go in double quotes with C-style escapes."""
    value = value.replace("%", "%%")
    if env:
        value = value.replace("$", "$$")
    if UNIT_PLAIN_WORD.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(*, executable: str, root: str, audio: str, user: str, serial: str | None, baud: int,
              as_json: bool, channels: int = 1) -> str:
    args = ["run", "--root", root]
    if as_json:
        args.append("--json")
    if serial:
        args += ["--serial", serial, "--baud", str(baud)]
    if channels > 1:
        args += ["--channels", str(channels)]
    args.append(audio)
    # The program's path is run as written, no variables expanded: service() refuses the `$` that would need $$.
    exec_start = " ".join([unit_word(executable, env=False), *map(unit_word, args)])
    return UNIT_TEMPLATE.format(audio=audio.replace("%", "%%"), user=user.replace("%", "%%"),
                                read_write=unit_word(root, env=False), exec_start=exec_start)


def refuse_what_a_unit_cannot_hold(values: dict[str, str | None]) -> None:
    """A newline would end the unit's line (and could add settings); systemd refuses other control characters."""
    for option, value in values.items():
        if value is not None and any(unicodedata.category(ch) == "Cc" for ch in value):
            raise click.BadParameter(f"{value!r}: a systemd unit cannot hold a newline or other control character",
                                     param_hint=option)


# What systemd takes for a user (systemd.exec(5), User=): a name as useradd makes them, or a numeric uid. An empty
# User= it reads as root.
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\$?|[0-9]+")


def refuse_a_bad_user(user: str) -> None:
    """A usage error for a --user that systemd would refuse, or read as root."""
    if not USER_NAME.fullmatch(user) or len(user) > 32:
        why = "empty (an unset variable?): systemd would run the service as root" if not user else \
            "not a user name"
        raise click.BadParameter(f"{user!r} is {why}; give a user name (letters, digits, '_' and '-', not starting "
                                 "with a digit or '-', at most 32 characters), e.g. basilar, or a numeric uid",
                                 param_hint="--user")


def unreachable_by(user: str, program: str) -> str | None:
    """Why `user` cannot run `program` (a folder on the way or the program not open to it), or None. A virtual
    environment in someone's home (mode 0700 on Debian) is the usual case: the unit would fail on every start."""
    import pwd
    import stat

    try:
        entry = pwd.getpwnam(user)
        uid, gids = entry.pw_uid, set(os.getgrouplist(user, entry.pw_gid))
    except KeyError:
        uid, gids = None, set()  # not created yet: only what every user may do counts
    if uid == 0:
        return None
    path = Path(program)
    for place in [*reversed(path.parents), path]:
        try:
            info = place.stat()
        except FileNotFoundError:
            return f"{place} does not exist here (if the unit is for another machine, check the path there)"
        except OSError as err:
            return f"{place} cannot be read ({err.strerror})"
        bit = (stat.S_IXUSR if info.st_uid == uid else stat.S_IXGRP if info.st_gid in gids else stat.S_IXOTH)
        if not info.st_mode & bit:
            return f"{place} (mode {stat.S_IMODE(info.st_mode):04o}) is not open to it"
    return None


def running_program() -> str:
    """The `basilar` program this command was started as (a virtual environment's, say), for the unit to run:
    another one on PATH may be another install, or none."""
    program = Path(sys.argv[0])
    if program.name == "basilar" and os.access(program, os.X_OK):
        return str(program.absolute())
    found = shutil.which("basilar")
    if found is None:
        raise click.UsageError("no `basilar` program found to run; give its absolute path with --exec")
    return str(Path(found).absolute())


@click.command()
@click.option("--output", "-o", default="-", show_default=True, help="Where to write the unit ('-': stdout).")
@click.option("--exec", "executable", help="Path of the basilar program [default: the one running this command]"
                                          ".")
@click.option("--root", default=DEFAULT_ROOT, show_default=True, help="Device root that `basilar deploy` fills.")
@click.option("--input", "audio", default="mic", show_default=True, help="What to listen to (as for `run`).")
@click.option("--channels", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Channels to open the microphone with, averaged (as for `run`).")
@click.option("--user", default="basilar", show_default=True, help="User the service runs as.")
@click.option("--serial", metavar="PORT", callback=serial_port, help="Send telemetry over this serial port.")
@click.option("--baud", type=BAUD_RATES, default=DEFAULT_BAUD, show_default=True)
@click.option("--json/--text", "as_json", default=True, show_default=True, help="Detections in the journal as "
              "JSON lines or text.")
def service(output, executable, root, audio, user, serial, baud, as_json, channels):
    """Write a systemd unit that runs `basilar run` on boot and restarts it on failure."""
    executable = executable or running_program()
    refuse_what_a_unit_cannot_hold({"--exec": executable, "--root": root, "--input": audio, "--user": user,
                                    "--serial": serial})
    refuse_a_bad_user(user)
    if not Path(executable).is_absolute():
        raise click.BadParameter(f"{executable!r}: systemd needs an absolute path", param_hint="--exec")
    if any(ch in executable for ch in "'\"\\$"):  # systemd refuses the first three; `$` it expands in argv[0] only
        raise click.BadParameter(f"{executable!r}: systemd cannot run a program whose path holds a quote, a "
                                 "backslash or a `$`; install basilar elsewhere", param_hint="--exec")
    if not Path(root).is_absolute():  # systemd ignores a relative ReadWritePaths=, and run would resolve it from /
        raise click.BadParameter(f"{root!r}: systemd needs an absolute path", param_hint="--root")
    if any(ch in root for ch in "\"\\"):  # ReadWritePaths= keeps them as written, where ExecStart= unescapes them
        raise click.BadParameter(f"{root!r}: a device root holding a double quote or a backslash would reach the "
                                 "unit's two settings differently; choose another folder", param_hint="--root")
    if audio == "-":
        raise click.BadParameter("systemd gives a service no standard input; listen to mic[:DEVICE] or a file",
                                 param_hint="--input")
    if channels > 1 and input_kind(audio) != "mic":  # `run` would refuse it on every start
        raise click.BadParameter(f"{WHY_NOT['file', 'channels']}; --channels is for a microphone (mic[:DEVICE])",
                                 param_hint="--channels")
    if audio != "demo" and input_kind(audio) == "file":  # the service starts in /
        audio = str(Path(audio).absolute())
        if Path(audio).parts[1:2] == ("tmp",) or Path(audio).parts[1:3] == ("var", "tmp"):
            raise click.BadParameter(f"{audio}: the unit gives the service its own empty /tmp and /var/tmp "
                                     "(PrivateTmp=yes), where this file is not; move the recording elsewhere, e.g. "
                                     "/opt/basilar/", param_hint="--input")
    problem = unreachable_by(user, executable)
    if problem:
        click.echo(f"warning: the service runs as {user}, who cannot run {executable}: {problem}. Install basilar "
                   "where that user can run it, e.g. a virtual environment in /opt/basilar/venv "
                   "(docs/running.md), and give its basilar with --exec", err=True)
    text = unit_text(executable=executable, root=root, audio=audio, user=user, serial=serial, baud=baud,
                     as_json=as_json, channels=channels)
    if output == "-":
        click.echo(text, nl=False)
        return
    try:
        Path(output).write_text(text)
    except OSError as err:
        raise click.ClickException(f"cannot write {output}: {err.strerror} (write it to a file you may write, "
                                   "then copy it with sudo)") from err
    click.echo(f"wrote {output}; install it with: sudo cp {output} /etc/systemd/system/basilar.service && "
               "sudo systemctl daemon-reload && sudo systemctl enable --now basilar", err=True)
