"""Deploying bundles over the serial telemetry link: the device agent (a real process with a release store)
on one pseudo-terminal, deploy_serial on the other, a cable between them paced like a UART that can be pulled
mid-upload or made noisy. Also the device's upload rules on their own."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.bundle import pack_bundle
from edge.releases import ReleaseStore
from edge.signing import generate_keypair
from edge.telemetry.protocol import (FLAG_RESTART, Health, StreamDecoder, UploadAck, UploadBegin, UploadChunk,
                                     UploadEnd, UploadResult, UploadStatus)
from edge.telemetry.upload import UploadReceiver
from firmware_tools.cli import main as cli
from firmware_tools.line_noise import Corruption
from firmware_tools.serial_deploy import SerialDeployError, deploy_serial, query_device
from tests.bundle_variants import variant
from tests.conftest import REPO, require_module
from tests.serial_pty import PtyCable
from tests.test_releases import fill, small_disk

BAUD = 115200
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def archives(tmp_path_factory, tiny_bundle):
    """Two different real bundle archives: (path, bundle id) each."""
    where = tmp_path_factory.mktemp("serial-archives")
    out = []
    for n in (1, 2):
        archive = where / f"v{n}.tar.gz"
        out.append((archive, pack_bundle(variant(tiny_bundle, where / f"v{n}", n), archive)))
    return out


def wait_until_stable(value, quiet=0.3, timeout=10.0):
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "never settled"
        time.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()


class Device:
    """The standalone device agent in its own process, behind a pty cable."""

    def __init__(self, directory: Path, baud: int = BAUD, health_interval: float = 0.05, **cable_options):
        self.root = directory / "device-root"
        self.cable = PtyCable(directory, baud=baud, **cable_options)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge.telemetry.agent", self.cable.device_path, "--root", str(self.root),
             "--baud", str(baud), "--device-id", "bench-pi", "--health-interval", str(health_interval)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.store = ReleaseStore(self.root)

    def staged(self) -> list[Path]:
        return sorted((self.root / "incoming" / "serial").glob("*.part"))

    def close(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        self.cable.close()
        return err


@pytest.fixture
def device(tmp_path):
    made = []

    def make(**cable_options):
        made.append(Device(tmp_path, **cable_options))
        return made[-1]

    yield make
    for d in made:
        err = d.close()
        assert "Traceback" not in err, err


def test_deploy_then_redeploy_uploads_nothing(device, archives):
    (v1, id1), _ = archives
    dev = device()
    uploading = threading.Event()
    during = []

    def progress(done, total):
        (uploading.set if done < total else uploading.clear)()

    def on_telemetry(frame):
        if uploading.is_set() and isinstance(frame.message, Health):
            during.append(frame)

    result = deploy_serial(v1, dev.cable.host_path, BAUD, progress=progress, on_telemetry=on_telemetry)
    assert result.uploaded and result.bundle_id == id1 and result.previous_bundle_id == ""
    assert result.resumed_from == 0 and result.bytes_sent >= result.total_bytes == v1.stat().st_size
    assert dev.store.current() == id1 and dev.staged() == []
    assert len(during) >= 3  # the device kept reporting health while the bundle was coming in

    again = deploy_serial(v1, dev.cable.host_path, BAUD)
    assert not again.uploaded and again.bytes_sent == 0 and again.bundle_id == id1
    assert "already active" in again.message


def test_the_agent_describes_the_store_as_it_is_when_asked(device, archives):
    """Another deploy path (SSH, sharing the device root) switched `current` back after a serial deploy: the agent
    names what is current now, and deploying the newer bundle again switches to it, instead of 'already active'
    (from the agent's first HELLO) or 'already installed' (from the receiver's memory of its last upload)."""
    (v1, id1), (v2, id2) = archives
    dev = device()
    deploy_serial(v1, dev.cable.host_path, BAUD)
    deploy_serial(v2, dev.cable.host_path, BAUD)
    ReleaseStore(dev.root).activate(id1)  # as the release tool run over SSH would
    status = CliRunner().invoke(cli, ["status", f"serial://{dev.cable.host_path}?baud={BAUD}"])
    [row] = [line for line in status.output.splitlines() if dev.cable.host_path in line]
    assert status.exit_code == 0 and row.split()[1] == id1[:12], status.output  # the active bundle
    again = deploy_serial(v2, dev.cable.host_path, BAUD)
    assert again.bundle_id == id2 and "already active" not in again.message
    assert dev.store.current() == id2 and dev.store.previous() == id1


def test_pulled_cable_mid_upload_leaves_the_old_bundle_then_resumes(device, archives):
    (v1, id1), (v2, id2) = archives
    dev = device()
    deploy_serial(v1, dev.cable.host_path, BAUD)
    total = v2.stat().st_size

    def pull_at_half(done, _total):
        if done > total // 2 and os.path.lexists(dev.cable.host_path):
            dev.cable.unplug()

    with pytest.raises(SerialDeployError, match="run the deploy again to resume"):
        deploy_serial(v2, dev.cable.host_path, BAUD, progress=pull_at_half)
    assert dev.store.current() == id1  # still the old bundle, nothing half-switched
    wait_until_stable(lambda: [p.stat().st_size for p in dev.staged()])  # the device has taken what arrived
    partial = dev.staged()
    assert len(partial) == 1 and partial[0].name == hashlib.sha256(v2.read_bytes()).hexdigest() + ".part"
    held = partial[0].stat().st_size
    assert total // 2 < held < total

    dev.cable.plug()
    result = deploy_serial(v2, dev.cable.host_path, BAUD)
    assert result.uploaded and result.bundle_id == id2 and result.previous_bundle_id == id1
    assert result.resumed_from == held and result.bytes_sent < total  # only the missing part went over
    assert dev.store.current() == id2 and dev.store.previous() == id1 and dev.staged() == []


def test_noisy_line_upload_still_lands_intact(device, archives):
    (v1, id1), _ = archives
    # 0.1% of the bytes towards the device (chunks) and towards the host (acks, telemetry) are damaged: a
    # 512-byte chunk gets through only 60% of the time, so the host must also shrink its chunks.
    dev = device(corruption=Corruption(rate=0.001, seed=3), corruption_to_device=Corruption(rate=0.001, seed=4))
    result = deploy_serial(v1, dev.cable.host_path, BAUD)
    assert result.bundle_id == id1 and dev.store.current() == id1
    assert result.bytes_sent > result.total_bytes  # some chunks had to be sent again
    assert dev.cable.corruption_to_device.events and dev.cable.corruption.events


def test_device_refuses_an_archive_that_is_not_a_bundle(device, archives, tmp_path):
    (v1, id1), _ = archives
    dev = device()
    deploy_serial(v1, dev.cable.host_path, BAUD)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(SerialDeployError, match=r"refused the bundle \(install failed\).*not a readable"):
        deploy_serial(junk, dev.cable.host_path, BAUD)
    assert dev.store.current() == id1 and dev.staged() == []


def test_nobody_answering_is_a_clear_error(tmp_path, archives):
    (v1, _), _ = archives
    cable = PtyCable(tmp_path, hold_until_host_speaks=False)
    try:
        with pytest.raises(SerialDeployError, match="no basilar device answered .* check the cable and the baud"):
            deploy_serial(v1, cable.host_path, BAUD, hello_timeout=1.0)
    finally:
        cable.close()
    with pytest.raises(SerialDeployError, match="cannot open serial port"):
        deploy_serial(v1, str(tmp_path / "ttyNOPE"), BAUD)


def test_basilar_deploy_to_a_serial_target(device, archives):
    (v1, id1), _ = archives
    dev = device()
    result = CliRunner().invoke(cli, ["deploy", str(v1), f"serial://{dev.cable.host_path}?baud={BAUD}"])
    assert result.exit_code == 0, result.output
    assert id1[:12] in result.output and dev.store.current() == id1


def test_dry_run_over_serial_asks_the_device_and_changes_nothing(device, archives, tmp_path):
    """A dry run reads HELLO and RELEASES as a deploy does first: it reports what the device runs and what would
    happen, sends no upload, and fails for a port nobody can open, exactly as the deploy would."""
    (v1, id1), (v2, id2) = archives
    dev = device()
    target = f"serial://{dev.cable.host_path}?baud={BAUD}"
    assert CliRunner().invoke(cli, ["deploy", str(v1), target]).exit_code == 0
    sent_before = dev.cable.to_device

    dry = CliRunner().invoke(cli, ["deploy", str(v2), target, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    [row] = [line for line in dry.stdout.splitlines() if dev.cable.host_path in line]
    assert row.split()[1:4] == [id1[:12], "would", "install"] and "to device bench-pi" in row
    assert 0 < dev.cable.to_device - sent_before < 100  # the device was asked (HELLO), and sent no chunk
    same = CliRunner().invoke(cli, ["deploy", str(v1), target, "--dry-run"])
    assert same.exit_code == 0 and "unchanged" in same.stdout and "already active" in same.stdout
    assert dev.store.current() == id1 and dev.store.releases() == [id1] and dev.staged() == []

    gone = CliRunner().invoke(cli, ["deploy", str(v2), f"serial://{tmp_path}/ttyNOPE", "--dry-run"])
    assert gone.exit_code == 1 and "failed" in gone.stdout and "cannot open serial port" in gone.stdout

    # A device that trusts keys would refuse an unsigned bundle: the dry run says so, as over SSH
    generate_keypair(tmp_path / "release.key")
    (dev.root / "trusted_keys").mkdir()
    shutil.copy(tmp_path / "release.key.pub", dev.root / "trusted_keys" / "release.pub")
    refused = CliRunner().invoke(cli, ["deploy", str(v2), target, "--dry-run"])
    assert refused.exit_code == 1, refused.output
    [row] = [line for line in refused.stdout.splitlines() if dev.cable.host_path in line]
    assert row.split()[1:4] == [id1[:12], "would", "fail"] and "the bundle is not signed" in row


def test_keep_is_refused_for_serial_targets(device, archives):
    """The serial upload cannot carry --keep (the device prunes with its own setting): an explicit --keep is a
    usage error, before anything is sent, instead of being silently ignored."""
    (v1, _), _ = archives
    dev = device()
    result = CliRunner().invoke(cli, ["deploy", str(v1), f"serial://{dev.cable.host_path}?baud={BAUD}", "--keep",
                                      "1"])
    assert result.exit_code == 2, result.output
    assert "--keep applies to SSH targets only" in result.output and "basilar run --keep N" in result.output
    assert dev.cable.to_device == 0 and dev.store.current() is None


def test_basilar_status_over_a_serial_target(device, archives, tmp_path):
    """HELLO and RELEASES answer `basilar status`: the active bundle, who the device is, the releases it keeps and
    the keys it trusts, read afresh at each question; a port nobody can open is reported for that device and the
    exit status says some could not be queried."""
    (v1, id1), (v2, id2) = archives
    dev = device()
    target = f"serial://{dev.cable.host_path}?baud={BAUD}"

    def row(result):
        [line] = [line for line in result.output.splitlines() if dev.cable.host_path in line]
        return line

    before = CliRunner().invoke(cli, ["status", target])
    assert before.exit_code == 0, before.output
    assert "device bench-pi, basilar " in before.output and "answering" in before.output
    assert row(before).split()[1:3] == ["-", "-"]  # nothing active, nothing kept
    for archive in (v1, v2):
        assert CliRunner().invoke(cli, ["deploy", str(archive), target]).exit_code == 0
    generate_keypair(tmp_path / "release.key")
    (dev.root / "trusted_keys").mkdir()
    shutil.copy(tmp_path / "release.key.pub", dev.root / "trusted_keys" / "release.pub")
    after = CliRunner().invoke(cli, ["status", target, f"serial://{tmp_path}/ttyNOPE"])
    assert after.exit_code != 0
    assert row(after).split()[1:3] == [id2[:12], f"{id2[:12]},{id1[:12]}"]  # active; kept, newest first
    assert "signed only (1 key(s))" in row(after)
    assert "cannot open serial port" in after.output and "No such file or directory" in after.output
    assert "1 of 2 device(s) could not be queried" in after.output


def test_status_and_a_refused_deploy_over_serial_say_what_the_device_runs(device, archives, tmp_path):
    """A refused upload's row named no active bundle though the device had said which it runs, and a device whose
    active bundle cannot be loaded was reported as answering and well (over SSH: "will not start", exit 1)."""
    (v1, id1), (v2, id2) = archives
    dev = device()
    target = f"serial://{dev.cable.host_path}?baud={BAUD}"
    assert CliRunner().invoke(cli, ["deploy", str(v1), target]).exit_code == 0
    generate_keypair(tmp_path / "release.key")
    (dev.root / "trusted_keys").mkdir()
    shutil.copy(tmp_path / "release.key.pub", dev.root / "trusted_keys" / "release.pub")
    refused = CliRunner().invoke(cli, ["deploy", str(v2), target])
    assert refused.exit_code == 1 and "refused the bundle" in refused.output, refused.output
    [row] = [line for line in refused.stdout.splitlines() if dev.cable.host_path in line]
    assert row.split()[1:3] == [id1[:12], "failed"], row

    model = next(p for p in dev.store.path_of(id1).iterdir() if p.suffix == ".tflite")
    model.write_bytes(model.read_bytes()[:-1] + b"x")  # its hash no longer matches the manifest
    status = CliRunner().invoke(cli, ["status", target])
    assert status.exit_code == 1 and f"the active bundle {id1[:12]} cannot be loaded" in status.output
    assert "will not start their service" in status.output, status.output


def test_a_slow_line_has_time_to_bring_the_releases(device, tiny_bundle, tmp_path):
    """At 2400 baud the RELEASES frame of six releases takes 2 s after HELLO: a fixed second's wait reported a
    device with a release store as keeping none, and a dry run said "would install" where the deploy would fail."""
    store = ReleaseStore(tmp_path / "device-root")  # filled before the device starts: the HELLO it sends on
    kept = []  # starting, still on the slow line when the host asks, then says what the answer says
    for n in range(6):
        archive = tmp_path / f"v{n}.tar.gz"
        pack_bundle(variant(tiny_bundle, tmp_path / f"v{n}", n + 1), archive)
        kept.append(store.install(archive))
    store.activate(kept[-1])
    dev = device(baud=2400, health_interval=0.5)
    assert dev.root == store.root
    hello, releases, _ = query_device(dev.cable.host_path, 2400)
    assert hello.bundle_id == kept[-1]
    assert releases is not None and set(releases.releases) == set(kept), releases


def test_the_answer_is_taken_over_the_hello_the_device_sent_on_starting(device, archives, tmp_path):
    """The agent's start-up HELLO (numbered 0) is on the line before the host asks, and the store changed since
    (a deploy over SSH): the host takes the answer to its request, not the start-up HELLO that arrives first."""
    (v1, id1), (v2, id2) = archives
    store = ReleaseStore(tmp_path / "device-root")  # the device fixture's root
    store.install(v2)
    store.activate(store.install(v1))
    dev = device(health_interval=60)
    assert dev.cable.device_has_written()  # its start-up HELLO, naming v1, waits for the host to speak
    time.sleep(0.3)  # and the LABELS and RELEASES after it
    store.activate(id2)
    hello, releases, _ = query_device(dev.cable.host_path, BAUD)
    assert hello.bundle_id == id2 and releases is not None and releases.previous == id1, (hello, releases)


def test_a_start_up_hello_with_no_answer_after_it_keeps_its_releases(device, archives, tmp_path):
    """A device that cannot hear the host (its receive wire broken) sends only its start-up HELLO, LABELS and
    RELEASES: the host, waiting for an answer, passed them by, then said the device keeps no release store."""
    (v1, id1), (v2, id2) = archives
    store = ReleaseStore(tmp_path / "device-root")  # the device fixture's root
    store.install(v2)
    store.activate(store.install(v1))
    dev = device(health_interval=60, corruption_to_device=Corruption(1.0))  # every byte to the device damaged
    assert dev.cable.device_has_written()
    hello, releases, _ = query_device(dev.cable.host_path, BAUD)
    assert hello.bundle_id == id1 and releases is not None and set(releases.releases) == {id1, id2}, releases


# ------------------------------------------------------------------------------ the device's rules alone


class Installed:
    def __init__(self):
        self.calls = []

    def __call__(self, archive: Path, sha256: str) -> str:
        self.calls.append((archive.read_bytes(), sha256))
        return "b" * 64


def begin(data, flags=0):
    return UploadBegin(len(data), hashlib.sha256(data).digest(), flags)


def test_receiver_resumes_checks_order_and_verifies(tmp_path):
    data = os.urandom(5000)
    install = Installed()
    receiver = UploadReceiver(tmp_path, install)
    assert receiver.handle(begin(data)) == [UploadAck(0, 0, 0)]
    assert receiver.handle(UploadChunk(0, data[:1000])) == [UploadAck(0, 1000, zlib.crc32(data[:1000]))]
    assert receiver.handle(UploadChunk(2000, data[2000:3000]))[0].status == UploadStatus.OUT_OF_ORDER
    receiver.close()  # the device restarts: what it acknowledged is on disk

    receiver = UploadReceiver(tmp_path, install)
    assert receiver.handle(UploadChunk(1000, data[1000:2000])) == [UploadAck(UploadStatus.NO_TRANSFER, 0, 0)]
    assert receiver.handle(begin(data)) == [UploadAck(0, 1000, zlib.crc32(data[:1000]))]
    ack = receiver.handle(UploadChunk(1000, data[1000:]))[0]
    assert ack == UploadAck(0, 5000, zlib.crc32(data))
    result = receiver.handle(UploadEnd(hashlib.sha256(data).digest()))[0]
    assert result == UploadResult(0, "b" * 64, "installed and active")
    assert install.calls == [(data, hashlib.sha256(data).hexdigest())] and list(tmp_path.iterdir()) == []
    # the host repeating END or BEGIN (its answer was lost) gets the same answer, and nothing is installed twice
    assert receiver.handle(UploadEnd(hashlib.sha256(data).digest()))[0].bundle_id == "b" * 64
    assert receiver.handle(begin(data))[0].message == "already installed" and len(install.calls) == 1


def test_receiver_discards_what_does_not_hash_right(tmp_path):
    data = os.urandom(3000)
    claimed = UploadBegin(len(data), hashlib.sha256(b"something else").digest())
    install = Installed()
    receiver = UploadReceiver(tmp_path, install)
    receiver.handle(claimed)
    receiver.handle(UploadChunk(0, data))
    result = receiver.handle(UploadEnd(claimed.sha256))[0]
    assert result.status == UploadStatus.SHA_MISMATCH and "deploy again" in result.message
    assert install.calls == [] and list(tmp_path.iterdir()) == []


def test_receiver_restart_flag_size_limit_and_install_failure(tmp_path):
    data = os.urandom(2000)
    receiver = UploadReceiver(tmp_path, Installed(), max_size=1500)
    result = receiver.handle(begin(data))[0]
    assert result.status == UploadStatus.TOO_LARGE and "at most 1500" in result.message

    def refuse(archive, sha256):
        raise RuntimeError("the bundle is invalid: manifest.json is missing")

    receiver = UploadReceiver(tmp_path, refuse)
    receiver.handle(begin(data))
    receiver.handle(UploadChunk(0, data[:500]))
    assert receiver.handle(begin(data, FLAG_RESTART)) == [UploadAck(0, 0, 0)]  # the partial copy is dropped
    receiver.handle(UploadChunk(0, data))
    result = receiver.handle(UploadEnd(hashlib.sha256(data).digest()))[0]
    assert result.status == UploadStatus.INSTALL_FAILED and "manifest.json is missing" in result.message
    assert list(tmp_path.iterdir()) == []


def test_a_new_upload_replaces_an_abandoned_one(tmp_path):
    old, new = os.urandom(800), os.urandom(900)
    receiver = UploadReceiver(tmp_path, Installed())
    receiver.handle(begin(old))
    receiver.handle(UploadChunk(0, old[:400]))
    receiver.handle(begin(new))
    assert [p.name for p in tmp_path.iterdir()] == [hashlib.sha256(new).hexdigest() + ".part"]



def test_an_archive_whose_install_was_cut_short_is_cleared_by_the_next_upload(tmp_path):
    """The device lost power while installing: the renamed archive would otherwise stay in staging for good."""
    cut = tmp_path / (hashlib.sha256(b"earlier").hexdigest() + ".tar.gz")
    cut.write_bytes(os.urandom(700))
    data = os.urandom(900)
    UploadReceiver(tmp_path, Installed()).handle(begin(data))
    assert [p.name for p in tmp_path.iterdir()] == [hashlib.sha256(data).hexdigest() + ".part"]


def test_a_refused_upload_leaves_current_previous_and_every_release_as_they_were(tmp_path, archives, tiny_bundle):
    """`basilar run` refuses a bundle it cannot run: nothing the device could roll back to may be lost for it."""
    from edge.telemetry.upload import release_store_installer

    store = ReleaseStore(tmp_path / "root")
    third = tmp_path / "v3.tar.gz"
    pack_bundle(variant(tiny_bundle, tmp_path / "v3", 3), third)
    accept = release_store_installer(store, keep=2)
    first, second = (accept(archive, hashlib.sha256(archive.read_bytes()).hexdigest()) for archive, _ in archives)
    before = store.current(), store.previous(), store.releases()
    assert before[:2] == (second, first)

    def refuse(bundle_id):
        raise RuntimeError("the new bundle runs at 16000 Hz but the audio input is open at 8000 Hz")

    refusing = release_store_installer(store, keep=2, on_new_bundle=refuse)
    with pytest.raises(RuntimeError, match="16000 Hz"):
        refusing(third, hashlib.sha256(third.read_bytes()).hexdigest())
    assert (store.current(), store.previous()) == before[:2] and set(before[2]) <= set(store.releases())
    assert store.rollback() == first  # the rollback still goes where it went before


def test_a_refusal_puts_back_an_unsigned_bundle_on_a_device_that_now_trusts_keys(tmp_path, archives, tiny_bundle):
    """The first signed upload after keys were added, refused by the running basilar: what ran before (unsigned)
    must be current again, as the host is told."""
    require_module("nacl")
    from edge.signing import sign_bundle_dir
    from edge.telemetry.upload import release_store_installer

    store = ReleaseStore(tmp_path / "root")
    (unsigned, unsigned_id), _ = archives
    store.activate(store.install(unsigned))
    private, public = generate_keypair(tmp_path / "key")
    store.trusted_keys_dir.mkdir()
    shutil.copy(public, store.trusted_keys_dir / "k.pub")
    signed_dir = variant(tiny_bundle, tmp_path / "v3", 3)
    sign_bundle_dir(signed_dir, private)
    signed = tmp_path / "v3.tar.gz"
    pack_bundle(signed_dir, signed)

    def refuse(bundle_id):
        raise RuntimeError("the new bundle cannot run on this device")

    with pytest.raises(RuntimeError):
        release_store_installer(store, on_new_bundle=refuse)(signed, hashlib.sha256(signed.read_bytes()).hexdigest())
    assert store.current() == unsigned_id


def test_the_store_is_announced_as_it_is_after_pruning(tmp_path, archives, tiny_bundle):
    from edge.telemetry.upload import release_store_installer

    store = ReleaseStore(tmp_path / "root")
    seen = []
    install = release_store_installer(store, keep=2, on_installed=lambda _: seen.append(store.releases()))
    third = tmp_path / "v3.tar.gz"
    pack_bundle(variant(tiny_bundle, tmp_path / "v3", 3), third)
    for archive in (*[a for a, _ in archives], third):
        install(archive, hashlib.sha256(archive.read_bytes()).hexdigest())
    assert [len(releases) for releases in seen] == [1, 2, 2]  # RELEASES goes out after the prune, not before


def test_the_agent_refuses_to_keep_fewer_than_two_releases(tmp_path):
    from edge.telemetry.agent import main as agent_main

    with pytest.raises(SystemExit) as exit_info:
        agent_main([str(tmp_path / "port"), "--root", str(tmp_path / "root"), "--keep", "1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("args, message", [
    (["--health-interval", "-1"], "-1: seconds, 0 (no health reports) or 0.05 or more"),  # no wait: a flood
    (["--health-interval", "1e-9"], "1e-9: seconds, 0 (no health reports) or 0.05 or more"),  # 285 KB/s
    (["--health-interval", "nan"], "nan: seconds, 0 (no health reports) or 0.05 or more"),
    (["--baud", "0"], "0: a line speed from 50 up"),  # B0 hangs a real tty up
    (["--baud", "abc"], "'abc' is not a line speed in baud"),  # argparse said "invalid _baud value"
    (["--keep", "two"], "'two' is not a whole number"),
])
def test_the_agent_refuses_settings_that_flood_or_hang_up_the_line(tmp_path, capsys, args, message):
    from edge.telemetry.agent import main as agent_main

    with pytest.raises(SystemExit) as exit_info:
        agent_main([str(tmp_path / "port"), "--root", str(tmp_path / "root"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_agent_refuses_a_root_that_is_a_file_at_once(tmp_path, capsys):
    """Not at the first upload, as a storage failure."""
    from edge.telemetry.agent import main as agent_main

    (tmp_path / "root").write_text("not a folder")
    assert agent_main([str(tmp_path / "port"), "--root", str(tmp_path / "root")]) == 2
    assert "--root" in capsys.readouterr().err


def test_an_agent_without_health_reports_waits_to_be_stopped(tmp_path):
    """--health-interval 0: no HEALTH at all (a wait of 0 s between them would be a flood)."""
    import io

    from edge.telemetry.agent import DeviceAgent

    line = io.BytesIO()
    agent = DeviceAgent(None, tmp_path / "root", health_interval=0, stream=line)
    runner = threading.Thread(target=agent.run)
    runner.start()
    time.sleep(0.3)
    agent.stop()
    runner.join(5)
    assert not runner.is_alive()
    sent = line.getvalue()  # closing the agent closes its stream
    agent.close()
    frames = StreamDecoder().feed(sent)
    assert frames and not any(isinstance(f.message, Health) for f in frames)  # HELLO went out, no HEALTH


def test_a_release_damaged_on_the_device_is_mended_by_installing_it_again(tmp_path, archives):
    from edge.telemetry.agent import bundle_description

    store = ReleaseStore(tmp_path / "root")
    archive, bundle_id = archives[0]
    store.activate(store.install(archive))
    model = next(p for p in store.path_of(bundle_id).iterdir() if p.suffix == ".tflite")
    good = model.read_bytes()
    model.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    described, _, _, problem = bundle_description(store)
    assert described == "" and "cannot be loaded" in problem and "deploy it again" in problem  # HELLO names none
    assert store.install(archive) == bundle_id
    assert model.read_bytes() == good and bundle_description(store)[0] == bundle_id


def _upload(receiver, archive: Path) -> UploadResult:
    data = archive.read_bytes()
    receiver.handle(begin(data))
    assert receiver.handle(UploadChunk(0, data))[0].next_offset == len(data)  # the upload itself fits
    return receiver.handle(UploadEnd(hashlib.sha256(data).digest()))[0]


def _disk_use(folder: Path) -> int:
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file())


def test_a_full_disk_is_made_room_on_by_pruning_what_the_deploy_would_prune(tmp_path, archives, tiny_bundle):
    """A serial-only device keeping 3 releases on a full disk: nothing over the cable can free space, and pruning
    came only after a successful install, so no bundle could ever be installed again. The oldest release (neither
    current nor previous), which this deploy would prune anyway, makes the room."""
    from edge.telemetry.upload import release_store_receiver

    extra = []
    for n in (3, 4):
        extra.append(tmp_path / f"v{n}.tar.gz")
        pack_bundle(variant(tiny_bundle, tmp_path / f"v{n}", n), extra[-1])
    with small_disk(tmp_path / "disk", "size=256k"):
        store = ReleaseStore(tmp_path / "disk" / "root")
        receiver = release_store_receiver(store, keep=3)
        ids = [_upload(receiver, archive).bundle_id for archive in (archives[0][0], archives[1][0], extra[0])]
        assert store.releases() == ids and (store.current(), store.previous()) == (ids[2], ids[1])
        # room for the upload and half of its extracted copy
        fill(tmp_path / "disk", leave=extra[1].stat().st_size + _disk_use(store.path_of(ids[0])) // 2)
        result = _upload(receiver, extra[1])
        assert result.status == UploadStatus.OK, result.message
        assert (store.current(), store.previous()) == (result.bundle_id, ids[2])
        assert store.releases() == [ids[1], ids[2], result.bundle_id]  # the oldest one made the room
        assert list((store.incoming_dir / "serial").iterdir()) == [] and list(store.staging_dir.iterdir()) == []


def test_a_disk_too_full_even_after_pruning_is_reported_as_such(tmp_path, archives):
    """Nothing to prune (one release): the host hears that the device's disk is full (not that the bundle was
    refused), how much the bundle needs and the prune command, in the words an SSH deploy uses."""
    from edge.telemetry.upload import release_store_receiver

    (v1, id1), (v2, _) = archives
    with small_disk(tmp_path / "disk", "size=256k"):
        store = ReleaseStore(tmp_path / "disk" / "root")
        receiver = release_store_receiver(store, keep=3)
        assert _upload(receiver, v1).bundle_id == id1
        fill(tmp_path / "disk", leave=v2.stat().st_size + 4096)
        result = _upload(receiver, v2)
        assert result.status == UploadStatus.IO_ERROR, result.message
        assert result.message.startswith(f"the device's storage failed ({store.root}): No space left on device: the "
                                         f"bundle needs about "), result.message
        assert "KB are free and no old release can go" in result.message
        assert f"python3 -m edge.releases prune {store.root} --keep 1" in result.message
        assert result.message.endswith("free some space or check the storage (dmesg), then try again")
        assert (store.current(), store.releases()) == (id1, [id1])
        assert list((store.incoming_dir / "serial").iterdir()) == [] and list(store.staging_dir.iterdir()) == []


def test_a_release_being_installed_again_is_not_pruned_to_make_room_for_itself(tmp_path, archives, tiny_bundle):
    from edge.telemetry.upload import release_store_receiver

    third = tmp_path / "v3.tar.gz"
    pack_bundle(variant(tiny_bundle, tmp_path / "v3", 3), third)
    with small_disk(tmp_path / "disk", "size=256k"):
        store = ReleaseStore(tmp_path / "disk" / "root")
        receiver = release_store_receiver(store, keep=3)
        ids = [_upload(receiver, archive).bundle_id for archive in (archives[0][0], archives[1][0], third)]
        held = store.path_of(ids[0]).stat().st_ino
        fill(tmp_path / "disk", leave=archives[0][0].stat().st_size + 4096)
        result = _upload(receiver, archives[0][0])  # the oldest, the one a prune would take first
        assert result.status == UploadStatus.IO_ERROR and "no old release can go" in result.message
        assert store.path_of(ids[0]).stat().st_ino == held  # the very same folder: never removed
        assert (store.current(), store.previous(), store.releases()) == (ids[2], ids[1], ids)


def test_a_port_another_program_holds_is_refused_by_name(tmp_path):
    """A `basilar telemetry` left reading the port would take half of the device's replies to the deploy."""
    from firmware_tools.serial_deploy import SerialDeployError, _HostLink
    from firmware_tools.telemetry_reader import open_port
    from tests.serial_pty import PtyCable

    cable = PtyCable(tmp_path)
    reader = open_port(cable.host_path, 115200)
    try:
        with pytest.raises(SerialDeployError, match=f"serial port {cable.host_path} is in use by another program"):
            _HostLink(cable.host_path, 115200, None)
    finally:
        reader.close()
        cable.close()
