"""Device side: send telemetry frames without ever blocking the caller (the audio thread).

Each call packs one message, stamps it with the device clock and puts it on a bounded queue; a writer thread
numbers the frames and writes them to the port. When the queue is full the message is dropped and counted;
the running total goes out in every HEALTH message, so the host sees device-side loss separately from loss
on the line (which shows as gaps in the sequence numbers). A frame whose write fails already has its number,
so it is loss on the line: the host sees it as a gap, and it is not counted as dropped too. Frames are written
one at a time, so a write that times out part way loses only the frame it was writing; the ones behind it wait.
"""
from __future__ import annotations

import queue
import struct
import threading
import time
from typing import BinaryIO, Iterable

from edge.telemetry import DEFAULT_BAUD
from edge.telemetry.protocol import (DELIMITER, MAX_PAYLOAD, SEQ_MODULO, Detection, Health, Hello, Labels, Log,
                                     LogLevel, Message, ProtocolError, encode_frame, truncate_utf8)

_STOP = object()
_BATCH = 64  # messages the writer takes from the queue at a time
# The most frames that may go unwritten in a row with sequence numbers: the host reads a jump of half the sequence
# space (32768) or more as a device restart (docs/telemetry-protocol.md), and a gap of k frames is a jump of k + 1.
MAX_GAP = SEQ_MODULO // 2 - 2


def device_ms() -> int:
    """The device timestamp: milliseconds of the monotonic clock (since boot on Linux), modulo 2**32."""
    return int(time.monotonic() * 1000) & 0xFFFFFFFF


def label_frames(labels: Iterable[str]) -> list[Labels]:
    """Split label names into as few LABELS messages as fit the maximum payload."""
    messages, first, names, size = [], 0, [], 3
    for index, name in enumerate(labels):
        item = 1 + len(truncate_utf8(name, 255))
        if names and (size + item > MAX_PAYLOAD or len(names) == 255):
            messages.append(Labels(first, tuple(names)))
            first, names, size = index, [], 3
        names.append(truncate_utf8(name, 255).decode("utf-8"))
        size += item
    if names:
        messages.append(Labels(first, tuple(names)))
    return messages


def _buffers_writes(stream) -> bool:
    """A file needs flush() after each write; a pyserial port must not get one (it waits for the line to drain,
    with no timeout)."""
    try:
        import serial
    except ImportError:
        return True
    return not isinstance(stream, serial.SerialBase)


class TelemetryEmitter:
    """Queue telemetry for a serial port. All sending methods return at once: True if queued, False if dropped."""

    def __init__(self, port: str | None = None, baud: int = DEFAULT_BAUD, *, device_id: str, queue_size: int = 256,
                 stream: BinaryIO | None = None, close_stream: bool | None = None):
        if stream is None:
            if port is None:
                raise ValueError("give the serial port to write to (or an open stream)")
            import serial  # pyserial; imported here so tests and replays need no serial port

            # write_timeout: a port nobody drains (a pty without a reader) must not wedge the writer forever.
            stream = serial.Serial(port, baud, write_timeout=1.0, exclusive=True)  # as edge.telemetry.link does
            close_stream = True if close_stream is None else close_stream
        self.device_id = device_id
        self._stream = stream
        self._flush = _buffers_writes(stream)
        self._close_stream = bool(close_stream)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._seq = 0
        self._unwritten = 0  # frames numbered but not wholly written since the last frame that went through
        self._in_flight = 0  # messages the writer holds: the write under way and those behind it
        self.unsent_at_close = 0  # messages close() left behind: queued, or written nowhere the host could see
        self._hello: tuple[Message, ...] | None = None
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="telemetry-writer", daemon=True)
        self._writer.start()

    @classmethod
    def from_stream(cls, stream: BinaryIO, *, device_id: str, queue_size: int = 256,
                    close_stream: bool = False) -> "TelemetryEmitter":
        """Write to an already open serial object or binary file (not closed by close() unless asked)."""
        return cls(device_id=device_id, queue_size=queue_size, stream=stream, close_stream=close_stream)

    # ------------------------------------------------------------ what the device reports

    def hello(self, basilar_version: str, bundle_id: str, labels: Iterable[str], sample_rate: int) -> bool:
        labels = list(labels)
        hello = Hello(self.device_id, basilar_version, bundle_id, int(sample_rate), len(labels))
        self._hello = (hello, *label_frames(labels))
        return self._put(self._hello)

    def resend_hello(self) -> bool:
        """Send the last HELLO (and its labels) again, e.g. when a host asks; False if there was none."""
        return self._put(self._hello) if self._hello else False

    def detection(self, label_id: int, score: float, start_s: float, end_s: float) -> bool:
        return self._put((Detection.from_seconds(label_id, score, start_s, end_s),))

    def health(self, uptime_s: float, realtime_factor: float, cpu_load: float, audio_overruns: int) -> bool:
        """realtime_factor: processing time / audio time; cpu_load: fraction of one core (1.0 = one full core)."""
        return self._put((Health.from_values(uptime_s, realtime_factor, cpu_load, audio_overruns, self._dropped),))

    def log(self, text: str, level: int = LogLevel.INFO) -> bool:
        return self._put((Log(int(level), text),))

    def send(self, message: Message) -> bool:
        """Queue any protocol message (replies to the host, e.g. upload acknowledgements)."""
        return self._put((message,))

    @property
    def dropped(self) -> int:
        """Messages dropped before they got a sequence number: queue full, too big for a frame, or sent after
        close(). Frames whose write failed are not counted: the host sees them as sequence gaps."""
        return self._dropped

    # ------------------------------------------------------------ plumbing

    def _count_dropped(self, n: int) -> None:
        with self._dropped_lock:
            self._dropped += n

    def _put(self, messages: tuple[Message, ...]) -> bool:
        if self._closed:
            self._count_dropped(len(messages))
            return False
        try:
            self._queue.put_nowait((device_ms(), messages))
            return True
        except queue.Full:
            self._count_dropped(len(messages))
            return False

    def _write_loop(self) -> None:
        # Messages taken from the queue but not yet tried: a failed write loses only the frame it was writing
        # (its bytes reached the line only in part), and the ones behind it wait for the next try.
        pending: list[tuple[int, Message]] = []
        stopping = False
        while True:
            if not stopping:
                stopping = self._take(pending, wait=not pending)
            self._in_flight = len(pending)
            if not pending:
                if stopping:
                    return
                continue
            if not self._send(pending):
                time.sleep(0.05)  # stopping too: close() counts what is left when it stops waiting

    def _take(self, pending: list, wait: bool) -> bool:
        """Move queued messages onto pending, up to _BATCH (waiting for the first if `wait`); True once the stop
        request has been taken."""
        while len(pending) < _BATCH:
            try:
                item = self._queue.get(block=wait)
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            pending.extend((item[0], message) for message in item[1])
            wait = False
        return False

    def _send(self, pending: list) -> bool:
        """Write the pending messages one frame each, taking out each one written, dropped or lost; False at the
        first failed write (what follows stays pending)."""
        if self._unwritten >= MAX_GAP and not self._write(DELIMITER):
            # A longer gap would read as a restart on the host (or, wrapped, as no loss): until the port takes
            # bytes again, frames get no number and are counted as dropped.
            self._count_dropped(len(pending))
            pending.clear()
            return False
        while pending:
            stamp, message = pending[0]
            try:
                frame = encode_frame(message, self._seq, stamp)
            except (ProtocolError, struct.error):  # one that cannot be framed is dropped, the rest go on
                self._count_dropped(1)
                frame = None
            if frame is not None:
                # The number is used once any byte may have gone out: it is never given again.
                self._seq = (self._seq + 1) % SEQ_MODULO
                if not self._write(frame):
                    # Lost on the line, not dropped: the host counts it in the gap. Each frame starts with a
                    # delimiter, so the host discards the part that went out when the next frame comes.
                    self._unwritten += 1
                    pending.pop(0)
                    self._in_flight = len(pending)
                    return False
                self._unwritten = 0
            pending.pop(0)
            self._in_flight = len(pending)
        return True

    def _write(self, data: bytes) -> bool:
        """Whether all of `data` went to the port."""
        try:
            written = self._stream.write(data)
            if self._flush:
                self._stream.flush()
        except Exception:  # noqa: BLE001 - a vanished or stuck port must not kill the writer
            return False  # a timed-out write may have sent part of it
        return not isinstance(written, int) or written >= len(data)  # a stream that gives no count took it all

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (waiting at most `timeout` seconds), then stop the writer.

        What could not be sent by then is counted in `unsent_at_close`: the messages still queued or being written,
        and the frames whose writes failed last. No later frame will reach the host to show those as a gap, so the
        device has to say so itself."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass  # the writer is stuck on the port; closing the stream below ends it
        self._writer.join(max(0.0, deadline - time.monotonic()))
        # The frames of the last gap (no later frame shows it to the host) and those the writer still holds
        self.unsent_at_close = self._unwritten + self._in_flight
        if self._writer.is_alive():  # stuck on the port: what waits behind its write stays unsent too
            self.unsent_at_close += self._queued_messages()
        if self._close_stream:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def _queued_messages(self) -> int:
        """Counted where they wait, not taken out: the writer, once its write ends, still sends them and stops."""
        with self._queue.mutex:
            return sum(len(item[1]) for item in self._queue.queue if item is not _STOP)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
