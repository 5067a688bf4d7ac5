"""The device end of the serial link: one port, telemetry out (the emitter's writer thread) and commands in
(a reader thread that answers REQUEST_HELLO, with RELEASES where there is a release store, and feeds uploads to
an UploadReceiver).

The port is reopened by path if it fails (a USB gadget port that goes away while the host is unplugged);
meanwhile telemetry is lost (the host sees the sequence gap), never queued without bound.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import BinaryIO

from edge.telemetry import DEFAULT_BAUD
from edge.telemetry.emitter import TelemetryEmitter
from edge.telemetry.protocol import (MsgType, Releases, RequestHello, StreamDecoder, UploadBegin, UploadChunk,
                                     UploadEnd, UploadResult, UploadStatus, truncate_utf8)
from edge.telemetry.upload import UploadReceiver

log = logging.getLogger(__name__)


class _Port:
    """A serial port shared by the writer and reader threads that reopens itself after an error."""

    def __init__(self, path: str, baud: int, retry_interval: float = 0.5):
        self.path, self.baud, self.retry_interval = path, baud, retry_interval
        self._lock = threading.Lock()
        self._serial = self._open()

    def _open(self):
        import serial

        # exclusive: a second program on the port (another `basilar run`, a terminal left open) would take part of
        # the host's commands, and its frames would interleave with ours.
        try:
            return serial.Serial(self.path, self.baud, timeout=0.1, write_timeout=1.0, exclusive=True)
        except serial.SerialException as exc:
            if "exclusively lock" not in str(exc):
                raise
            raise serial.SerialException(f"{self.path} is in use by another program; stop it (`fuser {self.path}` "
                                         "names it) or use another port") from None

    def _broken(self, ser, exc: BaseException | None = None) -> None:
        """Close `ser` and forget it, saying why (exc) once: a failure the other thread met on a port already
        closed under it is not said again."""
        with self._lock:
            if self._serial is ser and ser is not None:
                if exc is not None:
                    log.warning("serial port %s failed (%s); reopening", self.path, exc)
                try:
                    ser.close()
                except Exception:  # noqa: BLE001
                    pass
                self._serial = None

    def write(self, data: bytes) -> int:
        ser = self._serial
        if ser is None:
            raise OSError(f"{self.path} is not open")
        import serial

        try:
            return ser.write(data)
        except serial.SerialTimeoutException:
            # The host is not reading (a stalled reader, a USB gadget whose host sleeps): the port itself is fine,
            # and reopening it would only throw away what the driver still holds for the host.
            raise
        except Exception as exc:
            self._broken(ser, exc)
            raise

    def flush(self) -> None:
        pass  # writes go straight to the driver; draining it could block without a timeout

    def read(self) -> bytes:
        """Whatever is available (waiting up to 0.1 s); reopens a failed port, returning b"" meanwhile."""
        ser = self._serial
        if ser is None:
            time.sleep(self.retry_interval)
            try:
                ser = self._open()
            except Exception:  # noqa: BLE001 - still gone; try again later
                return b""
            with self._lock:
                self._serial = ser
            log.info("serial port %s reopened", self.path)
            return b""
        try:
            return ser.read(ser.in_waiting or 1)
        except Exception as exc:  # noqa: BLE001
            self._broken(ser, exc)
            return b""

    @property
    def gone(self) -> bool:
        """Whether the port failed and has not been reopened (unplugged, or its device node removed)."""
        return self._serial is None

    def close(self) -> None:
        self._broken(self._serial)


class DeviceLink:
    """Owns the device's serial port: `emitter` sends telemetry; host commands are answered in a thread.

    receiver: an UploadReceiver to accept bundle uploads (None: uploads are refused with a clear message).
    store: the ReleaseStore to describe in RELEASES after each answered REQUEST_HELLO (None: not sent).
    on_hello_request: called to answer a REQUEST_HELLO instead of repeating the last HELLO and RELEASES (the
    standalone agent describes the store as it is now: a deploy over SSH may have switched it).
    stream: an already open object with read(n)/write(b) to use instead of opening `port` (tests, pipes).
    Telemetry keeps flowing while an upload is installed: installing runs in the reader thread, not the writer.
    """

    def __init__(self, port: str | None = None, baud: int = DEFAULT_BAUD, *, device_id: str,
                 receiver: UploadReceiver | None = None, store=None, queue_size: int = 256,
                 stream: BinaryIO | None = None, on_hello_request=None):
        self.receiver = receiver
        self.store = store
        self._on_hello_request = on_hello_request
        if stream is None:
            self._port = _Port(port, baud)
            self._read = self._port.read
        else:
            self._port = stream
            self._read = lambda: stream.read(4096)
        self.emitter = TelemetryEmitter.from_stream(self._port, device_id=device_id, queue_size=queue_size)
        self._decoder = StreamDecoder()
        self.host_seen = threading.Event()  # set once a valid frame arrived from the host: someone is listening
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="telemetry-reader", daemon=True)
        self._reader.start()

    @property
    def host_frames_rejected(self) -> int:
        s = self._decoder.stats
        return s.crc_errors + s.framing_errors + s.malformed + s.unknown_types + s.bad_version

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._read()
            except Exception as exc:  # noqa: BLE001 - a stream passed in may fail; keep the emitter going
                log.warning("telemetry link read failed: %s", exc)
                time.sleep(0.1)
                continue
            for frame in self._decoder.feed(data) if data else ():
                self.host_seen.set()
                try:
                    self._dispatch(frame.message)
                except Exception:  # noqa: BLE001 - one bad command must not end the link
                    log.exception("telemetry link: handling %r failed", frame.message)

    def _dispatch(self, message) -> None:
        if isinstance(message, RequestHello):
            if self._on_hello_request is not None:
                self._on_hello_request()
            else:
                self.emitter.resend_hello()
                self.send_releases()
        elif isinstance(message, (UploadBegin, UploadChunk, UploadEnd)):
            if self.receiver is None:
                self.emitter.send(UploadResult(int(UploadStatus.INSTALL_FAILED), "",
                                               "this device was started without a release store and accepts no "
                                               "uploads; start it with a device root"))
                return
            for reply in self.receiver.handle(message):
                if not self.emitter.send(reply) and reply.TYPE == MsgType.UPLOAD_RESULT:
                    log.warning("telemetry link: upload result dropped (queue full); the host will ask again")

    def send_releases(self) -> bool:
        """Describe the release store (read now: a deploy over SSH may have changed it); False without one."""
        if self.store is None:
            return False
        status = self.store.status()
        # a broken key file shows as an error text in place of an id; a str8 holds 255 bytes
        keys = [truncate_utf8(k, 255).decode("utf-8") for k in status["trusted_keys"]]
        return self.emitter.send(Releases.fitting(status["previous"] or "", status["releases"], keys))

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._reader.join(timeout)
        self.emitter.close(timeout)
        if self.emitter.unsent_at_close:
            gone = isinstance(self._port, _Port) and self._port.gone
            why = ("the serial port was gone (unplugged?) when the run ended" if gone else
                   f"the serial port took nothing for {timeout:g} s before exit (is the host reading?)")
            log.warning("telemetry: %d messages may not have reached the host: %s%s", self.emitter.unsent_at_close,
                        why, f"; {self.emitter.dropped} more were dropped earlier" if self.emitter.dropped else "")
        elif self.emitter.dropped:
            log.warning("telemetry: %d messages were dropped while the serial link was slow or gone (HEALTH "
                        "reports carry the count to the host)", self.emitter.dropped)
        if self.receiver is not None:
            self.receiver.close()
        self._port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
