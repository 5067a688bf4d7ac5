"""The host reader's own judgement: a device restart it did not see happen, the port it holds, and what it lets
device text do to a terminal. Captures are built from real encoded frames; ports are real pseudo-terminals."""
import io
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from edge.telemetry.link import DeviceLink
from edge.telemetry.protocol import (Detection, Health, Hello, Labels, Log, MsgType, StreamDecoder, decode_one,
                                     encode_frame)
from firmware_tools.cli import main as cli
from firmware_tools.telemetry_reader import (AudioClock, LinesTable, LiveTable, SequenceTracker, TelemetryError,
                                             TelemetryReader, TelemetrySession, open_port, replay)
from tests.conftest import REPO
from tests.serial_pty import PtyCable

BOOT_MS = 7_200_000  # the device clock (time since boot) when session 1 opens its link
LABELS = ("speech", "dog", "doorbell")


def session_one() -> bytes:
    """`basilar run` on a 332-s file: HELLO, LABELS, a detection every 8 s of audio, HEALTH every 60 s."""
    wire = [encode_frame(Hello("pi-kitchen", "0.1.0", "ab" * 32, 16000, 3), 0, BOOT_MS),
            encode_frame(Labels(0, LABELS), 1, BOOT_MS)]
    for i in range(40):
        second = 8 * i + 10
        message = (Health(second, 200, 300, 0, 0) if i % 8 == 7
                   else Detection(i % 3, 50_000, second * 1000, second * 1000 + 400))
        wire.append(encode_frame(message, 2 + i, BOOT_MS + second * 1000))
    return b"".join(wire)


def session_two(first: str) -> bytes:
    """`basilar run --health-every 0.001` restarted on a new cable while the host's was out: the reader sees it
    from seq 77 on (its HELLO and LABELS went nowhere), then the HELLO and LABELS that answer its REQUEST_HELLO."""
    stamp = BOOT_MS + 352_000  # the clock since boot goes on: a process restart does not take it back
    health, word = Health(16, 180, 250, 0, 0), Detection(2, 60_000, 14_700, 15_200)
    wire = [encode_frame(message, seq, stamp + seq) for seq, message in
            enumerate([health, word] if first == "health" else [word, health], start=77)]
    wire += [encode_frame(Hello("pi-kitchen", "0.1.0", "ab" * 32, 16000, 3), 79, stamp + 5),
             encode_frame(Labels(0, LABELS), 80, stamp + 5),
             encode_frame(Detection(0, 40_000, 16_000, 16_300), 81, stamp + 1300)]
    return b"".join(wire)


@pytest.mark.parametrize("first", ["health", "detection"])
def test_a_restart_missed_while_the_cable_was_out_is_a_restart_and_word_times_start_again(tmp_path, first):
    """The cut of a capture where the cable came out during session 1 (its last frame half sent) and went back in
    16 s into session 2: no lost frames, one restart, session 2's words at 14.7 s (not 4,294,981.996 s), and named
    by label id until session 2's own LABELS come (it may run another bundle than session 1's)."""
    cut = session_one() + encode_frame(Detection(0, 1, 332_000, 332_400), 42, BOOT_MS + 332_000)[:9]
    capture = tmp_path / "capture.bin"
    capture.write_bytes(cut + session_two(first))
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "0 lost (sequence gaps)" in result.stderr and "1 device restarts" in result.stderr
    assert not [r for r in records if r["type"] == "gap"]
    assert [r.get("event") for r in records if r["type"] == "link"] == ["device_restart"]
    words = [(r["seq"], r["label"], r["start_s"], r["end_s"]) for r in records if r["type"] == "detection"]
    assert words[-2:] == [(78 if first == "health" else 77, "#2", 14.7, 15.2), (81, "speech", 16.0, 16.3)]
    assert words[-3][2:] == (314.0, 314.4)  # session 1's last whole word


def test_the_evidence_of_another_session_and_what_is_none():
    det = Detection(0, 0, 300_000, 300_400)
    hello = Hello("pi-kitchen", "0.1.0", "aa", 16000, 1)
    tracker = SequenceTracker()
    assert tracker.observe(decode_one(encode_frame(Health(300, 0, 0, 0, 0), 10, 1000))) == (0, False)
    assert tracker.observe(decode_one(encode_frame(Health(299, 0, 0, 0, 0), 11, 1000))) == (0, False)  # 1 s: order
    assert tracker.observe(decode_one(encode_frame(Health(5, 0, 0, 0, 0), 20, 1000))) == (0, True)  # uptime back
    assert tracker.observe(decode_one(encode_frame(det, 21, 1000))) == (0, False)  # the old session's end forgotten
    assert tracker.observe(decode_one(encode_frame(Detection(0, 0, 250_000, 250_400), 22, 1000))) == (0, False)
    assert tracker.observe(decode_one(encode_frame(Detection(0, 0, 1_000, 1_400), 30, 1000))) == (0, True)
    assert tracker.observe(decode_one(encode_frame(hello, 31, 1000))) == (0, False)
    new_bundle = Hello("pi-kitchen", "0.1.0", "bb", 16000, 1)  # installed by an upload while it runs
    assert tracker.observe(decode_one(encode_frame(new_bundle, 32, 1000))) == (0, False)
    new_software = Hello("pi-kitchen", "0.2.0", "bb", 16000, 1)
    assert tracker.observe(decode_one(encode_frame(new_software, 40, 1000))) == (0, True)
    assert (tracker.lost, tracker.restarts) == (0, 3)  # the gaps before seq 20, 30 and 40 were restarts


def test_the_audio_clock_wraps_only_where_a_wrap_is_plausible():
    clock = AudioClock()
    assert clock.seconds(331_600, 332_000) == (331.6, 332.0)
    assert clock.seconds(14_700, 15_200) == (14.7, 15.2)  # 317 s back: a new clock, not 49.7 days on
    late = AudioClock()
    top = 2**32 - 5 * 86_400_000  # 5 quiet days before the wrap, 5 after it
    late.seconds(top - 400, top)
    assert late.seconds(5 * 86_400_000 - 400, 5 * 86_400_000) == (pytest.approx((2**32 + 5 * 86_400_000 - 400) / 1000),
                                                               pytest.approx((2**32 + 5 * 86_400_000) / 1000))


def test_a_detection_ending_before_it_starts_is_malformed_and_leaves_the_clock_alone():
    """Read modulo 2^32, end < start would be a word of 49.7 days less a little: it and every later word would
    move 49.7 days on. It is skipped and counted as malformed; its seq arrived (no gap); the next word reads right."""
    wire = (encode_frame(Detection(0, 50_000, 10_000, 10_400), 0, 11_000)
            + encode_frame(Detection(1, 50_000, 20_400, 20_000), 1, 21_000)  # a sender bug
            + encode_frame(Detection(2, 50_000, 30_000, 30_500), 2, 31_000)
            + encode_frame(Detection(0, 50_000, 2**32 - 200, 100), 3, 32_000))  # a real word across the wrap
    session = TelemetrySession()
    records = session.feed(wire)
    assert [(r["type"], r["start_s"], r["end_s"]) for r in records] == [
        ("detection", 10.0, 10.4), ("detection", 30.0, 30.5),
        ("detection", pytest.approx((2**32 - 200) / 1000), pytest.approx((2**32 + 100) / 1000))]
    counters = session.counters()
    assert (counters["malformed"], counters["frames"], counters["lost_frames"]) == (1, 4, 0)
    assert "1 malformed" in session.summary()


@pytest.fixture
def cable(tmp_path):
    cable = PtyCable(tmp_path)
    yield cable
    cable.close()


def test_a_second_reader_on_the_same_port_is_refused(cable):
    connected = threading.Event()
    reader = TelemetryReader(cable.host_path, emit=lambda record: connected.set(), request_hello=False,
                             say=lambda text: None)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        assert connected.wait(10)
        result = CliRunner().invoke(cli, ["telemetry", cable.host_path, "--passive", "--duration", "0.2"])
        assert result.exit_code == 1, result.output
        assert "is in use by another program" in result.output and "Traceback" not in result.output
    finally:
        reader.stop()
        thread.join(10)
    result = CliRunner().invoke(cli, ["telemetry", cable.host_path, "--passive", "--duration", "0.2"])
    assert result.exit_code == 0, result.output  # the first reader gone, the port is free again


def test_a_baud_rate_out_of_range_is_refused_without_a_traceback(cable):
    for option in ([], ["--wait"]):
        result = CliRunner().invoke(cli, ["telemetry", cable.host_path, "--baud", "2147483648", *option])
        assert result.exit_code == 2 and "50<=x<=2147483647" in result.output, result.output
    result = CliRunner().invoke(cli, ["telemetry", cable.host_path, "--baud", "12000000", "--passive", "--duration",
                                      "0.2"])
    assert result.exit_code == 0, result.output  # a fast USB adapter's custom rate
    with pytest.raises(TelemetryError, match="cannot use baud rate 2147483648"):
        open_port(cable.host_path, 2**31)


def test_a_port_that_cannot_be_opened_says_why_in_words(tmp_path):
    (tmp_path / "adir").mkdir()
    result = CliRunner().invoke(cli, ["telemetry", str(tmp_path / "adir")])
    assert result.exit_code == 1 and f"{tmp_path / 'adir'}: Is a directory\n" in result.output, result.output


def test_a_port_that_never_appears_within_the_duration_is_an_error(tmp_path):
    result = CliRunner().invoke(cli, ["telemetry", str(tmp_path / "ttyNOPE"), "--wait", "--duration", "0.3"])
    assert result.exit_code == 1, result.output
    assert f"gave up waiting for {tmp_path / 'ttyNOPE'} after 0.3 s" in result.output
    assert "telemetry: 0 record(s) written" in result.stderr  # the summary still comes


def test_a_capture_ending_inside_a_frame_counts_its_tail(tmp_path):
    whole = encode_frame(Detection(1, 1, 0, 400), 0, 0)
    capture = tmp_path / "cut.bin"
    capture.write_bytes(whole + encode_frame(Detection(1, 1, 500, 900), 1, 0)[:11])  # no final delimiter
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert "1 framing errors" in result.stderr and "the last 10 bytes form no whole frame" in result.stderr
    capture.write_bytes(whole)  # a capture that ends on a delimiter has no such tail
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "jsonl"])
    assert "0 framing errors" in result.stderr and "no whole frame" not in result.stderr


HOSTILE = "\x1b]0;owned\x07"  # an OSC sequence: retitles the terminal window
FORGED = "\n2026-01-01T00:00:00.000+00:00 detection    99  doorbell         score 1.000"


def test_device_text_cannot_drive_the_terminal_or_forge_table_lines():
    wire = (encode_frame(Hello("dev" + HOSTILE, "1.0\x1b[2J", "cd" * 32, 16000, 2), 0, 0)
            + encode_frame(Labels(0, ("yes" + FORGED, "no\x1b[31m")), 1, 0)
            + encode_frame(Detection(0, 65535, 0, 400), 2, 10) + encode_frame(Detection(1, 65535, 500, 900), 3, 10)
            + encode_frame(Log(2, "overrun" + FORGED + HOSTILE), 4, 20))
    lines_out, live_out = io.StringIO(), io.StringIO()
    session = TelemetrySession()
    lines, live = LinesTable(lines_out), LiveTable(live_out, session, "/dev/ttyUSB0")
    for record in session.feed(wire, "2026-01-01T00:00:00.000+00:00"):
        lines.write(record)
        live.write(record)
    live.close()
    screen = live_out.getvalue().rsplit("\x1b[H\x1b[2J", 1)[1]  # the live view's own escape, then its last screen
    for out in (lines_out.getvalue(), screen):
        assert "\x1b" not in out and "\x07" not in out, out
        assert "\\x1b]0;owned\\x07" in out and "no\\x1b[31m" in out
    table = lines_out.getvalue().splitlines()
    assert len(table) == 1 + 4  # the header and one line per record: no forged line
    assert not [line for line in table if line.startswith(FORGED.strip())]
    assert "yes\\n2026-01-01" in table[2] and "[warning] overrun\\n2026" in table[4]
    assert "device dev\\x1b]0;owned\\x07  basilar 1.0\\x1b[2J" in screen


# ------------------------------------------------------------------------------ a device's end of the cable out


class DeviceEndOut:
    """The cable's device end (the host's adapter stays plugged in, its port open): while `out`, what the device
    sends goes nowhere; `lost` holds the frames that did."""

    def __init__(self):
        self.out = False
        self.lost = []
        self._decoder = StreamDecoder()

    def apply(self, data: bytes) -> bytes:
        if not self.out:
            return data
        self.lost += self._decoder.feed(data)
        return b""


def wait_for(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def reading(port, **options):
    """A live reader in a thread for as long as the block runs, from when it has the port open (opening it drops
    what the port held: pyserial flushes its input); yields the records it emits."""
    records = []
    reader = TelemetryReader(port, emit=records.append, say=lambda text: None, **options)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(r.get("event") == "connected" for r in records), f"the reader to open {port}")
        yield records
    finally:
        reader.stop()
        thread.join(10)
    assert not thread.is_alive()


def detections(records):
    return [r for r in records if r["type"] == "detection"]


def test_a_restart_into_another_bundle_seen_without_its_hello_is_asked_about_and_named_only_by_its_own_labels(
        tmp_path):
    """The device's end of the cable is out while it restarts into a bundle with other labels: its HELLO and LABELS
    go nowhere, the reader sees the restart from the numbering going back. Its words are named by label id, never
    from the old bundle, until the HELLO the reader asks for at once brings the new names."""
    cable_end = DeviceEndOut()
    cable = PtyCable(tmp_path, corruption=cable_end)
    link = DeviceLink(cable.device_path, 115200, device_id="pi-kitchen")
    try:
        link.emitter.hello("0.1.0", "aa" * 32, ["yes", "no"], 16000)
        with reading(cable.host_path) as records:
            link.emitter.detection(0, 0.9, 1.0, 1.4)
            link.emitter.detection(1, 0.9, 2.0, 2.4)
            wait_for(lambda: len(detections(records)) == 2, "session 1's words")
            cable_end.out = True
            link.close()
            link = DeviceLink(cable.device_path, 115200, device_id="pi-kitchen")  # the same software, restarted
            link.emitter.hello("0.1.0", "bb" * 32, ["up", "down"], 16000)
            wait_for(lambda: [f.type for f in cable_end.lost] == [MsgType.HELLO, MsgType.LABELS], "the lost HELLO")
            cable_end.out = False
            link.emitter.detection(0, 0.8, 0.5, 0.9)  # seq 2, after session 1's 5 or more
            wait_for(lambda: [r["bundle_id"] for r in records if r["type"] == "hello"][-1] == "bb" * 32,
                     "the HELLO the reader asks for")
            link.emitter.detection(1, 0.8, 1.5, 1.9)
            wait_for(lambda: len(detections(records)) == 4, "session 2's second word")
    finally:
        link.close()
        cable.close()
    assert [r["label"] for r in detections(records)] == ["yes", "no", "#0", "down"]
    restart = next(i for i, r in enumerate(records) if r.get("event") == "device_restart")
    assert [r["type"] for r in records[restart:]] == ["link", "detection", "hello", "detection"]


def test_reader_runs_appended_to_one_capture_replay_as_the_runs_read_them(tmp_path):
    """docs/deploy.md: stop the reader, deploy, start it again with the same --capture. What the device sent while
    no reader ran (a word, the new bundle's HELLO and LABELS) was no loss live and named nothing there (the second
    run is --passive); the replay gives the runs' records, and an older reader reads the capture with one framing
    error (the marker)."""
    cable_end = DeviceEndOut()
    cable = PtyCable(tmp_path, corruption=cable_end)
    capture = tmp_path / "raw.bin"
    link = DeviceLink(cable.device_path, 115200, device_id="pi-kitchen")
    try:
        link.emitter.hello("0.1.0", "aa" * 32, ["yes", "no"], 16000)
        with reading(cable.host_path, capture=str(capture)) as first:
            link.emitter.detection(0, 0.9, 1.0, 1.4)
            link.emitter.detection(1, 0.9, 2.0, 2.4)
            wait_for(lambda: len(detections(first)) == 2, "the first run's words")
        cable_end.out = True  # no reader: what the device sends goes nowhere
        link.emitter.detection(1, 0.9, 3.0, 3.4)
        link.emitter.hello("0.1.0", "bb" * 32, ["up", "down"], 16000)  # the deploy installed another bundle
        wait_for(lambda: len(cable_end.lost) == 3, "what no reader got")
        cable_end.out = False
        with reading(cable.host_path, capture=str(capture), request_hello=False) as second:
            link.emitter.detection(0, 0.8, 4.0, 4.4)
            link.emitter.detection(1, 0.8, 5.0, 5.4)
            wait_for(lambda: len(detections(second)) == 2, "the second run's words")
    finally:
        link.close()
        cable.close()
    assert [r["label"] for r in detections(first + second)] == ["yes", "no", "#0", "#1"]
    live = [{k: v for k, v in r.items() if k != "host_time"} for r in first + second if r["type"] != "link"]
    result = CliRunner().invoke(cli, ["telemetry", "--replay", str(capture), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == live
    assert "0 lost (sequence gaps), 0 CRC errors, 0 framing errors" in result.stderr
    for block in (1, 7):  # a marker cut between the blocks read
        records = []
        session = replay(str(capture), lambda r: records.append({k: v for k, v in r.items() if v is not None}),
                         block=block)
        assert records == live
    older = StreamDecoder()
    assert len(older.feed(capture.read_bytes())) == session.counters()["frames"] and older.stats.framing_errors == 1


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_device_text_that_standard_output_cannot_encode_is_written_escaped(tmp_path, fmt):
    """PYTHONIOENCODING=cp1252 (or a Latin-1 locale): a label or LOG text outside it is escaped, no traceback."""
    capture = tmp_path / "raw.bin"
    capture.write_bytes(encode_frame(Hello("pi-kitchen", "0.1.0", "ab" * 32, 16000, 2), 0, 0)
                        + encode_frame(Labels(0, ("犬", "café")), 1, 0)
                        + encode_frame(Detection(0, 65535, 0, 400), 2, 10)
                        + encode_frame(Detection(1, 65535, 500, 900), 3, 10)
                        + encode_frame(Log(2, "mic → gone"), 4, 20))
    done = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "telemetry", "--replay", str(capture),
                           "--format", fmt], env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "cp1252"},
                          cwd=REPO, capture_output=True, timeout=60)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0 and "Traceback" not in stderr, stderr
    out = done.stdout.decode("cp1252")
    if fmt == "jsonl":  # JSON's own escapes: the lines still parse
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["label"] for r in records if r["type"] == "detection"] == ["犬", "café"]
        assert records[-1]["text"] == "mic → gone"
    else:
        assert "\\u72ac" in out and "café" in out and "mic \\u2192 gone" in out


def test_restarts_coming_fast_are_asked_about_no_faster_than_the_interval(tmp_path):
    """A device gone wrong whose numbering goes back twenty times within half a second: the reader asks for its
    HELLO (it never comes), but not once per restart."""
    import pty
    import select
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    requests = StreamDecoder()

    def asked(for_s):
        deadline, frames = time.monotonic() + for_s, []
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                frames += requests.feed(os.read(master, 4096))
        return [f.type for f in frames]

    try:
        with reading(os.ttyname(slave)):
            assert asked(0.5) == [MsgType.REQUEST_HELLO]  # on connecting
            os.write(master, encode_frame(Hello("pi-kitchen", "0.1.0", "ab" * 32, 16000, 1), 0, 1000)
                     + encode_frame(Labels(0, ("speech",)), 1, 1000))
            assert asked(2.0) == []  # the HELLO came: no more asking (and RESTART_ASK_INTERVAL is over)
            for i in range(20):
                os.write(master, encode_frame(Detection(0, 1, 500, 900), 40_000 if i % 2 else 2, 2000 + i))
                time.sleep(0.025)
            sent = asked(2.5)
    finally:
        os.close(master)
        os.close(slave)
    # at once, then after the interval for the restarts since (each ask repeated after 1 s while no HELLO comes)
    assert 1 <= len(sent) <= 4 and set(sent) == {MsgType.REQUEST_HELLO}, sent
