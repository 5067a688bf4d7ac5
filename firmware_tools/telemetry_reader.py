"""Host side of the serial telemetry link: decode, check sequence numbers, survive a vanishing port, and write
records for people (a live table) and machines (JSONL, CSV).

`TelemetrySession` is the pure part (bytes in, records out, counters kept) shared by the live reader, the
replay of a raw capture and the benchmarks; `TelemetryReader` adds the port: open, read, reconnect.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import stat
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, TextIO

import click

from edge.telemetry import DEFAULT_BAUD
from edge.telemetry.protocol import (DEVICE_MS_MODULO, SEQ_MODULO, Detection, Frame, Health, Hello, Labels, Log,
                                     LogLevel, MsgType, Releases, RequestHello, StreamDecoder, encode_frame)

Record = dict
RESTART_BACKSTEP_MS = 1000  # device clock going back more than this means the device restarted
UPTIME_BACKSTEP_S = 1  # HEALTH uptime going back more than this (whole seconds, maybe reordered) too
# A session opens with HELLO, LABELS and RELEASES numbered from 0: one of them under this number after a gap is a
# restart whose HELLO was lost. A device up for weeks needs it: its seq in the upper half and its clock past the
# half of its range hide the other signs. Detections and HEALTH are never taken for it, so that a real loss that
# ends just past the wrap of seq stays a loss (a REQUEST_HELLO answered there reads as a restart: 8 in 65536).
SESSION_OPENING_SEQ = 8
SESSION_OPENING = (MsgType.HELLO, MsgType.LABELS, MsgType.RELEASES)

# What a reader writes into a capture that already holds bytes where it opens the port (a new run: the replay
# starts a new session there) or opens it again after losing it (the session goes on, as it did live). 0xFF is
# the COBS code for 254 bytes before the next 0x00; far fewer follow, so no frame has this form and an older
# reader counts one framing error. The leading 0x00 ends a frame the last run left cut short.
CAPTURE_OPENED = b"\x00\xffbasilar telemetry: port opened\x00"
CAPTURE_REOPENED = b"\x00\xffbasilar telemetry: port reopened\x00"

CSV_FIELDS = ["host_time", "type", "seq", "device_ms", "label_id", "label", "score", "start_s", "end_s",
              "uptime_s", "realtime_factor", "cpu_load", "audio_overruns", "dropped_telemetry", "device_id",
              "basilar_version", "bundle_id", "sample_rate", "label_count", "level", "text", "lost", "event",
              "previous", "total", "releases", "trusted_keys"]


class TelemetryError(click.ClickException):
    """A port that cannot be used or a file that cannot be read; the message says what to do."""


STDOUT = "standard output"


@contextmanager
def writing_to(name: str):
    """Turn a failed write (a full disk, a removed drive) into an error naming the output; a closed stdout pipe
    (`basilar telemetry ... | head`) is passed on as it is, for click to end quietly."""
    try:
        yield
    except BrokenPipeError:
        if name == STDOUT:
            raise
        raise TelemetryError(f"cannot write to {name}: nothing reads it any more") from None
    except OSError as exc:
        raise TelemetryError(f"cannot write to {name}: {exc.strerror or exc}; free some space or write to "
                             "another file") from None
    except UnicodeEncodeError as exc:  # a stream that escape_what_cannot_be_encoded could not reconfigure
        raise TelemetryError(f"cannot write to {name}: its encoding ({exc.encoding}) has no "
                             f"{exc.object[exc.start:exc.end]!r}; set PYTHONIOENCODING=utf-8") from None


def escape_what_cannot_be_encoded(stream: TextIO) -> None:
    """Device text (a label, a LOG line) that the stream's encoding lacks (cp1252, a Latin-1 locale) is written
    with backslash escapes rather than ending the reader."""
    with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper, or closed
        stream.reconfigure(errors="backslashreplace")


def encodes(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def from_device(record: Record) -> bool:
    """Whether a record is a message the device sent (what --count counts), not the reader's own note of the link
    (connected, lost, a restart) or of a gap in the sequence."""
    return record["type"] not in ("link", "gap")


def host_time() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ------------------------------------------------------------------------------------------ decoding session


class SequenceTracker:
    """Counts frames lost on the line from gaps in the 16-bit sequence numbers.

    A device clock that went backwards, a sequence that went backwards (a gap of half the sequence space or more),
    a session's opening frame (HELLO, LABELS, RELEASES) numbered under SESSION_OPENING_SEQ and under the number
    expected (a HELLO with sequence 0: the device opened its link), or a message that cannot belong to the session
    followed so far (see _from_another_session) starts a new session instead of a gap.
    """

    def __init__(self):
        self.expected: int | None = None
        self.last_ms: int | None = None
        self.last_end_ms: int | None = None  # the session's last detection end, as sent
        self.last_uptime_s: int | None = None  # the session's last HEALTH uptime
        self.identity: tuple | None = None  # device id and software version of the last HELLO
        self.lost = 0
        self.restarts = 0

    def observe(self, frame: Frame) -> tuple[int, bool]:
        """Return (frames lost just before this one, whether the device restarted)."""
        restarted = False
        gap = 0
        if self.expected is not None:
            gap = (frame.seq - self.expected) % SEQ_MODULO
            backstep = (self.last_ms - frame.device_ms) % DEVICE_MS_MODULO
            clock_went_back = RESTART_BACKSTEP_MS < backstep < DEVICE_MS_MODULO // 2
            # only when numbering started again, not where a session's first frames were lost on the line
            opens_anew = (frame.type in SESSION_OPENING and frame.seq < SESSION_OPENING_SEQ
                          and frame.seq < self.expected)
            if clock_went_back or gap >= SEQ_MODULO // 2 or opens_anew or self._from_another_session(frame.message):
                restarted, gap = True, 0
                self.restarts += 1
                self.last_end_ms = self.last_uptime_s = None  # the old session's, not to compare the new with
        self._remember(frame.message)
        self.expected = (frame.seq + 1) % SEQ_MODULO
        self.last_ms = frame.device_ms
        self.lost += gap
        return gap, restarted

    def _from_another_session(self, message) -> bool:
        """A restart missed while the cable was out (a process restart keeps the clock since boot and may leave the
        numbering mid-way): the software's uptime or the audio time went back, or another device or version said
        HELLO. A new bundle alone is no restart: the device installs uploads while it runs."""
        if isinstance(message, Health):
            return self.last_uptime_s is not None and self.last_uptime_s - message.uptime_s > UPTIME_BACKSTEP_S
        if isinstance(message, Detection):
            return self.last_end_ms is not None and audio_clock_restarted(self.last_end_ms, message.end_ms)
        if isinstance(message, Hello):
            return self.identity is not None and self.identity != (message.device_id, message.basilar_version)
        return False

    def _remember(self, message) -> None:
        if isinstance(message, Health):
            self.last_uptime_s = message.uptime_s
        elif isinstance(message, Detection):
            self.last_end_ms = message.end_ms
        elif isinstance(message, Hello):
            self.identity = (message.device_id, message.basilar_version)


def audio_clock_restarted(last_end_ms: int, end_ms: int) -> bool:
    """Whether a detection ending at end_ms (u32, as sent) after one ending at last_end_ms shows a new audio clock:
    earlier by more than a word can explain, yet by less than half the u32 range. Only a drop of half the range or
    more (from past 24.8 days of audio to a forward step under 24.8 days) is taken for the wrap at 49.7 days."""
    return AudioClock.BACKSTEP_MS < last_end_ms - end_ms < DEVICE_MS_MODULO // 2


MAX_WORD_MS = DEVICE_MS_MODULO // 2  # a DETECTION lasting this long or longer ends before it starts: malformed


def word_duration_ms(start_ms: int, end_ms: int) -> int:
    """How long a word lasts from its u32 times (as sent); one that spans the clock's wrap reads right."""
    return (end_ms - start_ms) % DEVICE_MS_MODULO


class AudioClock:
    """A detection's word times in seconds of audio, counted on past the u32 milliseconds' wrap at 49.7 days.

    Audio time only goes forward within a device session (a word's start may lie a little before the last
    word's end), so an end that reads as more than a minute earlier than the last one has wrapped, if the drop is
    that of a wrap (audio_clock_restarted); otherwise the audio clock started again. A session
    followed from before a wrap reads on past 4,294,967 s; one first seen after a wrap reads from its remainder
    (the wire cannot say how many wraps came before). A device restart starts a new clock."""

    BACKSTEP_MS = 60_000  # far longer than any word: an end this much earlier than the last is a wrap or a restart

    def __init__(self):
        self.last_end: int | None = None  # the last end, unwrapped, in milliseconds

    def seconds(self, start_ms: int, end_ms: int) -> tuple[float, float]:
        end = end_ms
        if self.last_end is not None and not audio_clock_restarted(self.last_end % DEVICE_MS_MODULO, end_ms):
            forward = (end_ms - self.last_end) % DEVICE_MS_MODULO
            back = DEVICE_MS_MODULO - forward
            end = self.last_end - back if 0 < back <= self.BACKSTEP_MS else self.last_end + forward
        start = end - word_duration_ms(start_ms, end_ms)
        if start < 0:  # a word cannot start before the stream: it spans a wrap the reader did not see
            start, end = start + DEVICE_MS_MODULO, end + DEVICE_MS_MODULO
        self.last_end = end
        return start / 1000, end / 1000


@dataclass
class DeviceInfo:
    device_id: str = ""
    basilar_version: str = ""
    bundle_id: str = ""
    sample_rate: int = 0
    labels: list | None = None


class TelemetrySession:
    """Bytes from the line in, records out; keeps the device description, the label names and all counters."""

    def __init__(self):
        self.decoder = StreamDecoder()
        self.sequence = SequenceTracker()
        self.audio_clock = AudioClock()
        self.device = DeviceInfo()
        self.reconnects = 0
        self.last_health: Record | None = None
        self.unfinished_bytes = 0  # bytes at the end of a capture that form no whole frame
        self.hello_wanted = False  # a restart seen from anything but its HELLO: that HELLO and its LABELS were lost

    def feed(self, data: bytes, when: str | None = None) -> list[Record]:
        records = []
        for frame in map(self._checked, self.decoder.feed(data)):
            lost, restarted = self.sequence.observe(frame)
            if restarted:
                self.audio_clock = AudioClock()
                # the new session may run another bundle: its words go unnamed (#ID) until its own LABELS come
                self.device = DeviceInfo()
                self.hello_wanted = not isinstance(frame.message, Hello)
                records.append({"host_time": when, "type": "link", "event": "device_restart",
                                "text": "the device restarted its link (sequence and clock start over)"})
            if lost:
                records.append({"host_time": when, "type": "gap", "lost": lost,
                                "text": f"{lost} frame(s) lost before seq {frame.seq}"})
            record = self._record(frame, when)
            if record is not None:
                records.append(record)
        return records

    def _checked(self, frame: Frame) -> Frame:
        """A DETECTION ending before it starts (a sender bug) is malformed: read modulo 2^32 it would last over
        24.8 days and move every later word's times by 49.7 days. Its seq still arrived; its times are dropped."""
        message = frame.message
        if isinstance(message, Detection) and word_duration_ms(message.start_ms, message.end_ms) >= MAX_WORD_MS:
            self.decoder.stats.frames -= 1
            self.decoder.stats.malformed += 1
            return Frame(frame.type, frame.seq, frame.device_ms, None, frame.payload)
        return frame

    def _record(self, frame: Frame, when: str | None) -> Record | None:
        message = frame.message
        base = {"host_time": when, "seq": frame.seq, "device_ms": frame.device_ms}
        if isinstance(message, Detection):
            labels = self.device.labels or []
            label = labels[message.label_id] if message.label_id < len(labels) else None
            start_s, end_s = self.audio_clock.seconds(message.start_ms, message.end_ms)
            return {**base, "type": "detection", "label_id": message.label_id,
                    "label": label if label is not None else f"#{message.label_id}",
                    "score": round(message.score, 4), "start_s": start_s, "end_s": end_s}
        if isinstance(message, Health):
            self.last_health = {**base, "type": "health", "uptime_s": message.uptime_s,
                                "realtime_factor": message.realtime_factor, "cpu_load": message.cpu_load,
                                "audio_overruns": message.audio_overruns,
                                "dropped_telemetry": message.dropped_telemetry}
            return self.last_health
        if isinstance(message, Hello):
            self.hello_wanted = False
            self.device = DeviceInfo(message.device_id, message.basilar_version, message.bundle_id,
                                     message.sample_rate, [None] * message.label_count)
            return {**base, "type": "hello", "device_id": message.device_id,
                    "basilar_version": message.basilar_version, "bundle_id": message.bundle_id,
                    "sample_rate": message.sample_rate, "label_count": message.label_count}
        if isinstance(message, Labels):
            labels = self.device.labels if self.device.labels is not None else []
            end = message.first_index + len(message.names)
            if len(labels) < end:
                labels.extend([None] * (end - len(labels)))
            labels[message.first_index:end] = message.names
            self.device.labels = labels
            return None  # folded into the detections' label names
        if isinstance(message, Releases):
            return {**base, "type": "releases", "previous": message.previous, "total": message.total,
                    "releases": list(message.releases), "trusted_keys": list(message.trusted_keys)}
        if isinstance(message, Log):
            try:
                level = LogLevel(message.level).name.lower()
            except ValueError:
                level = str(message.level)
            return {**base, "type": "log", "level": level, "text": message.text}
        return None  # unknown types (counted by the decoder) and upload replies are not telemetry

    def start_over(self) -> None:
        """Another reader run begins (a capture several runs appended to): nothing the last run knew of the device
        (sequence, clocks, labels) is carried on; counters are summed."""
        lost, restarts = self.sequence.lost, self.sequence.restarts
        self.sequence = SequenceTracker()
        self.sequence.lost, self.sequence.restarts = lost, restarts
        self.audio_clock, self.device, self.hello_wanted, self.last_health = AudioClock(), DeviceInfo(), False, None

    def end_of_stream(self) -> None:
        """No more bytes will come (the end of a capture): what the decoder holds is a frame cut short."""
        if self.decoder.buffered:
            self.unfinished_bytes = self.decoder.buffered
            self.decoder.stats.framing_errors += 1

    def link_event(self, event: str, text: str) -> Record:
        if event == "reconnected":
            self.reconnects += 1
        return {"host_time": host_time(), "type": "link", "event": event, "text": text}

    def counters(self) -> dict:
        s = self.decoder.stats
        return {"frames": s.frames + s.unknown_types + s.malformed, "lost_frames": self.sequence.lost,
                "crc_errors": s.crc_errors, "framing_errors": s.framing_errors, "unknown_types": s.unknown_types,
                "malformed": s.malformed, "bad_version": s.bad_version, "device_restarts": self.sequence.restarts,
                "reconnects": self.reconnects, "bytes": s.bytes}

    def summary(self) -> str:
        c = self.counters()
        return (f"{c['frames']} frames ({c['bytes']} bytes), {c['lost_frames']} lost (sequence gaps), "
                f"{c['crc_errors']} CRC errors, {c['framing_errors']} framing errors, "
                f"{c['unknown_types']} of unknown type skipped, {c['malformed']} malformed, "
                f"{c['bad_version']} of another protocol version, {c['device_restarts']} device restarts, "
                f"{c['reconnects']} reconnects"
                + (f"; the last {self.unfinished_bytes} bytes form no whole frame (a framing error)"
                   if self.unfinished_bytes else ""))


# ------------------------------------------------------------------------------------------ outputs


class JsonlSink:
    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, record: Record) -> None:
        fields = {k: v for k, v in record.items() if v is not None}
        line = json.dumps(fields, ensure_ascii=False)
        if not encodes(self.stream, line):  # JSON's own \u escapes, where a backslash escape would not parse
            line = json.dumps(fields)
        self.stream.write(line)
        self.stream.write("\n")
        self.stream.flush()  # a crash or Ctrl-C loses nothing already received

    def close(self) -> None:
        pass


class CsvSink:
    def __init__(self, stream: TextIO, header: bool = True):
        self.stream = stream
        self.writer = csv.DictWriter(stream, CSV_FIELDS, extrasaction="ignore", restval="")
        if header:
            self.writer.writeheader()
            stream.flush()

    def write(self, record: Record) -> None:
        # a list (RELEASES' bundle and key ids) as one field of space-separated ids
        self.writer.writerow({k: " ".join(v) if isinstance(v, list) else v for k, v in record.items()})
        self.stream.flush()

    def close(self) -> None:
        pass


def printable(text: str) -> str:
    """Text from the device as a terminal should show it: control and other non-printable characters escaped
    (\\x1b, \\n), so that no device can move the cursor, retitle the window or forge a line of the table."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def describe(record: Record) -> str:
    """The interesting fields of one record, for people (a terminal: device text escaped)."""
    return printable(_details(record))


def _details(record: Record) -> str:
    kind = record["type"]
    if kind == "detection":
        return (f"{record['label']:<16} score {record['score']:.3f}  audio {record['start_s']:.2f}-"
                f"{record['end_s']:.2f} s")
    if kind == "health":
        return (f"uptime {record['uptime_s']} s  rtf {record['realtime_factor']:.3f}  cpu "
                f"{record['cpu_load'] * 100:.1f}%  overruns {record['audio_overruns']}  "
                f"dropped {record['dropped_telemetry']}")
    if kind == "hello":
        return (f"device {record['device_id']}  basilar {record['basilar_version']}  bundle "
                f"{record['bundle_id'][:16]}  {record['sample_rate']} Hz  {record['label_count']} labels")
    if kind == "releases":
        from edge.signing import split_key_entries

        newest = record["releases"][-1][:16] if record["releases"] else "-"
        keys, broken = split_key_entries(record["trusted_keys"])
        return (f"{record['total']} release(s) kept, newest {newest}  previous {record['previous'][:16] or '-'}  "
                f"{len(keys)} trusted key(s)" + "".join(f"  broken key file: {why}" for why in broken))
    if kind == "log":
        return f"[{record['level']}] {record['text']}"
    return record.get("text", "")


class LinesTable:
    """The table format when stdout is not a terminal: one aligned line per record."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        stream.write(f"{'host time':<29} {'type':<9} {'seq':>5}  details\n")

    def write(self, record: Record) -> None:
        seq = record.get("seq")
        self.stream.write(f"{record.get('host_time') or '-':<29} {record['type']:<9} "
                          f"{'' if seq is None else seq:>5}  {describe(record)}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class LiveTable:
    """The table format on a terminal: a screen of recent detections, the latest health and the link counters,
    redrawn at most a few times a second."""

    def __init__(self, stream: TextIO, session: TelemetrySession, title: str, recent: int = 12):
        self.stream, self.session, self.title = stream, session, title
        self.detections: deque = deque(maxlen=recent)
        self.events: deque = deque(maxlen=4)
        self.status = "connecting"
        self._drawn = 0.0

    def write(self, record: Record) -> None:
        if record["type"] == "detection":
            self.detections.append(record)
        elif record["type"] in ("link", "gap", "log"):
            self.events.append(record)
            if record["type"] == "link":
                self.status = record["event"]
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.25:
            return
        self._drawn = now
        s, c = self.session, self.session.counters()
        lines = [f"basilar telemetry  {self.title}  [{self.status}]"]
        if s.device.device_id:
            lines.append(printable(f"device {s.device.device_id}  basilar {s.device.basilar_version}  bundle "
                                   f"{s.device.bundle_id[:16]}  {s.device.sample_rate} Hz"))
        lines.append("health  " + (describe(s.last_health) if s.last_health else "(none yet)"))
        lines.append(f"link    frames {c['frames']}  lost {c['lost_frames']}  crc errors {c['crc_errors']}  "
                     f"framing errors {c['framing_errors']}  unknown {c['unknown_types']}  "
                     f"reconnects {c['reconnects']}  restarts {c['device_restarts']}")
        lines.append("")
        lines.append(f"{'host time':<29} {'label':<16} {'score':>6} {'start s':>9} {'end s':>9}")
        for d in reversed(self.detections):
            lines.append(f"{d['host_time'] or '-':<29} {printable(d['label']):<16} {d['score']:>6.3f} "
                         f"{d['start_s']:>9.2f} {d['end_s']:>9.2f}")
        if self.events:
            lines.append("")
            lines += [f"{e['host_time'] or '-':<29} {e['type']:<5} {describe(e)}" for e in self.events]
        self.stream.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.refresh(force=True)


def open_sink(fmt: str, stream: TextIO, header: bool = True):
    if fmt == "jsonl":
        return JsonlSink(stream)
    if fmt == "csv":
        return CsvSink(stream, header=header)
    raise ValueError(f"unknown format {fmt!r}")


def open_output_file(path: str, fmt: str):
    """Append records to a file (JSONL unless fmt is csv); a CSV header is written only into an empty file. A file
    that holds another format (CSV for JSONL, JSONL for CSV, or CSV whose header has other columns: an older
    basilar's) is refused: its lines would not read as one format."""
    try:
        stream = open(path, "a+", encoding="utf-8", newline="")
        if stream.tell():
            stream.seek(0)
            first = stream.readline().rstrip("\r\n")
            stream.seek(0, 2)
            refusal = other_format(path, fmt, first)
            if refusal:
                stream.close()
                raise TelemetryError(refusal)
    except (OSError, UnicodeDecodeError) as exc:
        raise TelemetryError(f"cannot open the output file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    with writing_to(path):  # the CSV header
        return stream, open_sink(fmt, stream, header=stream.tell() == 0)


def other_format(path: str, fmt: str, first_line: str) -> str:
    """Why records in fmt ("csv" or "jsonl") must not be appended to a file whose first line is first_line; ""
    if they may."""
    found = "csv" if first_line == ",".join(CSV_FIELDS) else "jsonl" if is_json_object(first_line) else None
    if found == fmt:
        return ""
    if found == "jsonl":
        return f"{path} holds JSON lines, not CSV; write to a new file, or pass --format jsonl"
    if found == "csv":
        return f"{path} holds basilar's CSV, not JSON lines; write to a new file, or pass --format csv"
    if fmt == "csv":
        return (f"{path} holds CSV with other columns (written by another version of basilar, or not by basilar); "
                "write to a new file")
    return f"{path} holds something other than JSON lines (its first line is no JSON object); write to a new file"


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def open_capture_file(path: str):
    """Append raw bytes to a capture file; opened before the port, so a bad path stops the reader at once. Returns
    the file and whether it already holds bytes (a FIFO or a device holds none to be told apart from)."""
    try:
        capture = open(path, "ab")
        held = os.fstat(capture.fileno())
        return capture, stat.S_ISREG(held.st_mode) and held.st_size > 0
    except OSError as exc:
        raise TelemetryError(f"cannot open the capture file {path}: {exc.strerror or exc}; check that its folder "
                             "exists and is writable") from None


# ------------------------------------------------------------------------------------------ the port


def open_port(port: str, baud: int):
    """Open a serial port for reading; raise TelemetryError saying what is wrong and what to do."""
    import serial

    try:
        # exclusive: a second reader (flock) is refused instead of silently taking half of the frames
        return serial.Serial(port, baud, timeout=0.1, exclusive=True)
    except (ValueError, OverflowError) as exc:  # OverflowError: a rate too large for termios
        raise TelemetryError(f"cannot use baud rate {baud} on {port}: {exc}; pick a standard rate such as "
                             "115200 or 921600") from None
    except serial.SerialException as exc:
        # pyserial's SerialException carries (errno, message): say what the errno means, not its number
        cause = os.strerror(exc.errno) if isinstance(exc.errno, int) else exc.args[0] if exc.args else exc
        if isinstance(exc.__context__, PermissionError) or exc.errno == errno.EACCES:
            raise TelemetryError(f"no permission to open {port}: add yourself to the 'dialout' group "
                                 "(sudo usermod -aG dialout $USER, then log in again)") from None
        if "exclusively lock" in str(exc):
            raise TelemetryError(f"port {port} is in use by another program: stop it (another basilar telemetry, "
                                 f"a terminal program such as picocom; fuser -v {port} names it) and try "
                                 "again") from None
        if not os.path.exists(port):
            raise TelemetryError(f"serial port {port} does not exist: check the name (ls /dev/serial/by-id/) or "
                                 "pass --wait to wait until the device is plugged in") from None
        raise TelemetryError(f"cannot open serial port {port}: {cause}") from None


class TelemetryReader:
    """Reads a port until stopped, reconnecting whenever it vanishes, and hands records to `emit`."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD, *, emit: Callable[[Record], None],
                 session: TelemetrySession | None = None, capture: str | None = None, wait: bool = False,
                 request_hello: bool = True, retry_interval: float = 0.5, say: Callable[[str], None] | None = None):
        self.port, self.baud, self.emit = port, baud, emit
        self.session = session or TelemetrySession()
        self.capture, self._captured = open_capture_file(capture) if capture else (None, False)
        self._boundary = b""  # the marker due in the capture before the next bytes read (see CAPTURE_OPENED)
        self.wait, self.request_hello, self.retry_interval = wait, request_hello, retry_interval
        self.say = say or (lambda text: click.echo(f"telemetry: {text}", err=True))
        self.stop_event = threading.Event()
        self._host_seq = 0
        self._hello_seen = False
        self._asks: list[float] = []
        self._connected_at = float("-inf")  # when the reader last began asking for a HELLO
        self._restart_asked = 0  # the last restart (its number) the reader asked a HELLO for
        self.records = 0  # records from the device emitted
        self.refusal = ""  # why the port last failed to open

    def stop(self) -> None:
        self.stop_event.set()

    def _connect(self, first: bool, deadline: float | None = None):
        """Open the port; on the first attempt without --wait, a missing port is an error. None if stopped or
        the deadline (time.monotonic()) passed first."""
        announced = False
        while not self.stop_event.is_set():
            try:
                return open_port(self.port, self.baud)
            except TelemetryError as exc:
                if first and not self.wait:
                    raise
                self.refusal = exc.message.split(":")[0]
                if not announced:
                    self.say(f"waiting for {self.port} ({self.refusal})")
                    announced = True
            pause = self.retry_interval
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    return None
            self.stop_event.wait(pause)
        return None

    HELLO_RETRIES = (1.0, 2.0, 4.0, 8.0)  # seconds after connecting to ask again while no HELLO has come

    def _ask_hello(self, ser) -> None:
        """Ask the device for its HELLO; repeated a few times (see _maybe_ask_again) because a device that
        opens its port after us has discarded the first request."""
        if not self.request_hello:
            return
        self._hello_seen = False
        self._asks = list(self.HELLO_RETRIES)
        self._connected_at = time.monotonic()
        self._send_request(ser)

    RESTART_ASK_INTERVAL = 2.0  # s: restarts coming faster than this (a device gone wrong) are asked about no faster

    def _ask_after_restart(self, ser) -> None:
        """A restart seen from anything but its HELLO: that HELLO and its LABELS went nowhere (the cable was out),
        so ask for them at once, once per restart; within RESTART_ASK_INTERVAL of the last asking, once it is over
        (a HELLO that comes meanwhile answers it)."""
        restarts = self.session.sequence.restarts
        if (not self.request_hello or not self.session.hello_wanted or self._restart_asked == restarts
                or time.monotonic() - self._connected_at < self.RESTART_ASK_INTERVAL):
            return
        self._restart_asked = restarts
        self._ask_hello(ser)

    def _maybe_ask_again(self, ser) -> None:
        if not self.request_hello or self._hello_seen or not self._asks:
            return
        if time.monotonic() - self._connected_at >= self._asks[0]:
            self._asks.pop(0)
            self._send_request(ser)

    def _send_request(self, ser) -> None:
        try:
            ser.write(b"\x00" + encode_frame(RequestHello(), self._host_seq, 0))
            self._host_seq += 1
        except Exception:  # noqa: BLE001 - a device that cannot take input still sends telemetry
            pass

    def _deliver(self, records: Iterable[Record], max_records: int | None) -> None:
        """Emit records; after max_records of them from the device (see from_device), stop."""
        for record in records:
            if max_records is not None and self.records >= max_records:
                self.stop_event.set()
                return
            self.emit(record)
            self.records += from_device(record)
        if max_records is not None and self.records >= max_records:
            self.stop_event.set()

    def _capture(self, data: bytes) -> None:
        if self.capture:
            marker, self._boundary = self._boundary if self._captured else b"", b""
            with writing_to(self.capture.name):
                self.capture.write(marker + data)
                self.capture.flush()
            self._captured = True

    def run(self, *, max_records: int | None = None, duration: float | None = None) -> TelemetrySession:
        import serial

        deadline = None if duration is None else time.monotonic() + duration
        ser = self._connect(first=True, deadline=deadline)
        if ser is not None:
            self._boundary = CAPTURE_OPENED
            self._deliver([self.session.link_event("connected", f"reading {self.port} at {self.baud} baud")],
                          max_records)
            self._ask_hello(ser)
        try:
            if ser is None and not self.stop_event.is_set():  # --wait, and the time ran out: nothing was read
                raise TelemetryError(f"gave up waiting for {self.port} after {duration:g} s ({self.refusal}): "
                                     "nothing was read")
            while ser is not None and not self.stop_event.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    data = ser.read(ser.in_waiting or 1)
                except (serial.SerialException, OSError) as exc:
                    ser.close()
                    reason = str(exc).split(":")[0] or type(exc).__name__
                    self.say(f"{self.port} lost ({reason}); waiting for it to come back")
                    self._deliver([self.session.link_event("lost", f"{self.port} lost: {reason}")], max_records)
                    ser = self._connect(first=False, deadline=deadline)
                    if ser is not None:
                        self.say(f"reconnected to {self.port}")
                        self._boundary = self._boundary or CAPTURE_REOPENED
                        self._deliver([self.session.link_event("reconnected", f"{self.port} is back")],
                                      max_records)
                        self._ask_hello(ser)
                    continue
                if data:
                    records = self.session.feed(data, host_time())  # counted even if the capture fails
                    self._hello_seen = self._hello_seen or any(r["type"] == "hello" for r in records)
                    try:
                        self._capture(data)
                    finally:  # what these bytes held is written out before a failed capture ends the reader
                        self._deliver(records, max_records)
                self._ask_after_restart(ser)
                self._maybe_ask_again(ser)
        finally:
            if ser is not None:
                ser.close()
            if self.capture:
                with contextlib.suppress(OSError):  # the write that failed before has said so
                    self.capture.close()
        return self.session


def replay(path: str, emit: Callable[[Record], None], session: TelemetrySession | None = None,
           block: int = 65536, max_records: int | None = None) -> TelemetrySession:
    """Decode a raw capture (the bytes as they came off the line) and emit its records, up to the max_records-th
    from the device (see from_device). Each reader run appended to it reads as a session of its own."""
    session = session or TelemetrySession()
    emitted = 0  # records from the device
    for data in _runs(_blocks(path, block)):
        if data in (CAPTURE_OPENED, CAPTURE_REOPENED):
            session.decoder.stats.bytes -= 1  # the marker's leading 0x00 was the reader's, not the line's
            if data == CAPTURE_OPENED:
                session.start_over()
            else:
                session.reconnects += 1
            continue
        for record in session.feed(data):
            if max_records is not None and emitted >= max_records:
                return session
            emit(record)
            emitted += from_device(record)
    session.end_of_stream()
    return session


def _runs(blocks: Iterable[bytes]):
    """The bytes of blocks with each marker a reader wrote (CAPTURE_OPENED, CAPTURE_REOPENED) given on its own,
    wherever the blocks were cut. A marker's leading 0x00 goes with the bytes before it: that delimiter ends a frame
    cut short there (for the decoder, as for an older reader). A piece between markers holds none, so equals none."""
    bodies = {CAPTURE_OPENED[1:]: CAPTURE_OPENED, CAPTURE_REOPENED[1:]: CAPTURE_REOPENED}
    longest = max(map(len, bodies))
    held, before = b"", None  # before: the last byte given out
    for data in blocks:
        held += data
        while (found := _first_marker(held, before, bodies)) is not None:
            at, body = found
            if at:
                yield held[:at]
            yield bodies[body]
            held, before = held[at + len(body):], 0
        # what may be the start of a marker that a later block ends stays held
        keep = next((n for n in range(min(len(held), longest - 1), 0, -1)
                     if any(body.startswith(held[-n:]) for body in bodies)), 0)
        if len(held) > keep:
            yield held[:len(held) - keep]
            held, before = held[len(held) - keep:], held[len(held) - keep - 1]
    if held:
        yield held


def _first_marker(held: bytes, before: int | None, bodies) -> tuple[int, bytes] | None:
    """Where the first marker body (a marker less its leading 0x00) begins in held right after a 0x00."""
    first = None
    for body in bodies:
        at = held.find(body)
        while at >= 0 and (held[at - 1] if at else before) != 0:
            at = held.find(body, at + 1)
        if at >= 0 and (first is None or at < first[0]):
            first = (at, body)
    return first


def _blocks(path: str, block: int):
    """The capture's bytes, a block at a time; only reading it is blamed on the capture (not writing records)."""
    try:
        with open(path, "rb") as f:
            yield from iter(lambda: f.read(block), b"")
    except OSError as exc:
        raise TelemetryError(f"cannot read the capture {path}: {exc.strerror or exc}") from None


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
