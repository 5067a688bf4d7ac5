"""Host side of deploying a bundle over the serial telemetry link (device side: edge/telemetry/upload.py).

    deploy_serial("bundle.tar.gz", "/dev/ttyUSB0", 115200, progress=lambda done, total: ...)

The host asks the device who it is (HELLO), skips the upload if that bundle is already active, announces the
archive (size + SHA-256), continues from wherever the device says it already is (checking the CRC-32 of that
prefix against the local file), then streams chunks with a window of unacknowledged ones. Lost or corrupted
frames are recovered by going back to the last acknowledged offset. The device verifies the SHA-256, installs,
switches `current` and reloads its model; telemetry keeps flowing meanwhile and can be watched via
`on_telemetry`. If the link dies, SerialDeployError says so; running the deploy again resumes.
"""
from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import click

from edge.telemetry import DEFAULT_BAUD
from edge.telemetry.protocol import (FLAG_RESTART, MAX_CHUNK, MAX_ENCODED, Frame, Hello, Log, LogLevel, Releases,
                                     RequestHello, StreamDecoder, UploadAck, UploadBegin, UploadChunk, UploadEnd,
                                     UploadResult, UploadStatus, encode_frame)

DEFAULT_CHUNK = 512
DEFAULT_WINDOW = 8
MIN_CHUNK = 64  # chunks shrink down to this on a noisy line, and grow back when it is quiet again
MAX_SILENT_RETRIES = 5  # consecutive timeouts without progress before giving up
INSTALL_TIMEOUT_S = 60.0  # the device extracts and checks the bundle before answering
RELEASES_WAIT_S = 1.0  # RELEASES follows HELLO's labels at once; a device without a release store never sends it


class SerialDeployError(click.ClickException):
    """The upload did not complete; the message says why and what to do. What the device received is kept."""


class UploadRefused(SerialDeployError):
    """The device answered that it will not install the bundle; it runs what it ran before (`active`)."""

    active: str | None = None


class DeviceReply(NamedTuple):
    hello: Hello  # who the device is and what it runs
    releases: Releases | None  # None: a device without a release store (or whose software predates RELEASES)
    problems: list[str]  # errors it logged on being asked (its active bundle cannot be loaded, say)


@dataclass
class SerialDeployResult:
    port: str
    bundle_id: str  # now active on the device
    previous_bundle_id: str  # active before ("" if none)
    uploaded: bool  # False: the device already had it
    total_bytes: int
    bytes_sent: int  # chunk bytes sent in this call, including resends
    resumed_from: int  # offset the device already held when this call started
    message: str
    telemetry_frames: int = 0  # device telemetry received while deploying


class _HostLink:
    """Frames to and from the device over pyserial; telemetry that arrives in between is passed on."""

    def __init__(self, port: str, baud: int, on_telemetry: Callable[[Frame], None] | None):
        import serial

        self.port, self.baud = port, baud
        try:
            # exclusive: a `basilar telemetry` reading the port would take half of the device's replies
            self.serial = serial.Serial(port, baud, timeout=0.05, write_timeout=5.0, exclusive=True)
        except ValueError as exc:
            raise SerialDeployError(f"cannot use baud rate {baud} on {port}: {exc}") from None
        except serial.SerialException as exc:
            if "exclusively lock" in str(exc):
                raise SerialDeployError(f"serial port {port} is in use by another program (a `basilar telemetry` "
                                        f"reading it?); stop it (`fuser -v {port}` names it) and deploy "
                                        "again") from None
            raise SerialDeployError(f"cannot open serial port {port}: {getattr(exc, 'strerror', None) or exc}; "
                                    "check the name (ls /dev/serial/by-id/) and that you are in the dialout "
                                    "group") from None
        self.decoder = StreamDecoder()
        self.on_telemetry = on_telemetry
        self.telemetry_frames = 0
        self._pending: list[Frame] = []
        self._seq = 0
        self.serial.write(b"\x00")  # end any partial frame the device may hold

    def send(self, message) -> None:
        self.serial.write(encode_frame(message, self._seq, int(time.monotonic() * 1000)))
        self._seq += 1

    def receive(self, kinds: tuple[type, ...], timeout: float):
        """The next message of one of `kinds`, or None after `timeout` seconds."""
        frame = self.receive_frame(kinds, timeout)
        return None if frame is None else frame.message

    def receive_frame(self, kinds: tuple[type, ...], timeout: float, aside: list | None = None) -> Frame | None:
        """The next frame whose message is one of `kinds`, or None after `timeout` seconds. The frames before it
        are passed on as telemetry, or kept in `aside` (for put_back or pass_on later)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                frame = self._pending.pop(0)
                if isinstance(frame.message, kinds):
                    return frame
                if aside is not None:
                    aside.append(frame)
                else:
                    self.pass_on([frame])
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self.serial.read(self.serial.in_waiting or 1)
            if data:
                self._pending.extend(self.decoder.feed(data))

    def pass_on(self, frames: list[Frame]) -> None:
        """Hand the device's telemetry among `frames` to on_telemetry (answers and HELLOs are not telemetry)."""
        for frame in frames:
            if not isinstance(frame.message, (UploadAck, UploadResult, Hello)) and frame.message is not None:
                self.telemetry_frames += 1
                if self.on_telemetry is not None:
                    self.on_telemetry(frame)

    def put_back(self, frames: list[Frame]) -> None:
        """Make `frames` the next ones received again."""
        self._pending[:0] = frames

    def close(self) -> None:
        try:
            self.serial.close()
        except Exception:  # noqa: BLE001
            pass


def _ask_hello(link: _HostLink, timeout: float) -> Hello:
    """The device's answer to REQUEST_HELLO. A HELLO numbered 0 is the one a device sends when it opens its link:
    it may have been on the line before the request and describe a store changed since, so the host asks again and
    takes the answer (numbered after it), or that HELLO if no answer comes in the time the line needs for one, with
    the frames that followed it (its RELEASES) left to be read next."""
    deadline = time.monotonic() + timeout
    on_opening, after_it = None, []
    while time.monotonic() < deadline:
        link.send(RequestHello())
        heard_opening = on_opening is not None
        wait = releases_wait_s(link.baud) if heard_opening else 1.0
        frame = link.receive_frame((Hello,), min(wait, max(0.0, deadline - time.monotonic())),
                                   aside=after_it if heard_opening else None)
        if frame is not None and frame.seq != 0:
            link.pass_on(after_it)
            return frame.message
        if frame is None and heard_opening:
            break
        if frame is not None:  # an opening HELLO (the first, or the device started again): what followed is old
            link.pass_on(after_it)
            on_opening, after_it = frame.message, []
    if on_opening is not None:
        link.put_back(after_it)
        return on_opening
    raise SerialDeployError(f"no basilar device answered on {link.port} at {link.baud} baud within "
                            f"{timeout:.0f} s: check the cable and the baud rate, and that the device runs "
                            "`basilar run --serial PORT` or `python3 -m edge.telemetry.agent`")


def releases_wait_s(baud: int) -> float:
    """How long RELEASES may take to follow HELLO: a second, and the time the line needs for LABELS, RELEASES and
    a report sent between them, each as long as a frame can be (at 4800 baud that is 6.5 s: a fixed second took a
    store of eight releases for none)."""
    return RELEASES_WAIT_S + 3 * MAX_ENCODED * 10 / baud  # 10 bits a byte on the wire (8N1)


def query_device(port: str, baud: int = DEFAULT_BAUD, timeout: float = 5.0) -> DeviceReply:
    """Ask the device on `port` who it is, which bundle it runs (HELLO), which it keeps (RELEASES, None from a
    device without a release store) and what is wrong with it (the errors it logs between the two); nothing on it
    changes."""
    import serial

    problems = []

    def note_errors(frame: Frame) -> None:
        if isinstance(frame.message, Log) and frame.message.level == LogLevel.ERROR:
            problems.append(frame.message.text)

    link = _HostLink(port, baud, note_errors)
    try:
        hello = _ask_hello(link, timeout)
        problems.clear()  # only what it says on being asked this time
        return DeviceReply(hello, link.receive((Releases,), releases_wait_s(baud)), problems)
    except (serial.SerialException, OSError) as exc:
        raise SerialDeployError(f"the serial link to {port} failed ({exc})") from None
    finally:
        link.close()


def _archive_bundle_id(path: Path) -> str | None:
    """The bundle id of the archive, to skip an upload the device does not need; None if it cannot be read."""
    try:
        from edge.bundle import bundle_id
        return bundle_id(path)
    except Exception:  # noqa: BLE001 - the device checks the bundle itself and reports what is wrong
        return None


def deploy_serial(archive_path: str | Path, port: str, baud: int = DEFAULT_BAUD,
                  progress: Callable[[int, int], None] | None = None, *, chunk_size: int = DEFAULT_CHUNK,
                  window: int = DEFAULT_WINDOW, on_telemetry: Callable[[Frame], None] | None = None,
                  hello_timeout: float = 5.0) -> SerialDeployResult:
    """Upload a bundle archive to the device on `port` and make it active; resume an interrupted upload.

    progress(bytes_acknowledged, total_bytes) is called as the device acknowledges chunks.
    """
    import serial

    archive_path = Path(archive_path)
    try:
        data = archive_path.read_bytes()
    except OSError as exc:
        raise SerialDeployError(f"cannot read the archive {archive_path}: {exc.strerror or exc}") from None
    if not data:
        raise SerialDeployError(f"the archive {archive_path} is empty; build it with `basilar bundle`")
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise SerialDeployError(f"chunk size must be 1..{MAX_CHUNK} bytes, not {chunk_size}")
    sha = hashlib.sha256(data).digest()
    local_id = _archive_bundle_id(archive_path)
    link = _HostLink(port, baud, on_telemetry)
    upload = _Upload(link, data, sha, chunk_size, max(1, window), progress)
    try:
        hello = upload.hello(hello_timeout)
        result = SerialDeployResult(port, hello.bundle_id, hello.bundle_id, False, len(data), 0, 0,
                                    "already active; nothing uploaded")
        if local_id is None or hello.bundle_id != local_id:
            try:
                outcome = upload.run()
            except UploadRefused as refused:  # the device stays on what it ran
                refused.active = hello.bundle_id or None
                raise
            result = SerialDeployResult(port, outcome.bundle_id, hello.bundle_id, True, len(data),
                                        upload.bytes_sent, upload.resumed_from, outcome.message)
        result.telemetry_frames = link.telemetry_frames
        return result
    except (serial.SerialException, OSError) as exc:
        raise SerialDeployError(f"the serial link to {port} failed after {upload.acked} of {len(data)} bytes "
                                f"were acknowledged ({exc}); the device keeps what it received: run the deploy "
                                "again to resume") from None
    finally:
        link.close()


class _Upload:
    def __init__(self, link: _HostLink, data: bytes, sha: bytes, chunk: int, window: int, progress):
        self.link, self.data, self.sha, self.window = link, data, sha, window
        self.chunk = self.max_chunk = chunk
        self.clean_acks = 0
        self.progress = progress
        self.acked = 0
        self.bytes_sent = 0
        self.resumed_from = 0
        # Long enough for a full window to cross the line and its acknowledgements to come back.
        self.ack_timeout = max(1.0, 4 * (chunk * window + 64) * 10 / link.baud)

    def hello(self, timeout: float) -> Hello:
        return _ask_hello(self.link, timeout)

    def _begin(self) -> UploadAck | UploadResult:
        """Announce the archive; returns the device's resume point (CRC-checked) or a final result."""
        flags = 0
        for _ in range(MAX_SILENT_RETRIES):
            self.link.send(UploadBegin(len(self.data), self.sha, flags))
            reply = self.link.receive((UploadAck, UploadResult), self.ack_timeout)
            if reply is None:
                continue
            if isinstance(reply, UploadResult):
                return reply
            if reply.status != UploadStatus.OK:
                continue
            held = reply.next_offset
            if held <= len(self.data) and zlib.crc32(self.data[:held]) & 0xFFFFFFFF == reply.prefix_crc32:
                return reply
            flags = FLAG_RESTART  # the device holds bytes that are not ours: start over
        raise self._silent("did not accept the upload")

    def _silent(self, what: str) -> SerialDeployError:
        return SerialDeployError(f"the device on {self.link.port} {what} ({MAX_SILENT_RETRIES} attempts, "
                                 f"{self.acked} of {len(self.data)} bytes acknowledged); check the link and "
                                 "run the deploy again to resume")

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.acked, len(self.data))

    def run(self) -> UploadResult:
        reply = self._begin()
        first = True
        while True:
            if isinstance(reply, UploadResult):
                return self._final(reply)
            self.acked = reply.next_offset
            if first:
                self.resumed_from, first = self.acked, False
            self._report()
            result = self._send_chunks()
            if result is None:  # the device lost the transfer (restarted): announce it again
                reply = self._begin()
                continue
            if isinstance(result, UploadResult):
                return self._final(result)
            result = self._finish()
            if result is None:
                reply = self._begin()
                continue
            return self._final(result)

    def _lost_chunk(self) -> None:
        """A chunk went missing: on a noisy line smaller chunks get through more often."""
        self.chunk = max(MIN_CHUNK, self.chunk // 2)
        self.clean_acks = 0

    def _acked_chunk(self) -> None:
        self.clean_acks += 1
        if self.clean_acks >= 2 * self.window and self.chunk < self.max_chunk:
            self.chunk = min(self.max_chunk, self.chunk * 2)
            self.clean_acks = 0

    def _send_chunks(self) -> UploadResult | bool | None:
        """Stream chunks until the device holds everything (True), it lost the transfer (None), or it sent a
        final result (an UploadResult)."""
        total, next_send, silent, rewound_at = len(self.data), self.acked, 0, -1
        while self.acked < total:
            while next_send < total and next_send - self.acked < self.max_chunk * self.window:
                piece = self.data[next_send:next_send + self.chunk]
                self.link.send(UploadChunk(next_send, piece))
                self.bytes_sent += len(piece)
                next_send += len(piece)
            reply = self.link.receive((UploadAck, UploadResult), self.ack_timeout)
            if reply is None:
                silent += 1
                if silent >= MAX_SILENT_RETRIES:
                    raise self._silent("stopped acknowledging chunks")
                next_send = self.acked  # go back to the last acknowledged byte
                self._lost_chunk()
                continue
            if isinstance(reply, UploadResult):
                return reply
            if reply.status == UploadStatus.NO_TRANSFER:
                return None
            if reply.next_offset != self.acked:
                # Progress, or the device holds less than acknowledged (its process restarted mid-write).
                went_back = reply.next_offset < self.acked
                self.acked = reply.next_offset
                silent = 0
                self._report()
                if went_back or next_send < self.acked:
                    next_send = self.acked
                if reply.status == UploadStatus.OK:
                    self._acked_chunk()
            elif reply.status == UploadStatus.OUT_OF_ORDER and rewound_at != self.acked:
                rewound_at = self.acked  # one rewind per gap, not one per chunk that was in flight behind it
                next_send = self.acked
                self._lost_chunk()
        return True

    def _finish(self) -> UploadResult | None:
        """Ask the device to verify and install; None if it lost the transfer."""
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        while time.monotonic() < deadline:
            self.link.send(UploadEnd(self.sha))  # repeated in case it was lost; the device answers each
            resend_at = min(deadline, time.monotonic() + 5.0)
            while (left := resend_at - time.monotonic()) > 0:
                reply = self.link.receive((UploadResult, UploadAck), left)
                if isinstance(reply, UploadResult):
                    return reply
                if isinstance(reply, UploadAck) and reply.status == UploadStatus.NO_TRANSFER:
                    return None
        raise self._silent("did not confirm the installation")

    def _final(self, result: UploadResult) -> UploadResult:
        if result.status != UploadStatus.OK:
            try:
                reason = UploadStatus(result.status).name.lower().replace("_", " ")
            except ValueError:
                reason = f"status {result.status}"
            raise UploadRefused(f"the device on {self.link.port} refused the bundle ({reason}): {result.message}")
        self.acked = len(self.data)
        self._report()
        return result


def parse_serial_url(url: str) -> tuple[str, int]:
    """`serial:///dev/ttyUSB0?baud=115200` -> ("/dev/ttyUSB0", 115200), via the deploy targets parser."""
    from firmware_tools.targets import SerialTarget, parse_target

    target = parse_target(url)
    if not isinstance(target, SerialTarget):
        raise SerialDeployError(f"{url!r} is not a serial target; write serial:///dev/ttyUSB0?baud=115200")
    return target.port, target.baud
