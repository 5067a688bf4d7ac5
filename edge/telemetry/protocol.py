"""The basilar serial telemetry protocol, version 1 (specified in docs/telemetry-protocol.md).

A frame on the wire is COBS(header + payload + crc32) between two 0x00 delimiter bytes:

    header  = version u8 | type u8 | seq u16 | device_ms u32        (little-endian, 8 bytes)
    crc32   = CRC-32 (zlib) of header + payload, u32 little-endian

Messages are small frozen dataclasses; `encode_frame` turns one into wire bytes and `StreamDecoder`
turns an arbitrary byte stream back into messages, counting everything it had to throw away.
Nothing here touches a port or a thread: the same code runs in the device emitter, the host reader,
the replay of a capture and the benchmarks.
"""
from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field

from cobs import cobs

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHI")
CRC = struct.Struct("<I")
MAX_PAYLOAD = 1024
MAX_FRAME = HEADER.size + MAX_PAYLOAD + CRC.size  # unencoded bytes
MAX_ENCODED = cobs.max_encoded_length(MAX_FRAME)  # bytes between two delimiters, at most
MIN_FRAME = HEADER.size + CRC.size
SEQ_MODULO = 1 << 16
DEVICE_MS_MODULO = 1 << 32
DELIMITER = b"\x00"


class MsgType(enum.IntEnum):
    # device -> host: 0x01..0x3F
    HELLO = 0x01
    DETECTION = 0x02
    HEALTH = 0x03
    LOG = 0x04
    LABELS = 0x05
    RELEASES = 0x06
    UPLOAD_ACK = 0x21
    UPLOAD_RESULT = 0x22
    # host -> device: 0x40..0x7F
    REQUEST_HELLO = 0x40
    UPLOAD_BEGIN = 0x41
    UPLOAD_CHUNK = 0x42
    UPLOAD_END = 0x43


class UploadStatus(enum.IntEnum):
    OK = 0
    OUT_OF_ORDER = 1  # chunk offset is not the next expected one; continue from next_offset
    NO_TRANSFER = 2  # chunk or end without a matching UPLOAD_BEGIN; send UPLOAD_BEGIN again
    TOO_LARGE = 3  # the archive is larger than the device accepts
    IO_ERROR = 4  # the device could not write its staging file
    SHA_MISMATCH = 5  # the received bytes do not hash to the announced SHA-256; partial data discarded
    INSTALL_FAILED = 6  # the archive arrived intact but the device refused to install it


class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


class ProtocolError(ValueError):
    """A message cannot be encoded (a field out of range, a payload too long) or a payload is malformed."""


# ---------------------------------------------------------------- field helpers


def _pack_str(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ProtocolError(f"{what} is {len(raw)} UTF-8 bytes; the protocol allows at most 255")
    return bytes([len(raw)]) + raw


def _unpack_str(payload: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(payload):
        raise ProtocolError("payload ends before a string length")
    end = pos + 1 + payload[pos]
    if end > len(payload):
        raise ProtocolError("payload ends inside a string")
    return payload[pos + 1:end].decode("utf-8", errors="replace"), end


def _unpack_fixed(fmt: struct.Struct, payload: bytes, name: str) -> tuple:
    if len(payload) != fmt.size:
        raise ProtocolError(f"{name} payload is {len(payload)} bytes, expected {fmt.size}")
    return fmt.unpack(payload)


def _ms(seconds: float) -> int:
    """Milliseconds of stream time, u32: wraps after 49.7 days as device_ms does (a service runs that long),
    rather than sticking at the largest value."""
    return max(0, round(seconds * 1000)) & 0xFFFFFFFF


def _clamp(value: int, limit: int) -> int:
    return max(0, min(limit, int(value)))


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """The longest prefix of text that is valid UTF-8 in at most max_bytes."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return raw
    return raw[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Hello:
    """Sent first after the device opens the link (with seq 0) and whenever the host asks."""

    TYPE = MsgType.HELLO
    device_id: str
    basilar_version: str
    bundle_id: str
    sample_rate: int
    label_count: int

    def pack(self) -> bytes:
        return (_pack_str(self.device_id, "device id") + _pack_str(self.basilar_version, "basilar version")
                + _pack_str(self.bundle_id, "bundle id")
                + struct.pack("<IH", _clamp(self.sample_rate, 0xFFFFFFFF), _clamp(self.label_count, 0xFFFF)))

    @classmethod
    def unpack(cls, payload: bytes) -> "Hello":
        device_id, pos = _unpack_str(payload, 0)
        version, pos = _unpack_str(payload, pos)
        bundle, pos = _unpack_str(payload, pos)
        if len(payload) - pos != 6:
            raise ProtocolError("HELLO payload has the wrong length after its strings")
        sample_rate, label_count = struct.unpack_from("<IH", payload, pos)
        return cls(device_id, version, bundle, sample_rate, label_count)


_LABELS_HEAD = struct.Struct("<HB")


@dataclass(frozen=True)
class Labels:
    """Label names first_index, first_index+1, ...; follows HELLO, as many frames as the names need."""

    TYPE = MsgType.LABELS
    first_index: int
    names: tuple[str, ...]

    def pack(self) -> bytes:
        body = b"".join(_pack_str(n, "label name") for n in self.names)
        return _LABELS_HEAD.pack(self.first_index, len(self.names)) + body

    @classmethod
    def unpack(cls, payload: bytes) -> "Labels":
        if len(payload) < _LABELS_HEAD.size:
            raise ProtocolError("LABELS payload too short")
        first, count = _LABELS_HEAD.unpack_from(payload)
        pos, names = _LABELS_HEAD.size, []
        for _ in range(count):
            name, pos = _unpack_str(payload, pos)
            names.append(name)
        if pos != len(payload):
            raise ProtocolError("LABELS payload has trailing bytes")
        return cls(first, tuple(names))


_RELEASES_HEAD = struct.Struct("<HBB")


@dataclass(frozen=True)
class Releases:
    """A device's release store: the bundle a rollback returns to, the bundles it keeps (oldest first; the newest
    that fit one frame, `total` counts them all) and the ids of the keys it trusts (the first ~55, as many as fit
    one frame with no release). Follows HELLO's labels on a device that keeps releases."""

    TYPE = MsgType.RELEASES
    previous: str
    total: int
    releases: tuple[str, ...]
    trusted_keys: tuple[str, ...]

    @classmethod
    def fitting(cls, previous: str, releases: list[str], trusted_keys: list[str]) -> "Releases":
        """The message for a store, keeping the newest releases that fit in one payload, and then (with none)
        the first trusted keys that do."""
        kept, keys = list(releases)[-255:], list(trusted_keys)[:255]  # a count is one byte
        while True:
            message = cls(previous, len(releases), tuple(kept), tuple(keys))
            if len(message.pack()) <= MAX_PAYLOAD or not (kept or keys):
                return message
            if kept:
                kept.pop(0)
            else:
                keys.pop()

    def pack(self) -> bytes:
        return (_pack_str(self.previous, "previous bundle id")
                + _RELEASES_HEAD.pack(_clamp(self.total, 0xFFFF), len(self.releases), len(self.trusted_keys))
                + b"".join(_pack_str(r, "release id") for r in self.releases)
                + b"".join(_pack_str(k, "key id") for k in self.trusted_keys))

    @classmethod
    def unpack(cls, payload: bytes) -> "Releases":
        previous, pos = _unpack_str(payload, 0)
        if len(payload) - pos < _RELEASES_HEAD.size:
            raise ProtocolError("RELEASES payload too short")
        total, n_releases, n_keys = _RELEASES_HEAD.unpack_from(payload, pos)
        pos += _RELEASES_HEAD.size
        names = []
        for _ in range(n_releases + n_keys):
            name, pos = _unpack_str(payload, pos)
            names.append(name)
        if pos != len(payload):
            raise ProtocolError("RELEASES payload has trailing bytes")
        if total < n_releases:
            raise ProtocolError("RELEASES counts fewer releases in all than it lists")
        return cls(previous, total, tuple(names[:n_releases]), tuple(names[n_releases:]))


_DETECTION = struct.Struct("<HHII")


@dataclass(frozen=True)
class Detection:
    """label_id indexes the labels; score is quantized to 1/65535; start/end are audio-stream milliseconds."""

    TYPE = MsgType.DETECTION
    label_id: int
    score_q16: int
    start_ms: int
    end_ms: int

    @classmethod
    def from_seconds(cls, label_id: int, score: float, start_s: float, end_s: float) -> "Detection":
        return cls(_clamp(label_id, 0xFFFF), _clamp(round(score * 65535), 0xFFFF), _ms(start_s), _ms(end_s))

    @property
    def score(self) -> float:
        return self.score_q16 / 65535

    def pack(self) -> bytes:
        return _DETECTION.pack(self.label_id, self.score_q16, self.start_ms, self.end_ms)

    @classmethod
    def unpack(cls, payload: bytes) -> "Detection":
        return cls(*_unpack_fixed(_DETECTION, payload, "DETECTION"))


_HEALTH = struct.Struct("<IIHII")


@dataclass(frozen=True)
class Health:
    """realtime_factor = processing time / audio time (x1000); cpu_load in per mille of one core;
    audio_overruns and dropped_telemetry are totals since the device link opened."""

    TYPE = MsgType.HEALTH
    uptime_s: int
    rtf_milli: int
    cpu_permille: int
    audio_overruns: int
    dropped_telemetry: int

    @classmethod
    def from_values(cls, uptime_s: float, realtime_factor: float, cpu_load: float, audio_overruns: int,
                    dropped_telemetry: int) -> "Health":
        return cls(_clamp(uptime_s, 0xFFFFFFFF), _clamp(round(realtime_factor * 1000), 0xFFFFFFFF),
                   _clamp(round(cpu_load * 1000), 0xFFFF), _clamp(audio_overruns, 0xFFFFFFFF),
                   _clamp(dropped_telemetry, 0xFFFFFFFF))

    @property
    def realtime_factor(self) -> float:
        return self.rtf_milli / 1000

    @property
    def cpu_load(self) -> float:
        return self.cpu_permille / 1000

    def pack(self) -> bytes:
        return _HEALTH.pack(self.uptime_s, self.rtf_milli, self.cpu_permille, self.audio_overruns,
                            self.dropped_telemetry)

    @classmethod
    def unpack(cls, payload: bytes) -> "Health":
        return cls(*_unpack_fixed(_HEALTH, payload, "HEALTH"))


@dataclass(frozen=True)
class Log:
    TYPE = MsgType.LOG
    level: int
    text: str

    def pack(self) -> bytes:
        return bytes([_clamp(self.level, 255)]) + truncate_utf8(self.text, MAX_PAYLOAD - 1)

    @classmethod
    def unpack(cls, payload: bytes) -> "Log":
        if not payload:
            raise ProtocolError("LOG payload is empty")
        return cls(payload[0], payload[1:].decode("utf-8", errors="replace"))


@dataclass(frozen=True)
class RequestHello:
    TYPE = MsgType.REQUEST_HELLO

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, payload: bytes) -> "RequestHello":
        if payload:
            raise ProtocolError("REQUEST_HELLO carries no payload")
        return cls()


_BEGIN = struct.Struct("<I32sB")
FLAG_RESTART = 0x01


@dataclass(frozen=True)
class UploadBegin:
    """Starts (or resumes) the upload of an archive; FLAG_RESTART discards any partial copy on the device."""

    TYPE = MsgType.UPLOAD_BEGIN
    total_size: int
    sha256: bytes
    flags: int = 0

    def pack(self) -> bytes:
        return _BEGIN.pack(self.total_size, self.sha256, self.flags)

    @classmethod
    def unpack(cls, payload: bytes) -> "UploadBegin":
        return cls(*_unpack_fixed(_BEGIN, payload, "UPLOAD_BEGIN"))


MAX_CHUNK = MAX_PAYLOAD - 4


@dataclass(frozen=True)
class UploadChunk:
    TYPE = MsgType.UPLOAD_CHUNK
    offset: int
    data: bytes

    def pack(self) -> bytes:
        if not 0 < len(self.data) <= MAX_CHUNK:
            raise ProtocolError(f"an upload chunk holds 1..{MAX_CHUNK} bytes, not {len(self.data)}")
        return struct.pack("<I", self.offset) + self.data

    @classmethod
    def unpack(cls, payload: bytes) -> "UploadChunk":
        if len(payload) < 5:
            raise ProtocolError("UPLOAD_CHUNK payload too short")
        return cls(struct.unpack_from("<I", payload)[0], payload[4:])


@dataclass(frozen=True)
class UploadEnd:
    TYPE = MsgType.UPLOAD_END
    sha256: bytes

    def pack(self) -> bytes:
        return struct.pack("<32s", self.sha256)

    @classmethod
    def unpack(cls, payload: bytes) -> "UploadEnd":
        return cls(*_unpack_fixed(struct.Struct("<32s"), payload, "UPLOAD_END"))


_ACK = struct.Struct("<BII")


@dataclass(frozen=True)
class UploadAck:
    """The device's answer to UPLOAD_BEGIN and UPLOAD_CHUNK: it holds bytes [0, next_offset) whose CRC-32
    is prefix_crc32."""

    TYPE = MsgType.UPLOAD_ACK
    status: int
    next_offset: int
    prefix_crc32: int

    def pack(self) -> bytes:
        return _ACK.pack(self.status, self.next_offset, self.prefix_crc32)

    @classmethod
    def unpack(cls, payload: bytes) -> "UploadAck":
        return cls(*_unpack_fixed(_ACK, payload, "UPLOAD_ACK"))


@dataclass(frozen=True)
class UploadResult:
    TYPE = MsgType.UPLOAD_RESULT
    status: int
    bundle_id: str
    message: str

    def pack(self) -> bytes:
        head = bytes([self.status]) + _pack_str(self.bundle_id, "bundle id")
        return head + truncate_utf8(self.message, MAX_PAYLOAD - len(head))

    @classmethod
    def unpack(cls, payload: bytes) -> "UploadResult":
        if not payload:
            raise ProtocolError("UPLOAD_RESULT payload is empty")
        bundle, pos = _unpack_str(payload, 1)
        return cls(payload[0], bundle, payload[pos:].decode("utf-8", errors="replace"))


MESSAGE_CLASSES = {cls.TYPE: cls for cls in (Hello, Labels, Releases, Detection, Health, Log, RequestHello,
                                             UploadBegin, UploadChunk, UploadEnd, UploadAck, UploadResult)}
Message = (Hello | Labels | Releases | Detection | Health | Log | RequestHello | UploadBegin | UploadChunk
           | UploadEnd | UploadAck | UploadResult)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: header fields plus the message (None for a type this reader does not know, or a
    payload that does not parse; both are counted in DecoderStats)."""

    type: int
    seq: int
    device_ms: int
    message: Message | None
    payload: bytes = field(repr=False, default=b"")


def message_fields(message: Message) -> dict:
    """A message's fields as JSON-friendly values (bytes as lowercase hex, tuples as lists)."""
    out = {}
    for name in message.__dataclass_fields__:
        value = getattr(message, name)
        out[name] = value.hex() if isinstance(value, bytes) else list(value) if isinstance(value, tuple) else value
    return out


def message_from_fields(type_name: str, fields: dict) -> Message:
    """The inverse of message_fields, given the message type's name (e.g. "DETECTION")."""
    cls = MESSAGE_CLASSES[MsgType[type_name]]
    values = {}
    for name, spec in cls.__dataclass_fields__.items():
        value = fields[name]
        values[name] = bytes.fromhex(value) if spec.type == "bytes" else tuple(value) if isinstance(value, list) \
            else value
    return cls(**values)


# ---------------------------------------------------------------- encoding


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (the zlib/Ethernet CRC): check value 0xCBF43926 for b"123456789"."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_raw(msg_type: int, seq: int, device_ms: int, payload: bytes) -> bytes:
    """Wire bytes for one frame with an already packed payload: 0x00, COBS(header + payload + CRC), 0x00.

    The leading delimiter ends any garbage or partial frame the receiver holds, so noise before a frame can
    never take that frame with it; the receiver ignores the empty frame between two delimiters."""
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD}")
    body = HEADER.pack(PROTOCOL_VERSION, msg_type, seq % SEQ_MODULO, device_ms % DEVICE_MS_MODULO) + payload
    return DELIMITER + cobs.encode(body + CRC.pack(crc32(body))) + DELIMITER


def encode_frame(message: Message, seq: int, device_ms: int) -> bytes:
    return encode_raw(message.TYPE, seq, device_ms, message.pack())


# ---------------------------------------------------------------- decoding


@dataclass
class DecoderStats:
    frames: int = 0  # good frames of a known type
    bytes: int = 0  # bytes fed
    crc_errors: int = 0  # well-formed COBS, wrong CRC
    framing_errors: int = 0  # invalid COBS, too short, too long (incl. garbage without a delimiter)
    malformed: int = 0  # CRC correct but the payload does not parse for its type (a sender bug)
    unknown_types: int = 0  # CRC correct, a message type this reader does not know: skipped
    bad_version: int = 0  # CRC correct, another protocol version: skipped

    @property
    def bad_frames(self) -> int:
        """Candidates that failed framing or CRC checks (their contents never reach the caller)."""
        return self.crc_errors + self.framing_errors


class StreamDecoder:
    """Turns a byte stream into frames. Never raises on input; holds at most MAX_ENCODED bytes between calls.

    Everything between two 0x00 delimiters is one candidate frame. A candidate longer than MAX_ENCODED is
    dropped as soon as it gets too long (counted once) and the decoder skips to the next delimiter, so a
    line of garbage cannot grow memory. The first good frame after any damage is always recovered.
    """

    def __init__(self):
        self.stats = DecoderStats()
        self._pending = bytearray()
        self._skipping = False  # inside an over-long candidate: drop bytes until the next delimiter

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> list[Frame]:
        self.stats.bytes += len(data)
        frames: list[Frame] = []
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                self._hold(data[start:])
                return frames
            if self._skipping:
                self._skipping = False
            elif self._pending:
                self._pending += data[start:end]
                candidate = bytes(self._pending)
                self._pending.clear()
                self._decode_candidate(candidate, frames)
            elif end > start:
                self._decode_candidate(data[start:end], frames)
            start = end + 1

    def _hold(self, tail: bytes) -> None:
        if self._skipping or not tail:
            return
        if len(self._pending) + len(tail) > MAX_ENCODED:
            self._pending.clear()
            self._skipping = True
            self.stats.framing_errors += 1
        else:
            self._pending += tail

    def _decode_candidate(self, encoded: bytes, out: list[Frame]) -> None:
        stats = self.stats
        if len(encoded) > MAX_ENCODED:
            stats.framing_errors += 1
            return
        try:
            raw = cobs.decode(encoded)
        except cobs.DecodeError:
            stats.framing_errors += 1
            return
        if len(raw) < MIN_FRAME:
            stats.framing_errors += 1
            return
        body = raw[:-4]
        if zlib.crc32(body) & 0xFFFFFFFF != CRC.unpack_from(raw, len(body))[0]:
            stats.crc_errors += 1
            return
        version, msg_type, seq, device_ms = HEADER.unpack_from(body)
        if version != PROTOCOL_VERSION:
            stats.bad_version += 1
            return
        payload = body[HEADER.size:]
        cls = MESSAGE_CLASSES.get(msg_type)
        if cls is None:
            stats.unknown_types += 1
            out.append(Frame(msg_type, seq, device_ms, None, payload))
            return
        try:
            message = cls.unpack(payload)
        except (ProtocolError, struct.error, ValueError):
            stats.malformed += 1  # still passed on: its sequence number arrived, so it is not a lost frame
            out.append(Frame(msg_type, seq, device_ms, None, payload))
            return
        stats.frames += 1
        out.append(Frame(msg_type, seq, device_ms, message, payload))


def decode_one(wire: bytes) -> Frame:
    """Decode exactly one frame (with or without its delimiters); raises ProtocolError otherwise."""
    decoder = StreamDecoder()
    frames = decoder.feed(DELIMITER + bytes(wire).strip(b"\x00") + DELIMITER)
    if len(frames) != 1 or decoder.stats.bad_frames or decoder.stats.malformed:
        raise ProtocolError(f"not exactly one valid frame: {decoder.stats}")
    return frames[0]
