"""The telemetry protocol without a port: the document's test vectors, the decoder's robustness (hypothesis),
the emitter's never-blocking queue, the host session's bookkeeping and the replay command."""
import csv
import io
import json
import re
import threading
import time

import pytest
from click.testing import CliRunner
from cobs import cobs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.telemetry.emitter import TelemetryEmitter, label_frames
from edge.telemetry.protocol import (MAX_ENCODED, MAX_PAYLOAD, Detection, Health, Hello, Labels, Log, MsgType,
                                     ProtocolError, Releases, RequestHello, StreamDecoder, UploadAck, UploadBegin,
                                     UploadChunk, UploadEnd, UploadResult, crc32, decode_one, encode_frame,
                                     encode_raw, message_fields, message_from_fields)
from firmware_tools.cli import main as cli
from firmware_tools.telemetry_reader import LiveTable, SequenceTracker, TelemetrySession, describe
from tests.conftest import REPO

DOC = (REPO / "docs" / "telemetry-protocol.md").read_text(encoding="utf-8")
GOOD = re.findall(r"```text\nraw:  ([0-9a-f ]+)\nwire: ([0-9a-f ]+)\n```\s*```json\n(.+?)\n```", DOC)
STREAMS = re.findall(r"```text\nstream: ([0-9a-f ]+)\n```\s*```json\n(.+?)\n```", DOC)
COUNTERS = ("frames", "crc_errors", "framing_errors", "malformed", "unknown_types", "bad_version")


def test_document_has_vectors_for_every_message_type():
    assert {json.loads(meaning)["type"] for _, _, meaning in GOOD} == {t.name for t in MsgType}
    assert len(STREAMS) >= 6


@pytest.mark.parametrize("raw, wire, meaning", GOOD, ids=[json.loads(m)["type"] for _, _, m in GOOD])
def test_document_vector_decodes_and_encodes(raw, wire, meaning):
    raw, wire, meaning = bytes.fromhex(raw), bytes.fromhex(wire), json.loads(meaning)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert cobs.decode(wire[1:-1]) == raw
    frame = decode_one(wire)
    assert {"type": MsgType(frame.type).name, "seq": frame.seq, "device_ms": frame.device_ms,
            **message_fields(frame.message)} == meaning
    fields = {k: v for k, v in meaning.items() if k not in ("type", "seq", "device_ms")}
    message = message_from_fields(meaning["type"], fields)
    assert encode_frame(message, meaning["seq"], meaning["device_ms"]) == wire


@pytest.mark.parametrize("stream, expected", STREAMS)
def test_document_reject_vector(stream, expected):
    expected = json.loads(expected)
    decoder = StreamDecoder()
    frames = decoder.feed(bytes.fromhex(stream))
    counts = {name: getattr(decoder.stats, name) for name in COUNTERS}
    assert counts == {name: expected["counts"].get(name, 0) for name in COUNTERS}
    assert [{"type": f.type, "seq": f.seq, "device_ms": f.device_ms} for f in frames] == expected["frames"]


def test_crc_is_the_documented_crc32():
    assert crc32(b"123456789") == 0xCBF43926
    assert "0xCBF43926" in DOC


# ------------------------------------------------------------------------------ round trips (hypothesis)

text = st.text(max_size=40)
u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
messages = st.one_of(
    st.builds(Hello, text, text, text, u32, u16),
    st.builds(Labels, u16, st.lists(st.text(max_size=20), max_size=20).map(tuple)),
    st.builds(lambda previous, kept, keys, more: Releases(previous, len(kept) + more, tuple(kept), tuple(keys)),
              text, st.lists(text, max_size=8), st.lists(text, max_size=4), st.integers(0, 100)),
    st.builds(Detection, u16, u16, u32, u32),
    st.builds(Health, u32, u32, u16, u32, u32),
    st.builds(Log, st.integers(0, 3), st.text(max_size=300)),
    st.just(RequestHello()),
    st.builds(UploadBegin, u32, st.binary(min_size=32, max_size=32), st.integers(0, 1)),
    st.builds(UploadChunk, u32, st.binary(min_size=1, max_size=1020)),
    st.builds(UploadEnd, st.binary(min_size=32, max_size=32)),
    st.builds(UploadAck, st.integers(0, 6), u32, u32),
    st.builds(UploadResult, st.integers(0, 6), st.text(max_size=64), st.text(max_size=200)),
)


@given(messages, u16, u32)
def test_every_message_round_trips(message, seq, stamp):
    wire = encode_frame(message, seq, stamp)
    assert len(wire) <= MAX_ENCODED + 2
    frame = decode_one(wire)
    assert (frame.type, frame.seq, frame.device_ms, frame.message) == (message.TYPE, seq, stamp, message)


def test_word_times_wrap_after_49_7_days_like_the_device_clock():
    day = 86400.0
    late = Detection.from_seconds(3, 0.98, 50 * day + 12.34, 50 * day + 12.61)
    assert (late.start_ms, late.end_ms) == ((50 * 86_400_000 + 12_340) % 2**32, (50 * 86_400_000 + 12_610) % 2**32)
    assert late.end_ms - late.start_ms == 270  # not both stuck at the largest u32
    assert Detection.from_seconds(3, 0.98, -0.01, 0.2).start_ms == 0


def test_the_reader_counts_word_times_on_past_the_wrap_and_anew_after_a_restart():
    """A device up for weeks: `basilar telemetry` read 4,294,967 s of audio and then 2 s."""
    wrap_s = 2**32 / 1000
    times = [(wrap_s - 9.0, wrap_s - 8.5),  # just before the wrap
             (wrap_s - 1.0, wrap_s + 0.5),  # a word across it
             (wrap_s + 2.0, wrap_s + 2.5),
             (wrap_s + 30 * 86400.0, wrap_s + 30 * 86400.0 + 0.5)]  # after 30 quiet days (< 49.7: no wrap)
    wire = b"".join(encode_frame(Detection.from_seconds(1, 0.9, start, end), seq, 1000 * seq)
                    for seq, (start, end) in enumerate(times, start=5))
    wire += encode_frame(Hello("dev", "1.0", "", 8000, 2), 0, 0)  # the device restarted: its audio clock too
    wire += encode_frame(Detection.from_seconds(1, 0.9, 3.0, 3.5), 1, 5)
    records = [r for r in TelemetrySession().feed(wire) if r["type"] == "detection"]
    assert [(r["start_s"], r["end_s"]) for r in records] == [
        (pytest.approx(start, abs=1e-6), pytest.approx(end, abs=1e-6)) for start, end in times + [(3.0, 3.5)]]
    # A reader attached after the wrap whose first word spans it: not a start before the stream began
    across = encode_frame(Detection.from_seconds(1, 0.9, wrap_s - 0.3, wrap_s + 0.2), 9, 9)
    [late] = TelemetrySession().feed(across)
    assert (late["start_s"], late["end_s"]) == (pytest.approx(wrap_s - 0.3), pytest.approx(wrap_s + 0.2))


def test_encoding_refuses_what_does_not_fit():
    with pytest.raises(ProtocolError, match="at most 255"):
        Hello("x" * 300, "", "", 0, 0).pack()
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        encode_raw(0x30, 0, 0, bytes(MAX_PAYLOAD + 1))
    long_log = encode_frame(Log(1, "é" * 2000), 0, 0)  # truncated at a character boundary, still valid
    assert decode_one(long_log).message.text == "é" * ((MAX_PAYLOAD - 1) // 2)


def test_a_device_trusting_more_keys_than_a_frame_holds_reports_the_first_that_fit():
    keys = [f"{i:016x}" for i in range(80)]  # key ids are 16 hex digits
    message = Releases.fitting("e" * 64, ["f" * 64] * 3, keys)
    assert len(message.pack()) <= MAX_PAYLOAD and message.total == 3 and message.releases == ()
    assert 50 < len(message.trusted_keys) < 80 and list(message.trusted_keys) == keys[:len(message.trusted_keys)]
    assert decode_one(encode_frame(message, 0, 0)).message == message
    assert Releases.fitting("", [], keys[:5]).trusted_keys == tuple(keys[:5])
    many = Releases.fitting("", [f"{i:064x}" for i in range(300)], [f"{i:016x}" for i in range(300)])
    assert len(many.pack()) <= MAX_PAYLOAD and many.total == 300  # more than a one-byte count holds


def test_releases_keep_the_newest_that_fit_one_frame():
    releases = [f"{i:064x}" for i in range(40)]  # bundle ids are 64 hex digits; 40 of them do not fit
    message = Releases.fitting(releases[-2], releases, ["a1b2c3d4e5f60718"])
    assert len(message.pack()) <= MAX_PAYLOAD and message.total == 40
    assert 10 < len(message.releases) < 40 and list(message.releases) == releases[-len(message.releases):]
    assert decode_one(encode_frame(message, 0, 0)).message == message
    record = TelemetrySession().feed(encode_frame(message, 0, 0))[-1]
    assert record["type"] == "releases" and record["total"] == 40 and record["trusted_keys"] == ["a1b2c3d4e5f60718"]
    assert describe(record) == f"40 release(s) kept, newest {releases[-1][:16]}  previous {releases[-2][:16]}  " \
                               "1 trusted key(s)"
    broken = {**record, "trusted_keys": ["a1b2c3d4e5f60718", "error: bad.pub is not a basilar-ed25519 key file"]}
    assert describe(broken).endswith("1 trusted key(s)  broken key file: bad.pub is not a basilar-ed25519 key file")
    with pytest.raises(ProtocolError, match="fewer releases in all"):
        Releases.unpack(Releases("", 1, ("a", "b"), ()).pack())
    with pytest.raises(ProtocolError, match="trailing"):
        Releases.unpack(Releases("", 1, ("a",), ()).pack() + b"x")


# ------------------------------------------------------------------------------ decoder robustness

chunked_bytes = st.lists(st.binary(max_size=3000), max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chunked_bytes)
def test_decoder_never_raises_and_stays_bounded(chunks):
    decoder = StreamDecoder()
    for chunk in chunks:
        decoder.feed(chunk)  # must not raise
        assert decoder.buffered <= MAX_ENCODED
    assert decoder.stats.bytes == sum(map(len, chunks))


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(0, 200), messages, u16)
def test_the_next_intact_frame_after_any_garbage_is_recovered(garbage, split, message, seq):
    """Whatever came before (noise, a truncated frame), a frame sent with its leading delimiter is decoded."""
    wire = encode_frame(message, seq, 1234)
    stream = garbage + wire
    decoder = StreamDecoder()
    frames = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
    assert frames and frames[-1].message == message and frames[-1].seq == seq


def test_a_line_of_garbage_without_delimiters_costs_one_error_and_bounded_memory():
    decoder = StreamDecoder()
    for _ in range(100):
        decoder.feed(b"\x55" * 1000)
        assert decoder.buffered <= MAX_ENCODED
    frames = decoder.feed(encode_frame(Log(1, "after the noise"), 3, 0))
    assert [f.message.text for f in frames] == ["after the noise"]
    assert decoder.stats.framing_errors == 1


def test_frames_split_anywhere_across_reads_are_reassembled():
    wire = b"".join(encode_frame(Detection(i % 7, i, i, i + 1), i, i) for i in range(50))
    decoder = StreamDecoder()
    frames = []
    for i in range(0, len(wire), 7):
        frames += decoder.feed(wire[i:i + 7])
    assert [f.seq for f in frames] == list(range(50))
    assert decoder.stats.bad_frames == 0


# ------------------------------------------------------------------------------ emitter


class StuckPort:
    """A port whose first write blocks until released, like a pty nobody reads."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, data):
        self.entered.set()
        self.release.wait()
        return self.buffer.write(data)

    def flush(self):
        pass


def decode_all(data: bytes):
    decoder = StreamDecoder()
    return decoder.feed(data), decoder.stats


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_emitter_never_blocks_and_reports_drops_in_the_next_health():
    port = StuckPort()
    emitter = TelemetryEmitter.from_stream(port, device_id="dev", queue_size=4)
    assert emitter.detection(0, 0.5, 0, 1)
    assert port.entered.wait(5)  # the writer now hangs in write()
    results = []
    caller = threading.Thread(target=lambda: results.extend(
        emitter.detection(i % 3, 0.9, i, i + 1) for i in range(1, 11)))
    caller.start()
    caller.join(5)
    assert not caller.is_alive(), "a sending call blocked"
    assert results == [True] * 4 + [False] * 6
    assert emitter.dropped == 6
    port.release.set()
    wait_for(lambda: len(decode_all(port.buffer.getvalue())[0]) == 5)
    assert emitter.health(10, 0.2, 0.3, 1)
    emitter.close(timeout=5)
    frames, stats = decode_all(port.buffer.getvalue())
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4, 5]  # dropped messages take no sequence number
    assert frames[-1].message == Health(10, 200, 300, 1, 6)
    assert stats.bad_frames == 0


class TimingOutPort:
    """A port whose second write times out part way, as pyserial's write_timeout does: some bytes went out."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:
            self.buffer.write(data[:len(data) // 2])
            raise TimeoutError("Write timeout")
        return self.buffer.write(data)

    def flush(self):
        pass


def test_a_failed_write_is_loss_on_the_line_counted_once_as_a_gap():
    """Frames of a failed write have their numbers: the host counts the missing ones as a gap, and the device
    does not count them (nor the ones that went out before the timeout) as dropped too."""
    port = TimingOutPort()
    emitter = TelemetryEmitter.from_stream(port, device_id="dev", queue_size=100)
    emitter.detection(0, 0.5, 0, 1)
    wait_for(lambda: port.writes == 1)
    for i in range(1, 21):
        emitter.detection(0, 0.5, i, i + 1)
    wait_for(lambda: port.writes >= 2)
    emitter.health(10, 0.2, 0.3, 0)
    emitter.close(timeout=5)
    session = TelemetrySession()
    records = session.feed(port.buffer.getvalue())
    received = sum(r["type"] == "detection" for r in records)
    lost = session.counters()["lost_frames"]
    assert 0 < lost and received + lost == 21  # every detection arrived or shows as a gap
    assert emitter.dropped == 0 and records[-1]["dropped_telemetry"] == 0


def test_a_long_outage_is_never_read_as_a_restart_and_each_lost_frame_is_counted_once(monkeypatch):
    """A gap of 32768 or more would read as a device restart (65536 as no loss at all): past MAX_GAP frames
    unwritten in a row, frames get no number and are counted as dropped instead."""
    import edge.telemetry.emitter as emitter_module

    import types

    # No back-off after each failed write (the emitter's own clock only; the test's sleeps stay real).
    monkeypatch.setattr(emitter_module, "time", types.SimpleNamespace(sleep=lambda s: None, monotonic=time.monotonic))

    class Line(io.RawIOBase):
        def __init__(self):
            self.buffer, self.broken = bytearray(), False

        def writable(self):
            return True

        def write(self, data):
            if self.broken:
                raise OSError("the port is gone")
            self.buffer += data
            return len(data)

    line = Line()
    emitter = TelemetryEmitter.from_stream(line, device_id="dev", queue_size=100_000)
    emitter.health(1, 0.2, 0.1, 0)
    wait_for(lambda: len(line.buffer) > 0)
    line.broken = True
    lost = 40_000
    for i in range(lost):
        while not emitter.health(i, 0.2, 0.1, 0):
            time.sleep(0.01)
    wait_for(lambda: emitter._unwritten + emitter.dropped == lost)  # the writer has tried every one of them
    line.broken = False
    emitter.health(2, 0.2, 0.1, 0)
    emitter.close(timeout=5)
    session = TelemetrySession()
    records = session.feed(bytes(line.buffer))
    assert session.counters()["device_restarts"] == 0
    assert session.counters()["lost_frames"] == emitter_module.MAX_GAP
    assert records[-1]["dropped_telemetry"] == emitter.dropped == lost - emitter_module.MAX_GAP


def test_emitter_close_flushes_everything_and_is_bounded_on_a_stuck_port():
    out = io.BytesIO()
    emitter = TelemetryEmitter.from_stream(out, device_id="dev", queue_size=1000)
    emitter.hello("1.0", "b" * 64, ["a", "b"], 16000)
    for i in range(500):
        emitter.detection(i % 2, 0.5, i, i + 1)
    emitter.close(timeout=5)
    frames, stats = decode_all(out.getvalue())
    assert len(frames) == 502 and stats.bad_frames == 0
    assert not emitter.detection(0, 1, 0, 1) and emitter.dropped == 1  # after close: dropped, not raised

    stuck = StuckPort()
    emitter = TelemetryEmitter.from_stream(stuck, device_id="dev")
    emitter.log("x")
    assert stuck.entered.wait(5)
    closer = threading.Thread(target=emitter.close, kwargs={"timeout": 0.2})
    closer.start()
    closer.join(5)
    assert not closer.is_alive()
    stuck.release.set()


def test_a_message_too_big_for_a_frame_is_dropped_and_the_writer_goes_on():
    out = io.BytesIO()
    emitter = TelemetryEmitter.from_stream(out, device_id="dev")
    emitter.detection(0, 0.5, 1.0, 1.5)
    assert emitter.send(Releases("", 0, (), tuple(f"{i:016x}" for i in range(80))))  # 1,365 bytes: no frame holds it
    assert emitter.send(Releases("", 0, (), tuple(f"{i:02x}" for i in range(256))))  # more than a count byte holds
    emitter.detection(1, 0.75, 2.0, 2.5)
    emitter.close()
    frames, stats = decode_all(out.getvalue())
    assert [f.message.label_id for f in frames] == [0, 1] and [f.seq for f in frames] == [0, 1]
    assert stats.bad_frames == 0 and emitter.dropped == 2


def test_many_long_labels_are_split_into_frames_and_reassembled():
    labels = [f"label number {i} " + "x" * (i % 50) for i in range(600)]
    parts = label_frames(labels)
    assert len(parts) > 1 and all(len(p.pack()) <= MAX_PAYLOAD for p in parts)
    out = io.BytesIO()
    emitter = TelemetryEmitter.from_stream(out, device_id="dev")
    emitter.hello("1.0", "c" * 64, labels, 16000)
    emitter.detection(599, 0.75, 1.0, 1.5)
    emitter.close()
    session = TelemetrySession()
    records = session.feed(out.getvalue())
    assert records[0]["type"] == "hello" and records[0]["label_count"] == 600
    assert records[-1]["label"] == labels[599] and records[-1]["score"] == 0.75


# ------------------------------------------------------------------------------ host bookkeeping


def frame(message, seq, stamp=1000):
    return decode_one(encode_frame(message, seq, stamp))


def test_sequence_gaps_wrap_around_and_restarts_are_not_losses():
    tracker = SequenceTracker()
    det = Detection(0, 0, 0, 0)
    assert tracker.observe(frame(det, 65533)) == (0, False)
    assert tracker.observe(frame(det, 65534)) == (0, False)
    assert tracker.observe(frame(det, 2)) == (3, False)  # 65535, 0, 1 lost across the wrap
    assert tracker.observe(frame(Hello("d", "v", "", 0, 0), 0, 1000)) == (0, True)  # device reopened its link
    assert tracker.observe(frame(det, 1, 1500)) == (0, False)
    assert tracker.observe(frame(det, 9, 100)) == (0, True)  # clock went back: rebooted, HELLO missed
    assert tracker.observe(frame(det, 5, 200)) == (0, True)  # sequence went back
    assert (tracker.lost, tracker.restarts) == (3, 3)


def test_a_restart_whose_hello_was_lost_is_a_restart_after_weeks_of_uptime():
    """A device up for weeks: its seq in the upper half (a new session's numbers are a forward gap under 32768),
    its clock since boot does not go back when basilar restarts, and past 24.8 days a reboot does not read as a
    step back modulo 2^32. A session's opening frame (LABELS, or the HELLO answering the host's REQUEST_HELLO) under
    seq 8 after a gap is the restart; a detection or HEALTH there is a loss across the wrap of seq."""
    day_ms = 86_400_000
    det = Detection(0, 0, 0, 0)
    labels = Labels(0, ("yes", "no"))
    hello = Hello("d", "v", "", 0, 0)
    for opening, seq in [(labels, 1), (hello, 2)]:  # HELLO lost; or HELLO and LABELS, then the answer to REQUEST_HELLO
        for last_seq, before_ms, after_ms in [(40_000, 10 * day_ms, 10 * day_ms + 4_000),  # basilar restarted
                                              (40_000, 26 * day_ms, 30_000), (60_000, 40 * day_ms, 30_000)]:  # reboots
            tracker = SequenceTracker()
            assert tracker.observe(frame(det, last_seq, before_ms)) == (0, False)
            assert tracker.observe(frame(opening, seq, after_ms)) == (0, True)
            assert tracker.observe(frame(det, seq + 1, after_ms + 10)) == (0, False)
    tracker = SequenceTracker()  # a real loss across the wrap, however long, is a loss
    assert tracker.observe(frame(det, 65_000, 5_000)) == (0, False)
    assert tracker.observe(frame(det, 44, 9_000)) == (579, False)
    assert tracker.observe(frame(hello, 45, 9_100)) == (0, False)  # an answer to REQUEST_HELLO past seq 8
    assert (tracker.lost, tracker.restarts) == (579, 0)
    tracker = SequenceTracker()  # and so is a session's LABELS lost between its HELLO and RELEASES
    assert tracker.observe(frame(hello, 0, 1_000)) == (0, False)
    assert tracker.observe(frame(Releases("", 0, (), ()), 2, 1_000)) == (1, False)


def test_session_turns_gaps_into_records_and_counts_unknown_types():
    wire = (encode_frame(Detection(0, 65535, 0, 250), 0, 10) + encode_raw(0x77, 1, 11, b"future")
            + encode_frame(Detection(0, 0, 250, 500), 5, 12))
    session = TelemetrySession()
    records = session.feed(wire)
    assert [r["type"] for r in records] == ["detection", "gap", "detection"]
    assert records[1]["lost"] == 3
    counters = session.counters()
    assert counters["unknown_types"] == 1 and counters["lost_frames"] == 3 and counters["frames"] == 3


# ------------------------------------------------------------------------------ replay command


def capture_with_damage(tmp_path):
    good = [encode_frame(Hello("dev", "1.0", "d" * 64, 16000, 2), 0, 0),
            encode_frame(Labels(0, ("yes", "no")), 1, 0)]
    good += [encode_frame(Detection(i % 2, 60000, i * 100, i * 100 + 50), 2 + i, 100 + i) for i in range(10)]
    raw = bytearray(cobs.decode(good[5][1:-1]))
    raw[10] ^= 0x04  # one bit of the score: a CRC error
    damaged = b"\x00" + cobs.encode(bytes(raw)) + b"\x00"
    data = b"".join(good[:5]) + damaged + b"\x13\x37" + b"".join(good[6:])  # and noise between frames
    path = tmp_path / "capture.bin"
    path.write_bytes(data)
    return path


def test_replay_jsonl_and_csv(tmp_path):
    capture = capture_with_damage(tmp_path)
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in lines].count("detection") == 9
    gap = next(r for r in lines if r["type"] == "gap")
    assert gap["lost"] == 1 and gap["text"].endswith("before seq 6")
    assert [r["label"] for r in lines if r["type"] == "detection"][:2] == ["yes", "no"]
    assert "1 lost (sequence gaps), 1 CRC errors, 1 framing errors" in result.stderr

    out = tmp_path / "out.csv"
    for _ in range(2):  # appends; the header only once
        result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "csv",
                                          "--output", str(out)])
        assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert rows[0].startswith("host_time,type,seq") and rows.count(rows[0]) == 1
    assert sum(",detection," in row for row in rows) == 18


def test_csv_carries_the_releases_and_refuses_a_file_of_other_columns(tmp_path):
    """RELEASES' fields were left out of the CSV (only JSONL had them); appending rows of these columns to a CSV
    with another header would put every value under the wrong name."""
    capture = tmp_path / "capture.bin"
    capture.write_bytes(encode_frame(Hello("dev", "1.0", "d" * 64, 16000, 0), 0, 0)
                        + encode_frame(Releases("b" * 64, 2, ("b" * 64, "d" * 64), ("a1b2c3d4e5f60718",)), 1, 0))
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0, result.output
    [row] = [r for r in csv.DictReader(out.open()) if r["type"] == "releases"]
    assert row["previous"] == "b" * 64 and row["total"] == "2" and row["trusted_keys"] == "a1b2c3d4e5f60718"
    assert row["releases"] == f"{'b' * 64} {'d' * 64}"

    old = tmp_path / "old.csv"
    old.write_text("host_time,type,seq\n1,hello,0\n")
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "csv", "--output", str(old)])
    assert result.exit_code == 1 and "other columns" in result.output and "new file" in result.output
    assert old.read_text() == "host_time,type,seq\n1,hello,0\n"


@pytest.mark.parametrize("fmt", ["jsonl", "table"])
def test_json_lines_are_not_appended_to_a_csv_file_nor_to_any_other(tmp_path, fmt):
    """The reverse of the CSV refusal above: JSON lines after a CSV header would make the file neither."""
    capture = tmp_path / "capture.bin"
    capture.write_bytes(encode_frame(Hello("dev", "1.0", "d" * 64, 16000, 0), 0, 0))
    out = tmp_path / "out.csv"
    assert CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "csv", "--output",
                                    str(out)]).exit_code == 0
    written = out.read_text()
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", fmt, "--output", str(out)])
    assert result.exit_code == 1 and "holds basilar's CSV, not JSON lines" in result.output
    assert "--format csv" in result.output and out.read_text() == written
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n")
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", fmt, "--output", str(notes)])
    assert result.exit_code == 1 and "something other than JSON lines" in result.output
    assert notes.read_text() == "shopping list\n"
    jsonl = tmp_path / "out.jsonl"
    for _ in range(2):  # JSON lines go on appending to JSON lines; CSV is refused there
        assert CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", fmt, "--output",
                                        str(jsonl)]).exit_code == 0
    assert [json.loads(line)["type"] for line in jsonl.read_text().splitlines()] == ["hello", "hello"]
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "csv", "--output", str(jsonl)])
    assert result.exit_code == 1 and "holds JSON lines, not CSV" in result.output


@pytest.mark.parametrize("option", [["--capture", "raw.bin"], ["--passive"], ["--wait"], ["--duration", "5"],
                                    ["--baud", "9600"]])
def test_a_replay_refuses_options_that_only_mean_something_on_a_port(tmp_path, option):
    """They were silently ignored: a capture never written, a --duration that did not cut the replay short."""
    capture = tmp_path / "capture.bin"
    capture.write_bytes(encode_frame(Hello("dev", "1.0", "d" * 64, 16000, 0), 0, 0))
    option = [str(tmp_path / value) if value == "raw.bin" else value for value in option]
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "jsonl", *option])
    assert result.exit_code == 2 and f"{option[0]} is for reading a port" in result.output
    assert "hello" not in result.output and not (tmp_path / "raw.bin").exists()


def test_replay_table_for_people(tmp_path):
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture_with_damage(tmp_path))])
    assert result.exit_code == 0
    assert "detection" in result.stdout and "yes" in result.stdout and "score 0.915" in result.stdout


def test_telemetry_command_errors_name_the_problem(tmp_path):
    result = CliRunner().invoke(cli, ["telemetry"])
    assert result.exit_code == 2 and "serial PORT" in result.output
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(tmp_path / "missing.bin")])
    assert result.exit_code == 1 and "cannot read the capture" in result.output
    result = CliRunner().invoke(cli, ["telemetry", str(tmp_path / "ttyNOPE")])
    assert result.exit_code == 1 and "does not exist" in result.output and "--wait" in result.output


def test_live_table_shows_device_health_counters_and_recent_detections():
    out = io.StringIO()
    session = TelemetrySession()
    table = LiveTable(out, session, "/dev/ttyUSB0", recent=3)
    wire = (encode_frame(Hello("kitchen", "1.2", "e" * 64, 16000, 2), 0, 0)
            + encode_frame(Labels(0, ("yes", "no")), 1, 0) + encode_frame(Health(60, 210, 330, 0, 0), 2, 10)
            + b"".join(encode_frame(Detection(i % 2, 52428, i * 1000, i * 1000 + 400), 3 + i, 20) for i in range(5))
            + encode_frame(Detection(1, 65535, 9000, 9400), 10, 30))  # two frames lost before this one
    for record in session.feed(wire, "2026-01-01T00:00:00.000+00:00"):
        table.write(record)
    table.close()
    screen = out.getvalue().rsplit("\x1b[H\x1b[2J", 1)[1]  # the last redraw
    assert "device kitchen  basilar 1.2" in screen and "uptime 60 s  rtf 0.210  cpu 33.0%" in screen
    assert "frames 9  lost 2" in screen and "2 frame(s) lost before seq 10" in screen
    rows = [line for line in screen.splitlines() if line.startswith("2026-01-01") and " gap " not in line]
    assert [row.split()[1:3] for row in rows] == [["no", "1.000"], ["yes", "0.800"], ["no", "0.800"]]


def test_close_counts_what_a_stuck_port_holds_and_leaves_the_writer_to_send_it_and_end():
    """What is counted as unsent at close is the write under way and what waits behind it, exactly; and counting
    it must not take it (or the stop) from the queue: the writer, once the port takes its write, sends the rest and
    ends, where before it waited on an empty queue for good."""
    port = StuckPort()
    emitter = TelemetryEmitter.from_stream(port, device_id="dev", queue_size=100)
    emitter.detection(0, 0.5, 0, 1)
    assert port.entered.wait(5)  # the writer now hangs in write()
    for i in range(1, 11):
        emitter.detection(0, 0.5, i, i + 1)
    emitter.close(timeout=0.3)
    assert emitter.unsent_at_close == 11
    port.release.set()
    emitter._writer.join(10)  # noqa: SLF001
    assert not emitter._writer.is_alive()  # noqa: SLF001
    frames, stats = decode_all(port.buffer.getvalue())
    assert [f.message.start_ms for f in frames] == [i * 1000 for i in range(11)] and stats.bad_frames == 0
