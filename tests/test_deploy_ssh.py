"""`basilar deploy` / `basilar status` over SSH against a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py).

The "device" is a temporary root on this machine; its side runs `python -m edge.releases` from this repo.
"""
import asyncio
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import logging
import textwrap
import time
from pathlib import Path

import asyncssh
import pytest
from click.testing import CliRunner

from edge.bundle import load_bundle, pack_bundle
from edge.releases import ReleaseStore, file_sha256
from firmware_tools import deploy_ssh, fleet
from firmware_tools.cli import main as cli
from firmware_tools.deploy_ssh import LocalBundle, SshOptions
from firmware_tools.fleet import deploy_fleet, prepare_bundle, status_fleet
from firmware_tools.targets import parse_target
from tests.bundle_variants import variant
from tests.conftest import REPO, require, require_module, require_program
from tests.sshd import start_sshd

require_module("asyncssh")

PYTHONPATH = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
DEVICE_PYTHON = f"env PYTHONPATH={shlex.quote(PYTHONPATH)} {shlex.quote(sys.executable)}"
# The default health check (`basilar bundle verify {root}/current`) without needing `basilar` on PATH.
VERIFY_ON_DEVICE = f"{DEVICE_PYTHON} -m firmware_tools.cli bundle verify {{root}}/current"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_agent(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # only the throwaway key may log in


@pytest.fixture(autouse=True)
def ctrl_c_as_from_a_terminal():
    """SIGINT with Python's own meaning in this process and so in the deploys it starts, as in a terminal. A suite
    started as a background job of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, which
    `basilar deploy` rightly leaves alone, and every Ctrl-C test would then see a deploy that never stops."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bundle):
    """Three distinct valid bundles, as LocalBundle archives ready to upload."""
    where = tmp_path_factory.mktemp("bundles")
    made = []
    for n in range(1, 4):
        directory = variant(tiny_bundle, where / f"v{n}", n)
        archive = where / f"v{n}.tar.gz"
        bundle_id = pack_bundle(directory, archive)
        made.append(LocalBundle(archive, bundle_id, file_sha256(archive), archive.stat().st_size))
    return made


@pytest.fixture
def device(tmp_path, sshd):
    """A device root, its target URL, and SSH options that trust the test server."""
    root = tmp_path / "device"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    options = SshOptions(known_hosts=known_hosts, identity=sshd.client_key, device_python=DEVICE_PYTHON,
                         restart_command="echo restarted >> {root}/restarts.log",
                         health_command="test -f {root}/current/manifest.json",
                         service_command="echo active", keep=2)
    return root, parse_target(sshd.url(root)), options


def _restarts(root: Path) -> int:
    log = root / "restarts.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _deploy(bundle, target, options, **kwargs):
    [result] = deploy_fleet(bundle, [target], options, **kwargs)
    return result


def _assert_intact(root: Path, bundle_id: str):
    """`current` is the given bundle, complete and valid; nothing half-made is lying in reach."""
    store = ReleaseStore(root)
    assert store.current() == bundle_id
    assert load_bundle(root / "current").id == bundle_id
    assert not any(store.staging_dir.iterdir()) if store.staging_dir.exists() else True
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_first_deploy_redeploy_upgrade_and_switch_back(device, bundles):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]

    first = _deploy(v1, target, options)
    assert (first.ok, first.outcome, first.active, first.uploaded_bytes) == (True, "installed", v1.bundle_id, v1.size)
    _assert_intact(root, v1.bundle_id)
    assert _restarts(root) == 1
    assert list((root / "incoming").iterdir()) == []

    again = _deploy(v1, target, options)
    assert (again.ok, again.outcome, again.uploaded_bytes) == (True, "unchanged", 0)
    assert _restarts(root) == 1  # nothing changed, nothing restarted

    upgrade = _deploy(v2, target, options)
    assert (upgrade.ok, upgrade.outcome, upgrade.active) == (True, "installed", v2.bundle_id)
    _assert_intact(root, v2.bundle_id)
    assert ReleaseStore(root).previous() == v1.bundle_id

    back = _deploy(v1, target, options)  # the device still has it: a switch, no upload
    assert (back.ok, back.outcome, back.uploaded_bytes) == (True, "switched", 0)
    _assert_intact(root, v1.bundle_id)
    assert _restarts(root) == 3


def test_failing_health_check_rolls_back(device, bundles):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok

    # The real health check of the default, run through the CLI on the "device", passes for a good bundle ...
    assert _deploy(v2, target, dataclasses.replace(options, health_command=VERIFY_ON_DEVICE)).ok
    # ... and a service that does not come back makes the deploy switch back and restart the old bundle.
    failing = dataclasses.replace(options, health_command="echo 'model did not load' >&2; exit 3")
    result = _deploy(bundles[2], target, failing)
    assert (result.ok, result.outcome, result.active) == (False, "rolled back", v2.bundle_id)
    assert "health check failed (exit status 3): model did not load" in result.reason
    _assert_intact(root, v2.bundle_id)
    assert ReleaseStore(root).previous() == v1.bundle_id  # a later rollback still goes where it went before
    assert _restarts(root) == 4  # v1, v2, the failed one, and the old one again


def test_failed_first_deploy_leaves_no_current(device, bundles):
    root, target, options = device
    result = _deploy(bundles[0], target, dataclasses.replace(options, restart_command="exit 1"))
    assert (result.ok, result.outcome, result.active) == (False, "rolled back", None)
    assert "restart failed" in result.reason and "removed current" in result.reason
    assert not (root / "current").exists() and not (root / "current").is_symlink()


def _running(command_line: str) -> list[str]:
    """The processes whose command line contains command_line."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if command_line in text:
            found.append(f"{cmdline.parent.name}: {text}")
    return found


@pytest.mark.parametrize("hangs", ["restart", "health check"])
def test_a_hung_restart_or_health_check_is_rolled_back(device, bundles, sshd, hangs):
    """A `systemctl restart` that never returns is the usual way a bad bundle fails to come up: after
    --command-timeout it counts as failed, and the device goes back to the bundle it ran before."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    # Only the new bundle hangs; the old one restarts normally once switched back.
    hang_on_new = f'case "$(readlink {{root}}/current)" in *{v2.bundle_id}) sleep 30.{os.getpid()};; esac'
    restart, health = options.restart_command, options.health_command
    if hangs == "restart":
        restart += f"; {hang_on_new}"
    else:
        health += f" && {hang_on_new}"
    result = CliRunner().invoke(cli, ["deploy", str(v2.archive), sshd.url(root), "--known-hosts",
                                      str(options.known_hosts), "-i", str(sshd.client_key), "--device-python",
                                      DEVICE_PYTHON, "--restart-command", restart, "--health-command", health,
                                      "--command-timeout", "2"])
    assert result.exit_code == 1, result.output
    [row] = [line for line in result.stdout.splitlines() if line.startswith(sshd.url(root))]
    assert row.split()[1:4] == [v1.bundle_id[:12], "rolled", "back"]
    assert f"{hangs} did not finish within 2 s" in row and f"switched back to {v1.bundle_id[:12]}" in row
    _assert_intact(root, v1.bundle_id)
    assert _restarts(root) == 3  # v1, the hung one, and v1 again
    # and the hung command was ended, not left running beside the old bundle's restart
    assert not _running(f"sleep 30.{os.getpid()}")


@pytest.mark.parametrize("shell", ["sh", "bash", "fish", "tcsh"])
def test_the_bounded_command_works_in_every_login_shell(shell, tmp_path):
    """sshd hands a command to the device user's login shell as `$SHELL -c COMMAND`: the time-bounded form must be
    a simple command every shell parses, keep the exit status and output, and end a hang with what it started."""
    path = require_program(shell)

    def login(command, timeout=20):
        return subprocess.run([path, "-c", deploy_ssh.bounded_shell(timeout)], input=command + "\n", text=True,
                              capture_output=True, env={**os.environ, "SHELL": path}, timeout=60)

    done = login("echo restarted; exit 3")
    assert (done.returncode, done.stdout.strip()) == (3, "restarted"), done.stderr
    hang = f"sleep 30.{os.getpid()}{len(shell)}"
    started = time.monotonic()
    hung = login(f"{hang}; echo not reached", timeout=1)
    assert hung.returncode == 124 and "not reached" not in hung.stdout, hung.stderr
    assert time.monotonic() - started < 10 and not _running(hang)


def test_failed_prune_after_a_healthy_switch_is_a_warning_not_a_failure(device, bundles, sshd, tmp_path):
    """Pruning comes after the health check passed: the new bundle runs, so the deploy succeeded (exit 0, what
    a fleet script wants) with a warning that says why old releases were left and how to remove them."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    # The device's release tool fails only at pruning, as on a disk that went bad under releases/.
    python = tmp_path / "device-python"
    python.write_text('#!/bin/sh\ncase " $* " in *" prune "*) echo "error: I/O error removing an old release" >&2; '
                      f'exit 1;; esac\nexec {DEVICE_PYTHON} "$@"\n')
    python.chmod(0o755)
    result = CliRunner().invoke(cli, ["deploy", str(v2.archive), sshd.url(root), "--known-hosts",
                                      str(options.known_hosts), "-i", str(sshd.client_key), "--device-python",
                                      str(python), "--restart-command", options.restart_command,
                                      "--health-command", options.health_command])
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.stdout.splitlines() if line.startswith(sshd.url(root))]
    assert row.split()[1:3] == [v2.bundle_id[:12], "installed"]
    assert "warning: pruning old releases failed (I/O error removing an old release)" in row
    assert f"-m edge.releases prune {root} --keep 3" in row
    assert "need attention" in result.stderr and "unchecked" not in result.output
    _assert_intact(root, v2.bundle_id)
    assert ReleaseStore(root).previous() == v1.bundle_id


def test_unknown_host_key_is_refused_unless_accepted(device, bundles, sshd, tmp_path):
    root, target, options = device
    options.known_hosts.write_text("")
    refused = _deploy(bundles[0], target, options)
    assert not refused.ok and "is not in" in refused.reason and "--accept-new-host-keys" in refused.reason
    assert not root.exists()  # refused before anything was done

    accepted = _deploy(bundles[0], target, dataclasses.replace(options, accept_new_host_keys=True))
    assert accepted.ok
    assert options.known_hosts.read_text() == sshd.known_hosts_line()
    assert _deploy(bundles[0], target, options).ok  # now known, no option needed

    impostor_key = " ".join(Path(f"{sshd.client_key}.pub").read_text().split()[:2])
    options.known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {impostor_key}\n")
    changed = _deploy(bundles[1], target, dataclasses.replace(options, accept_new_host_keys=True))
    assert not changed.ok and "differs" in changed.reason
    _assert_intact(root, bundles[0].bundle_id)


def test_wrong_identity_is_refused(device, bundles, tmp_path):
    root, target, options = device
    stranger = tmp_path / "stranger"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    result = _deploy(bundles[0], target, dataclasses.replace(options, identity=stranger))
    assert not result.ok and "authentication" in result.reason and "--identity" in result.reason


def test_corrupted_upload_is_rejected(device, bundles, monkeypatch, tmp_path):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok

    real_upload = deploy_ssh._upload
    damaged = tmp_path / "damaged.tar.gz"
    data = bytearray(v2.archive.read_bytes())
    data[len(data) // 3] ^= 0x40  # one bit flipped on the way
    damaged.write_bytes(bytes(data))

    async def upload_damaged(conn, bundle, remote_path, progress, options):
        await real_upload(conn, dataclasses.replace(bundle, archive=damaged), remote_path, progress, options)

    monkeypatch.setattr(deploy_ssh, "_upload", upload_damaged)
    result = _deploy(v2, target, options)
    assert (result.ok, result.outcome, result.active) == (False, "failed", v1.bundle_id)
    assert "installing on the device" in result.reason and "corrupted or incomplete" in result.reason
    _assert_intact(root, v1.bundle_id)
    assert ReleaseStore(root).releases() == [v1.bundle_id]
    assert list((root / "incoming").iterdir()) == []  # the bad upload was deleted


def _in_small_writes(options):
    """One small write in flight at a time, so that the device has received only part of the archive when a test
    interrupts the upload."""
    return dataclasses.replace(options, block_size=512, upload_requests=1)


def _once_half_way_through_the_upload(action):
    """A progress callback that calls action() once, when part but not all of the archive is sent, and the list
    that then holds what it returned."""
    results = []

    def progress(sent, total):
        if not results and 0 < sent < total:
            results.append(action())

    return results, progress


def test_connection_killed_mid_upload_then_next_deploy_completes(device, bundles, sshd):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok

    cut, pull_the_cable = _once_half_way_through_the_upload(sshd.kill_connections)
    result = _deploy(v2, target, _in_small_writes(options), progress_for=lambda _i, _t: pull_the_cable)
    assert cut and cut[0] > 0, "the upload finished before the connection could be cut"
    assert (result.ok, result.outcome) == (False, "failed")
    assert result.reason.startswith("uploading:")
    [partial] = (root / "incoming").iterdir()
    assert partial.stat().st_size < v2.size  # really cut mid-upload: half a file lies in incoming/ ...
    _assert_intact(root, v1.bundle_id)  # ... and none of it is reachable
    assert ReleaseStore(root).releases() == [v1.bundle_id]

    # Another deploy of the same bundle to this device, writing its upload right now (two operators, or CI and
    # one): its file must survive; the cut-off one, untouched for two minutes, is cleared.
    live = root / "incoming" / f"{v2.bundle_id}.0a0b0c0d.part"
    live.write_bytes(b"being written")
    stale = time.time() - 120
    os.utime(partial, (stale, stale))
    done = _deploy(v2, target, options)
    assert (done.ok, done.outcome) == (True, "installed")
    _assert_intact(root, v2.bundle_id)
    assert list((root / "incoming").iterdir()) == [live]


def test_signed_only_device(device, bundles, tmp_path):
    require_module("nacl")
    from edge.signing import generate_keypair, sign_bundle_dir

    root, target, options = device
    private, public = generate_keypair(tmp_path / "release-key")
    (root / "trusted_keys").mkdir(parents=True)
    shutil.copy(public, root / "trusted_keys" / "release.pub")

    unsigned = _deploy(bundles[0], target, options)
    assert not unsigned.ok and "not signed" in unsigned.reason
    assert ReleaseStore(root).releases() == []

    signed_dir = tmp_path / "signed"
    shutil.copytree(load_bundle(bundles[0].archive).path, signed_dir)
    sign_bundle_dir(signed_dir, private)
    archive = tmp_path / "signed.tar.gz"
    bundle_id = pack_bundle(signed_dir, archive)
    signed = LocalBundle(archive, bundle_id, file_sha256(archive), archive.stat().st_size)
    assert _deploy(signed, target, options).ok
    _assert_intact(root, bundle_id)


def test_a_signed_copy_of_a_release_held_unsigned_is_uploaded_and_brings_its_signature(device, bundles, tmp_path):
    """Keys added after v1 was installed unsigned: deploying the signed v1 must deliver the signature (same id),
    though the device holds v1 already, or the device would refuse to switch to it for good."""
    require_module("nacl")
    from edge.signing import generate_keypair, sign_bundle_dir

    root, target, options = device
    assert _deploy(bundles[0], target, options).ok and _deploy(bundles[1], target, options).ok
    private, public = generate_keypair(tmp_path / "key")
    (root / "trusted_keys").mkdir()
    shutil.copy(public, root / "trusted_keys" / "k.pub")
    signed_dir = shutil.copytree(load_bundle(bundles[0].archive).path, tmp_path / "signed")
    sign_bundle_dir(signed_dir, private)
    archive = tmp_path / "signed.tar.gz"
    assert pack_bundle(signed_dir, archive) == bundles[0].bundle_id
    signed = LocalBundle(archive, bundles[0].bundle_id, file_sha256(archive), archive.stat().st_size, signed=True)
    result = _deploy(signed, target, options)
    assert result.ok and result.outcome == "installed" and result.uploaded_bytes == signed.size, result.reason
    assert ReleaseStore(root).current() == bundles[0].bundle_id
    assert (ReleaseStore(root).path_of(bundles[0].bundle_id) / "signature.json").is_file()


def test_cli_deploys_many_devices_and_reports(sshd, tmp_path, bundles):
    roots = [tmp_path / "dev-a", tmp_path / "dev-b"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    inventory = tmp_path / "fleet.txt"
    with socket_closed_port() as dead_port:
        inventory.write_text(f"alpha {sshd.url(roots[0])}\n"
                             f"bravo {sshd.url(roots[1])}\n"
                             f"gone  ssh://{sshd.user}@127.0.0.1:{dead_port}/srv/basilar\n")
        common = ["--known-hosts", str(known_hosts), "-i", str(sshd.client_key), "--device-python", DEVICE_PYTHON]
        bundle_dir = load_bundle(bundles[0].archive).path
        result = CliRunner().invoke(cli, ["deploy", str(bundle_dir), "--inventory", str(inventory), "--parallel", "2",
                                          "--restart-command", "", "--health-command", VERIFY_ON_DEVICE, *common])
    assert result.exit_code == 1, result.output
    table = {line.split()[0]: line for line in result.stdout.splitlines()}
    short = bundles[0].bundle_id[:12]
    assert table["alpha"].split()[1:3] == [short, "installed"]
    assert table["bravo"].split()[1:3] == [short, "installed"]
    # What a device it never reached runs is not known: "?", where "-" says it runs no bundle
    assert table["gone"].split()[1:3] == ["?", "failed"] and "cannot connect" in table["gone"]
    assert "1 of 3 device(s) failed" in result.output
    for root in roots:
        _assert_intact(root, bundles[0].bundle_id)

    status = CliRunner().invoke(cli, ["status", sshd.url(roots[0]), sshd.url(roots[1]), *common,
                                      "--service-command", "echo inactive; exit 3"])
    assert status.exit_code == 0, status.output
    lines = status.stdout.splitlines()
    assert lines[0].split()[:2] == ["DEVICE", "ACTIVE"]
    assert all(short in line and "not running (inactive)" in line for line in lines[1:]) and len(lines) == 3
    hung = CliRunner().invoke(cli, ["status", sshd.url(roots[0]), *common, "--service-command", "sleep 20",
                                    "--command-timeout", "2"])
    assert hung.exit_code == 0, hung.output  # the device answered; only its service check did not
    assert short in hung.stdout and "unknown (`sleep 20` did not finish within 2 s)" in hung.stdout

    dry = CliRunner().invoke(cli, ["deploy", str(bundles[1].archive), sshd.url(roots[0]), "--dry-run", *common])
    assert dry.exit_code == 0, dry.output
    assert "would install" in dry.stdout
    assert ReleaseStore(roots[0]).releases() == [bundles[0].bundle_id]


def test_cli_refuses_bad_input_clearly(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["deploy", str(tmp_path / "nope"), "ssh://pi@127.0.0.1/opt/basilar"])
    assert missing.exit_code != 0 and "cannot deploy" in missing.output and "Traceback" not in missing.output
    bad_target = runner.invoke(cli, ["status", "pi@host:/opt"])
    assert bad_target.exit_code != 0 and "not a URL" in bad_target.output


class socket_closed_port:
    """A loopback port on which nothing listens (bound then closed)."""

    def __enter__(self):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc):
        return False


def test_status_writes_nothing_to_standard_error_but_its_own_message():
    """Importing asyncssh under cryptography 51 printed ten lines of DSA deprecation warnings before every deploy's
    and status's own output, where a deploy promises nothing on standard error but its summary."""
    done = subprocess.run([sys.executable, "-c", "from firmware_tools.cli import main; main()", "status",
                           "ssh://root@127.0.0.1:1/opt/basilar"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 1 and "cannot connect to 127.0.0.1:1" in done.stdout
    assert done.stderr == "Error: 1 of 1 device(s) could not be queried; see DETAIL above\n"


@pytest.mark.parametrize("command", [["deploy", "default"], ["status"]])
def test_without_the_host_extra_deploy_and_status_say_what_to_install(command, monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncssh", None)  # as on a device installed with the runtime extra only
    result = CliRunner().invoke(cli, [*command, "serial:///dev/ttyNOPE"])
    assert result.exit_code == 1 and "pip install 'basilar[host]'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _device_python_that_fails(tmp_path, when: str, message: str) -> str:
    """A device Python that fails `python -m edge.releases` calls whose arguments contain `when`, as a device with
    a storage fault would, and runs the others normally."""
    python = tmp_path / "device-python"
    python.write_text(f'#!/bin/sh\ncase " $* " in *" {when} "*) echo "error: {message}" >&2; exit 1;; esac\n'
                      f'exec {DEVICE_PYTHON} "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_output_that_is_not_utf8_does_not_drop_the_connection_before_the_switch_back(device, bundles):
    """asyncssh decodes strictly by default: one Latin-1 byte from a failing health check dropped the connection,
    so the device stayed on the failing bundle."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    failing = dataclasses.replace(options, health_command=r"printf 'mod\350le absent\n' >&2; exit 3")
    result = _deploy(v2, target, failing)
    assert (result.ok, result.outcome, result.active) == (False, "rolled back", v1.bundle_id), result.reason
    assert "health check failed (exit status 3): mod\ufffdle absent" in result.reason
    _assert_intact(root, v1.bundle_id)


# A restart that takes the link down (as a restarted network would): it kills the sshd process serving it.
DROP_LINK = ('p=$$; while [ "${p:-1}" -gt 1 ] && [ "$(cat /proc/$p/comm)" != sshd ]; do '
             'p=$(cut -d")" -f2 /proc/$p/stat | cut -d" " -f3); done; kill -9 $p')


def test_a_connection_lost_after_the_switch_is_switched_back_over_a_new_one(device, bundles):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    # Restarting the new bundle takes the link down (it kills its own SSH session, as a restarted network would).
    drops = dataclasses.replace(options, restart_command=options.restart_command + "; case \"$(readlink "
                                f"{{root}}/current)\" in *{v2.bundle_id}) {DROP_LINK};; esac")
    result = _deploy(v2, target, drops)
    assert (result.ok, result.outcome, result.active) == (False, "rolled back", v1.bundle_id), result.reason
    assert "connection dropped" in result.reason and "(reconnected)" in result.reason
    assert f"switched back to {v1.bundle_id[:12]}" in result.reason
    _assert_intact(root, v1.bundle_id)
    assert ReleaseStore(root).unconfirmed() is None
    assert _restarts(root) == 3  # v1, the new one (cut off), v1 again


def _connecting_once():
    """A stand-in for deploy_ssh.connect that connects once and then finds the device unreachable, and the list of
    the connections asked for (clear it to allow one more)."""
    real_connect = deploy_ssh.connect
    connects = []

    async def connect_once(target, options):
        connects.append(target)
        if len(connects) > 1:
            raise deploy_ssh.DeployError("cannot connect to the device: connection refused")
        return await real_connect(target, options)

    return connects, connect_once


def test_a_deploy_cut_off_after_the_switch_is_finished_by_the_next_one(device, bundles, monkeypatch):
    """Cut off after the switch and unable to reconnect, a deploy leaves the new bundle active but unchecked; the
    same deploy again must restart and health-check it (and switch back if it fails), not call it unchanged."""
    root, target, options = device
    v1, v2, v3 = bundles
    assert _deploy(v1, target, options).ok
    connects, connect_once = _connecting_once()

    def cut_off(bundle):
        connects.clear()
        with monkeypatch.context() as patch:
            patch.setattr(deploy_ssh, "connect", connect_once)
            drops = dataclasses.replace(options, restart_command=DROP_LINK)
            result = _deploy(bundle, target, drops)
        assert (result.ok, result.outcome, result.active) == (False, "failed", None), result.reason
        assert "connecting again to switch back failed" in result.reason and "unchecked" in result.reason
        assert ReleaseStore(root).current() == bundle.bundle_id
        assert ReleaseStore(root).unconfirmed()["bundle"] == bundle.bundle_id

    cut_off(v2)
    restarts = _restarts(root)
    resumed = _deploy(v2, target, options)
    assert (resumed.ok, resumed.outcome, resumed.active) == (True, "switched", v2.bundle_id), resumed.reason
    assert "never checked" in resumed.reason and _restarts(root) == restarts + 1
    assert ReleaseStore(root).unconfirmed() is None
    assert _deploy(v2, target, options).outcome == "unchanged"  # checked now: nothing more to do

    cut_off(v3)
    failing = dataclasses.replace(options, health_command="echo 'model did not load' >&2; exit 3")
    resumed = _deploy(v3, target, failing)
    assert (resumed.ok, resumed.outcome, resumed.active) == (False, "rolled back", v2.bundle_id), resumed.reason
    assert "health check failed (exit status 3): model did not load" in resumed.reason
    _assert_intact(root, v2.bundle_id)
    assert ReleaseStore(root).previous() == v1.bundle_id  # as before the cut-off deploy
    assert ReleaseStore(root).unconfirmed() is None


def test_a_failed_deploy_goes_back_to_the_last_checked_bundle_not_to_an_unchecked_one(device, bundles):
    """A deploy of v2 was cut off after its switch (v2 active, never checked); a deploy of v3 that fails its
    health check goes back to v1, which last passed one, and does not leave v2 looking checked."""
    root, target, options = device
    v1, v2, v3 = bundles
    assert _deploy(v1, target, options).ok and _deploy(v2, target, options).ok
    store = ReleaseStore(root)
    store.activate(v1.bundle_id)
    store.activate(v2.bundle_id, unconfirmed=True)  # what the cut-off deploy of v2 left
    result = _deploy(v3, target, dataclasses.replace(options, health_command="exit 3"))
    assert (result.ok, result.outcome, result.active) == (False, "rolled back", v1.bundle_id), result.reason
    assert store.current() == v1.bundle_id and store.unconfirmed() is None


def test_a_release_damaged_on_the_device_is_uploaded_again_and_mended_active_or_not(device, bundles):
    """The device's storage changed a byte of a release it holds: a deploy of that bundle uploads and installs it
    again, which mends it, where it used to count it as held (and fail to activate it, or call it unchanged)."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok and _deploy(v2, target, options).ok
    store = ReleaseStore(root)

    def damage(bundle):
        manifest = store.path_of(bundle.bundle_id) / "manifest.json"
        manifest.write_bytes(manifest.read_bytes().replace(b"{", b"{ ", 1))
        assert store.damage(bundle.bundle_id)

    damage(v1)  # held, not active
    planned = _deploy(v1, target, options, dry_run=True)
    assert planned.outcome == "would install" and "damaged on the device" in planned.reason
    result = _deploy(v1, target, options)
    assert (result.ok, result.outcome) == (True, "installed"), result.reason
    assert store.damage(v1.bundle_id) is None
    _assert_intact(root, v1.bundle_id)
    damage(v1)  # active
    result = _deploy(v1, target, options)
    assert (result.ok, result.outcome) == (True, "installed") and store.damage(v1.bundle_id) is None, result.reason
    _assert_intact(root, v1.bundle_id)


def test_a_device_with_the_release_tool_of_before_the_notes_is_deployed_to_as_before(device, bundles, tmp_path):
    """Its status has no 'unconfirmed' and its release tool knows neither `activate --unconfirmed` nor `confirm`."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    python = tmp_path / "older-device-python"
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case " $* " in *" --unconfirmed "*|*" confirm "*) echo "error: unrecognized arguments" >&2; exit 2;; esac
        case " $* " in *" status "*) {DEVICE_PYTHON} "$@" | sed 's/, "unconfirmed": null//'; exit;; esac
        exec {DEVICE_PYTHON} "$@"
        """))
    python.chmod(0o755)
    older = dataclasses.replace(options, device_python=str(python))
    for bundle in (v1, v2):
        result = _deploy(bundle, target, older)
        assert (result.ok, result.outcome) == (True, "installed") and not result.warning, result.reason
    assert ReleaseStore(root).current() == v2.bundle_id and ReleaseStore(root).previous() == v1.bundle_id


def test_a_failed_switch_back_keeps_the_reason_it_was_needed(device, bundles, tmp_path):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    options = dataclasses.replace(options, health_command="echo 'model did not load' >&2; exit 3",
                                  device_python=_device_python_that_fails(tmp_path, "--previous", "disk full"))
    result = _deploy(v2, target, options)
    assert (result.ok, result.outcome) == (False, "failed")
    assert result.reason.startswith("health check failed (exit status 3): model did not load; "
                                    "switching back failed: disk full; ")
    assert f"may now run {v2.bundle_id[:12]} unchecked" in result.reason
    assert ReleaseStore(root).unconfirmed()["bundle"] == v2.bundle_id  # the next deploy checks it


class StallingProxy:
    """A TCP proxy to the test sshd whose link can go silent: after stall(), nothing more is forwarded to the
    server, and nothing is closed either (Wi-Fi gone, or a NAT that forgot the flow)."""

    def __init__(self, port: int):
        import socket
        import threading

        self.server_port = port
        self.stalled = threading.Event()
        self.done = threading.Event()
        self.sockets = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source, sink, can_stall):
        try:
            while data := source.recv(4096):
                if can_stall and self.stalled.is_set():
                    self.done.wait()
                    return
                sink.sendall(data)
        except OSError:
            pass

    def stall(self):
        self.stalled.set()

    def close(self):
        self.done.set()
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_a_link_that_stalls_mid_upload_fails_after_the_connect_timeout(device, bundles, sshd):
    """No command timeout covers an upload: SSH keepalives make a silent link fail after --connect-timeout."""
    import time

    root, target, options = device
    proxy = StallingProxy(sshd.port)
    try:
        options.known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {sshd.host_public_key}\n")
        target = dataclasses.replace(target, port=proxy.port)

        _, stall_when_sending = _once_half_way_through_the_upload(proxy.stall)
        slow = dataclasses.replace(_in_small_writes(options), connect_timeout=2)
        started = time.monotonic()
        result = _deploy(bundles[0], target, slow, progress_for=lambda _i, _t: stall_when_sending)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert proxy.stalled.is_set()
    assert (result.ok, result.outcome) == (False, "failed")
    assert result.reason.startswith("uploading: the link went silent"), result.reason
    assert took < 10
    assert not (root / "current").exists()


def test_ssh_config_port_and_user_apply_to_a_url_without_them(device, bundles, sshd, tmp_path, monkeypatch):
    """A URL without a port leaves it to ~/.ssh/config (as ssh does); a host key accepted on first sight is
    recorded under the port really used."""
    root, _, options = device
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host kitchen-pi\n    HostName 127.0.0.1\n    Port {sshd.port}\n"
                                          f"    User {sshd.user}\n    IdentityFile {sshd.client_key}\n")
    monkeypatch.setenv("HOME", str(home))
    target = parse_target(f"ssh://kitchen-pi{root}")
    options = dataclasses.replace(options, identity=None)
    options.known_hosts.write_text("")
    result = _deploy(bundles[0], target, dataclasses.replace(options, accept_new_host_keys=True))
    assert (result.ok, result.outcome) == (True, "installed"), result.reason
    assert options.known_hosts.read_text() == sshd.known_hosts_line()
    [status] = status_fleet([target], options)
    assert status.ok and status.current == bundles[0].bundle_id, status.reason


def test_the_default_health_check_runs_with_the_device_python(device, bundles, tmp_path):
    """Installed in a virtual environment, basilar is not on the login's PATH: the default health check must
    run it the way --device-python says."""
    root, target, options = device
    python = tmp_path / "venv-python"
    log = tmp_path / "venv-python.log"
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {DEVICE_PYTHON} "$@"\n')
    python.chmod(0o755)
    options = dataclasses.replace(options, device_python=str(python), health_command=None)
    result = _deploy(bundles[0], target, options)
    assert (result.ok, result.outcome) == (True, "installed"), result.reason
    assert f"-m firmware_tools.cli bundle verify {root}/current" in log.read_text().splitlines()


def test_a_dry_run_reports_a_bundle_the_device_would_refuse(device, bundles, sshd, tmp_path):
    require_module("nacl")
    from edge.signing import generate_keypair, sign_bundle_dir

    root, target, options = device
    _, trusted = generate_keypair(tmp_path / "release-key")
    (root / "trusted_keys").mkdir(parents=True)
    shutil.copy(trusted, root / "trusted_keys" / "release.pub")
    unsigned = shutil.copytree(load_bundle(bundles[0].archive).path, tmp_path / "unsigned")
    stranger = shutil.copytree(unsigned, tmp_path / "stranger")
    sign_bundle_dir(stranger, generate_keypair(tmp_path / "other-key")[0])
    signed = shutil.copytree(unsigned, tmp_path / "signed")
    sign_bundle_dir(signed, tmp_path / "release-key")

    def dry_run(bundle_dir):
        return CliRunner().invoke(cli, ["deploy", str(bundle_dir), sshd.url(root), "--dry-run", "--known-hosts",
                                        str(options.known_hosts), "-i", str(sshd.client_key), "--device-python",
                                        DEVICE_PYTHON])

    refused = dry_run(unsigned)
    assert refused.exit_code == 1 and "would fail" in refused.stdout, refused.output
    assert "the device would refuse the bundle: the bundle is not signed" in refused.stdout
    refused = dry_run(stranger)
    assert refused.exit_code == 1 and "which the device does not trust" in refused.stdout, refused.output
    accepted = dry_run(signed)
    assert accepted.exit_code == 0 and "would install" in accepted.stdout, accepted.output
    assert ReleaseStore(root).releases() == []


def test_a_broken_ssh_config_or_an_unexpected_error_fails_one_device_only(device, bundles, sshd, tmp_path,
                                                                         monkeypatch):
    """An ~/.ssh/config line asyncssh cannot parse, or any unexpected exception, is that device's failed row: the
    others finish, and the summary is printed."""
    root, _, options = device
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host beta\n    HostName 127.0.0.1\n    ServerAliveInterval 30s\n")
    monkeypatch.setenv("HOME", str(home))
    inventory = tmp_path / "fleet.txt"
    inventory.write_text(f"alpha {sshd.url(root)}\nbeta ssh://pi@beta/opt/basilar\n")
    common = ["--inventory", str(inventory), "--known-hosts", str(options.known_hosts), "-i", str(sshd.client_key),
              "--device-python", DEVICE_PYTHON]
    result = CliRunner().invoke(cli, ["deploy", str(bundles[0].archive), *common, "--restart-command", ""])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    table = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert table["alpha"].split()[1:3] == [bundles[0].bundle_id[:12], "installed"], result.output
    assert "cannot read the SSH configuration" in table["beta"] and "config line 3" in table["beta"]
    assert "ServerAliveInterval 30 rather than 30s" in table["beta"]
    status = CliRunner().invoke(cli, ["status", *common])
    assert status.exit_code == 1 and "cannot read the SSH configuration" in status.stdout, status.output

    async def crashes(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(fleet, "status_ssh", crashes)
    [alpha, beta] = status_fleet([parse_target(sshd.url(root)), parse_target("ssh://pi@beta/opt")], options)
    assert not alpha.ok and alpha.reason == "unexpected error: RuntimeError: a bug"
    monkeypatch.setattr(fleet, "deploy_ssh", crashes)
    [failed] = deploy_fleet(bundles[1], [parse_target(sshd.url(root))], options)
    assert (failed.ok, failed.outcome, failed.reason) == (False, "failed", "unexpected error: RuntimeError: a bug")


def test_a_device_name_that_does_not_resolve_is_said_so():
    """getaddrinfo's errors carry its own codes, which os.strerror reads as "unknown error -2"."""
    result = CliRunner().invoke(cli, ["status", "ssh://pi@no-such-device.invalid/opt/basilar"])  # RFC 2606
    assert result.exit_code == 1, result.output
    assert "cannot connect to no-such-device.invalid: the name does not resolve" in result.stdout
    assert "unknown error" not in result.stdout


def test_a_device_without_room_for_the_upload_is_told_how_much_to_free(device, bundles, tmp_path):
    """SFTP says only "Failure" half-way through (leaving the partial upload on the full disk), or, with no space
    at all, that incoming/ is not a directory: the free space is checked first and named."""
    _, target, options = device
    with _small_disk(tmp_path, "16k") as disk:
        root = disk / "basilar"
        (disk / "filler").write_bytes(bytes(16 * 1024 - 4096))  # 4 KB left, less than the bundle
        result = _deploy(bundles[0], dataclasses.replace(target, root=str(root)), options)
        assert (result.ok, result.outcome) == (False, "failed"), result.reason
        assert f"the device has 4 KB free under {root} and the bundle needs" in result.reason
        assert f"python3 -m edge.releases prune {root} --keep 1" in result.reason
        assert not list(root.rglob("*.part")) and not (root / "current").exists()


def test_a_device_with_room_for_the_upload_but_not_its_extracted_copy_is_told_how_much_to_free(device, tmp_path):
    """The free space was checked against the upload only: the upload went through, and the install then failed
    with "No space left on device" and no numbers to act on."""
    _, target, options = device
    bundle = prepare_bundle("default", tmp_path)
    assert bundle.unpacked_size > 0 and bundle.room_needed == bundle.size + bundle.unpacked_size
    with _small_disk(tmp_path, "512k") as disk:
        root = disk / "basilar"
        free = shutil.disk_usage(disk).free
        room = (bundle.size + bundle.room_needed) // 2 // 4096 * 4096  # more than the upload, less than both
        (disk / "filler").write_bytes(bytes(free - room))
        assert bundle.size < shutil.disk_usage(disk).free < bundle.room_needed
        result = _deploy(bundle, dataclasses.replace(target, root=str(root)), options)
        assert (result.ok, result.outcome, result.uploaded_bytes) == (False, "failed", 0), result.reason
        assert (f"the device has {room // 1024} KB free under {root} and the bundle needs "
                f"{bundle.room_needed / 1024:.0f} KB (the upload and its extracted copy)") in result.reason
        assert not list(root.rglob("*.part")) and not (root / "current").exists()


@contextlib.contextmanager
def _small_disk(tmp_path, size: str):
    """A tmpfs of `size` as a device's nearly full storage, with an empty device root `basilar/` on it."""
    require(os.geteuid() == 0, "root, to mount a small tmpfs as a full device")
    disk = tmp_path / "sd"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        (disk / "basilar").mkdir()
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("option", ["--restart-command", "--health-command", "--service-command"])
def test_a_device_command_of_several_lines_is_refused(option):
    """The command reaches the login shell on its standard input, where bash reads a line at a time: a first line
    that reads its input would swallow the others, which never ran, and the check would pass."""
    command = "deploy" if option != "--service-command" else "status"
    args = [command, *(["bundle.tar.gz"] if command == "deploy" else []), "ssh://pi@device/opt/basilar",
            option, "python3 -c 'import sys; sys.stdin.read()'\necho second"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "give one line; join commands with ; or &&" in result.output, result.output


def test_a_device_command_loses_its_line_ending_and_an_empty_one_still_skips():
    """A command pasted with its line ending (CRLF from a Windows editor) would reach bash as `true\\r`, not found."""
    from firmware_tools.deploy_cmd import one_line

    assert [one_line(None, None, v) for v in ("true\r\n", "true\n", "\n", "", None)] == ["true", "true", "", "", None]


def _deploy_in_background(bundle, urls, options, sshd, *extra, device_python=DEVICE_PYTHON, restart=None, env=()):
    """`basilar deploy` as its own process, so that a test can Ctrl-C it (SIGINT) as a terminal does."""
    return subprocess.Popen(
        [sys.executable, "-m", "firmware_tools.cli", "deploy", str(bundle.archive), *urls, "--known-hosts",
         str(options.known_hosts), "-i", str(sshd.client_key), "--device-python", str(device_python),
         "--restart-command", restart or options.restart_command, "--health-command", options.health_command,
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, **dict(env)})


def _wait_for(marker: Path, process: subprocess.Popen) -> None:
    """Until the device side has made marker (the step the test interrupts has begun)."""
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()


def _device_python_that_waits(tmp_path, case: str, marker: Path, seconds: float) -> Path:
    """A device Python whose `edge.releases` commands matching the shell pattern case make marker and wait."""
    wrapper = tmp_path / "python"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in {case}) touch {marker}; sleep {seconds};; esac
        exec {DEVICE_PYTHON} "$@"
        """))
    wrapper.chmod(0o755)
    return wrapper


def test_ctrl_c_after_the_switch_switches_back_and_reports_every_device(device, bundles, sshd, tmp_path):
    """Ctrl-C during the restart left the device on a bundle never checked, printed no table, and exited 1."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    untouched = tmp_path / "untouched"
    assert _deploy(v1, parse_target(sshd.url(untouched)), options).ok
    started = tmp_path / "restart-started"
    restart = f"{options.restart_command}; touch {started}; sleep 20.{os.getpid()}"
    deploy = _deploy_in_background(v2, [sshd.url(root), sshd.url(untouched)], options, sshd, "--parallel", "1",
                                   restart=restart)
    _wait_for(started, deploy)
    assert ReleaseStore(root).current() == v2.bundle_id  # switched, its check not yet passed
    deploy.send_signal(signal.SIGINT)
    out, err = deploy.communicate(timeout=60)
    assert deploy.returncode == 130, out + err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows[sshd.url(root)].split()[1:4] == [v1.bundle_id[:12], "rolled", "back"]
    assert "interrupted while restarting and checking the service" in rows[sshd.url(root)]
    assert rows[sshd.url(untouched)].split()[2:5] == ["interrupted", "not", "started:"]  # --parallel 1: it waited
    assert "Interrupted: 2 of 2 device(s) did not finish" in err
    _assert_intact(root, v1.bundle_id)
    assert ReleaseStore(root).unconfirmed() is None and ReleaseStore(untouched).current() == v1.bundle_id


def test_status_says_when_the_active_bundle_cannot_start_or_the_root_holds_no_store(device, bundles, sshd):
    root, target, options = device
    common = ["--known-hosts", str(options.known_hosts), "-i", str(sshd.client_key), "--device-python", DEVICE_PYTHON,
              "--service-command", "echo active"]
    missing = root.parent / "mistyped-root"
    fresh = CliRunner().invoke(cli, ["status", sshd.url(missing), *common])
    assert fresh.exit_code == 0, fresh.output  # a device before its first deploy is not an error
    assert f"no release store in {missing}: nothing deployed there yet, or the root is mistyped" in fresh.stdout
    first = _deploy(bundles[0], parse_target(sshd.url(missing)), options)
    assert first.ok and f"made a new release store in {missing}" in first.reason

    assert _deploy(bundles[0], target, options).ok
    model = next(p for p in (root / "current").iterdir() if p.suffix == ".tflite")
    model.write_bytes(b"\0" + model.read_bytes()[1:])  # one byte changed: the manifest's hash no longer matches
    damaged = CliRunner().invoke(cli, ["status", sshd.url(root), *common])
    assert damaged.exit_code == 1, damaged.output
    assert "the active bundle is damaged on the device, so its service will not start" in damaged.stdout
    assert "1 of 1 device(s) will not start their service" in damaged.output
    shutil.rmtree(ReleaseStore(root).path_of(bundles[0].bundle_id))
    dangling = CliRunner().invoke(cli, ["status", sshd.url(root), *common])
    assert dangling.exit_code == 1 and "current points at no release the device holds" in dangling.stdout, \
        dangling.output


def test_a_signed_copy_of_the_active_release_brings_its_signature_without_a_restart(device, bundles, tmp_path):
    """The device ran v1, unsigned or signed by an old key, when it came to trust a new key: deploying v1 signed
    by the new key said "unchanged" and left it as it was, so a later rollback to v1 was refused."""
    require_module("nacl")
    from edge.signing import check_signature_intact, generate_keypair, sign_bundle_dir

    root, target, options = device
    assert _deploy(bundles[0], target, options).ok
    (root / "trusted_keys").mkdir()
    for name in ("old", "new"):
        private, public = generate_keypair(tmp_path / name)
        shutil.copy(public, root / "trusted_keys" / f"{name}.pub")
        signed_dir = shutil.copytree(load_bundle(bundles[0].archive).path, tmp_path / f"signed-{name}")
        sign_bundle_dir(signed_dir, private)
        archive = tmp_path / f"signed-{name}.tar.gz"
        pack_bundle(signed_dir, archive)
        signer = check_signature_intact(signed_dir)
        signed = LocalBundle(archive, bundles[0].bundle_id, file_sha256(archive), archive.stat().st_size,
                             signed=True, signer=signer)
        assert _deploy(signed, target, options, dry_run=True).outcome == "would sign"
        result = _deploy(signed, target, options)
        assert (result.ok, result.outcome, result.uploaded_bytes) == (True, "unchanged", signed.size), result.reason
        assert "its signature installed" in result.reason
        assert ReleaseStore(root).signer(bundles[0].bundle_id) == signer
        again = _deploy(signed, target, options)  # now held with this signature: nothing to do
        assert (again.outcome, again.uploaded_bytes, again.reason) == ("unchanged", 0, "already active")
    assert _restarts(root) == 1  # only the first deploy restarted anything


def test_ctrl_c_during_the_upload_leaves_the_old_bundle_and_no_partial_upload(device, bundles):
    """Ctrl-C comes as SIGINT to this process, handled in the event loop as `basilar deploy` handles it."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    interrupted, ctrl_c_half_way = _once_half_way_through_the_upload(lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(fleet.Interrupted) as stop:
        deploy_fleet(v2, [target], _in_small_writes(options), progress_for=lambda _i, _t: ctrl_c_half_way)
    [result] = stop.value.results
    assert interrupted and (result.ok, result.outcome) == (False, "interrupted")
    assert result.reason == f"interrupted while uploading; the device runs what it ran before ({v1.bundle_id[:12]})"
    _assert_intact(root, v1.bundle_id)
    assert list((root / "incoming").iterdir()) == []  # the deploy took its partial upload away itself


def test_a_second_ctrl_c_during_the_switch_back_says_what_the_device_may_run(device, bundles, sshd, tmp_path):
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    # The new bundle's restart hangs (Ctrl-C comes then); the switch-back's own activate is slowed down on the
    # device (a second Ctrl-C comes then), so the device may be left on either bundle.
    entered = tmp_path / "entered"
    slow_switch_back = _device_python_that_waits(tmp_path, '*" activate "*" --previous "*', entered, 20)
    started = tmp_path / "restart-started"
    restart = f"{options.restart_command}; touch {started}; sleep 20.{os.getpid()}"
    deploy = _deploy_in_background(v2, [sshd.url(root)], options, sshd, device_python=slow_switch_back,
                                   restart=restart)
    for marker in (started, entered):
        _wait_for(marker, deploy)
        deploy.send_signal(signal.SIGINT)
    out, err = deploy.communicate(timeout=60)
    assert deploy.returncode == 130, out + err
    [row] = out.splitlines()[1:]
    # either bundle may be current: "?", not "-" (which says the device runs none)
    assert row.split()[1:3] == ["?", "interrupted"] and "interrupted again while switching back" in row
    assert f"the device may now run {v2.bundle_id[:12]} unchecked" in row and "Traceback" not in err
    assert load_bundle(root / "current").id in (v1.bundle_id, v2.bundle_id)  # complete, whichever it is


def test_a_device_whose_status_lists_no_signers_gets_no_upload_of_its_active_signed_bundle(device, bundles, tmp_path,
                                                                                       monkeypatch):
    """Software from before `signers`: a signed bundle already active was uploaded again on every deploy."""
    require_module("nacl")
    from edge.signing import check_signature_intact, generate_keypair, sign_bundle_dir

    root, target, options = device
    private, public = generate_keypair(tmp_path / "key")
    signed_dir = shutil.copytree(load_bundle(bundles[0].archive).path, tmp_path / "signed")
    sign_bundle_dir(signed_dir, private)
    archive = tmp_path / "signed.tar.gz"
    pack_bundle(signed_dir, archive)
    signed = LocalBundle(archive, bundles[0].bundle_id, file_sha256(archive), archive.stat().st_size, signed=True,
                         signer=check_signature_intact(signed_dir))
    (root / "trusted_keys").mkdir(parents=True)
    shutil.copy(public, root / "trusted_keys" / "k.pub")
    assert _deploy(signed, target, options).outcome == "installed"
    releases = deploy_ssh._releases

    async def old_status(conn, options, command, *args):
        answer = await releases(conn, options, command, *args)
        return {k: v for k, v in answer.items() if k not in ("signers", "store", "current_broken")}

    monkeypatch.setattr(deploy_ssh, "_releases", old_status)
    assert _deploy(signed, target, options, dry_run=True).outcome == "unchanged"
    again = _deploy(signed, target, options)
    assert (again.outcome, again.uploaded_bytes, again.reason) == ("unchanged", 0, "already active")


def test_a_second_ctrl_c_while_the_switch_finishes_does_not_race_it_with_a_switch_back(device, bundles, sshd,
                                                                                     tmp_path):
    """The device's activate goes on after a Ctrl-C: switching back while it ran could leave the new bundle current
    under a row that said "rolled back"."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    entered = tmp_path / "entered"
    slow_switch = _device_python_that_waits(tmp_path, '*" activate "*"--unconfirmed"*', entered, 3)
    deploy = _deploy_in_background(v2, [sshd.url(root)], options, sshd, device_python=slow_switch)
    _wait_for(entered, deploy)
    deploy.send_signal(signal.SIGINT)
    time.sleep(0.5)
    deploy.send_signal(signal.SIGINT)
    out, err = deploy.communicate(timeout=60)
    assert deploy.returncode == 130, out + err
    [row] = out.splitlines()[1:]
    assert "interrupted again while switching current" in row and f"may now run {v2.bundle_id[:12]} unchecked" in row
    deadline = time.monotonic() + 60  # the device's activate finishes on its own (3 s, then Python's start)
    while ReleaseStore(root).current() != v2.bundle_id and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ReleaseStore(root).current() == v2.bundle_id and ReleaseStore(root).unconfirmed() is not None
    assert _restarts(root) == 1  # nothing restarted the old bundle under the new one


def test_a_deploy_where_ctrl_c_is_ignored_or_handled_by_the_caller_leaves_it_so(device, bundles):
    """A shell's background job ignores SIGINT: a Ctrl-C meant for the script around it interrupted the deploy."""
    root, target, options = device
    for setting in (signal.SIG_IGN, lambda *_: None):
        before = signal.signal(signal.SIGINT, setting)
        try:
            result = _deploy(bundles[0], target, options,
                             progress_for=lambda _i, _t: lambda *_: signal.raise_signal(signal.SIGINT))
            assert result.ok and signal.getsignal(signal.SIGINT) is setting
        finally:
            signal.signal(signal.SIGINT, before)
    _assert_intact(root, bundles[0].bundle_id)


def test_waiting_for_a_serial_transfer_ends_when_asyncio_gives_up_on_it(tmp_path):
    """Cancelled from outside (asyncio.run's shutdown, or a thread ending in CancelledError), the wait for a serial
    transfer spun at full CPU for ever."""
    script = tmp_path / "spin.py"
    script.write_text(textwrap.dedent("""\
        import asyncio
        from firmware_tools import fleet
        from firmware_tools.targets import parse_target

        def cancelled(*_):
            raise asyncio.CancelledError

        fleet._deploy_serial = cancelled
        print(asyncio.run(fleet._serial_to_the_end(parse_target("serial:///dev/ttyUSB0"), None, None, False)).reason)
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert done.returncode == 0 and "interrupted before the serial transfer was seen to end" in done.stdout, done


def test_ctrl_c_is_taken_by_the_event_loop_where_it_has_its_default_meaning(monkeypatch):
    """On Python 3.11 asyncio.run puts in its own handler first, whose second Ctrl-C raises KeyboardInterrupt
    wherever the code is: the deploy's must be there instead, and gone afterwards."""
    probe = asyncio.new_event_loop()
    loop_class = type(probe)
    probe.close()
    installed = []
    add = loop_class.add_signal_handler
    monkeypatch.setattr(loop_class, "add_signal_handler",
                        lambda self, sig, *args: (installed.append(sig), add(self, sig, *args))[1])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert deploy_fleet(None, [], SshOptions()) == []
    assert installed == [signal.SIGINT, signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_two_deploys_cut_off_in_a_row_then_a_failing_one_go_back_to_the_last_checked_bundle(device, bundles,
                                                                                           monkeypatch):
    """v1 checked; deploys of v2 and then v3 each cut off after their switch: the note of v3's switch named v2
    (never checked) as what to go back to, so a failing deploy switched back to v2 and deleted the note."""
    root, target, options = device
    v1, v2, v3 = bundles
    assert _deploy(v1, target, options).ok
    connects, connect_once = _connecting_once()

    for bundle in (v2, v3):
        connects.clear()
        with monkeypatch.context() as patch:
            patch.setattr(deploy_ssh, "connect", connect_once)
            cut = _deploy(bundle, target, dataclasses.replace(options, restart_command=DROP_LINK))
        assert (cut.ok, cut.outcome) == (False, "failed") and "unchecked" in cut.reason, cut.reason
    result = _deploy(v3, target, dataclasses.replace(options, health_command="exit 3"))
    assert (result.ok, result.outcome, result.active) == (False, "rolled back", v1.bundle_id), result.reason
    assert f"switched back to {v1.bundle_id[:12]}" in result.reason
    _assert_intact(root, v1.bundle_id)


def _device_python_that_drops_the_link_at_the_switch(tmp_path, when: str) -> str:
    """A device Python whose `activate --unconfirmed` takes the SSH link down: after switching, before, or before
    an activate left running on the device switches a moment later."""
    python = tmp_path / "device-python"
    drop = {"after": f'{DEVICE_PYTHON} "$@" >/dev/null; {DROP_LINK}; exit 1',
            "before": f"{DROP_LINK}; exit 1",
            "later": f"{DROP_LINK}; sleep 2"}[when]
    python.write_text(f'#!/bin/sh\ncase "$*" in *" activate "*"--unconfirmed"*) {drop};; esac\n'
                      f'exec {DEVICE_PYTHON} "$@"\n')
    python.chmod(0o755)
    return str(python)


@pytest.mark.parametrize("when", ["after", "before", "later"])
def test_a_link_lost_during_the_switch_is_found_out_over_a_new_one(device, bundles, tmp_path, when):
    """The link dropped while the device's activate ran: the deploy said "switching current: exit status None",
    still on the old bundle, while the device had switched, unchecked."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    drops = dataclasses.replace(options, device_python=_device_python_that_drops_the_link_at_the_switch(
        tmp_path, when))
    result = _deploy(v2, target, drops)
    assert "switching current: the connection was lost before the device answered" in result.reason, result.reason
    assert "exit status None" not in result.reason and result.active == v1.bundle_id
    if when == "after":
        assert (result.ok, result.outcome) == (False, "rolled back"), result.reason
        assert f"(reconnected); switched back to {v1.bundle_id[:12]}" in result.reason
    else:
        assert (result.ok, result.outcome) == (False, "failed"), result.reason
        assert f"reconnected: the device did not switch (it runs {v1.bundle_id[:12]})" in result.reason
    time.sleep(3 if when == "later" else 0)  # the activate left running gets there, and must not switch
    _assert_intact(root, v1.bundle_id)
    assert ReleaseStore(root).unconfirmed() is None


def test_a_switch_that_waits_past_the_command_timeout_does_not_switch_later(device, bundles):
    """activate waited on the store's lock longer than --command-timeout: the deploy gave up and reported failure,
    and the device's activate, still running, switched `current` to the new bundle some seconds later, unchecked."""
    import fcntl

    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v2, target, options).ok and _deploy(v1, target, options).ok  # v2 held: no install to wait
    quick = dataclasses.replace(options, command_timeout=2)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another store operation, taking its time
        result = _deploy(v2, target, quick)
    assert (result.ok, result.outcome, result.active) == (False, "failed", v1.bundle_id), result.reason
    assert "switching current: the command timed out (--command-timeout 2 s)" in result.reason
    assert f"the device did not switch (it runs {v1.bundle_id[:12]})" in result.reason
    time.sleep(2)  # time for a switch still running on the device to happen
    _assert_intact(root, v1.bundle_id)


def test_sigterm_during_a_deploy_switches_back_and_reports_like_ctrl_c(device, bundles, sshd, tmp_path):
    """SIGTERM (timeout, systemd, kill) ended the deploy at once: the device stayed on the new bundle, unchecked,
    no table was printed and the temporary folder was left behind."""
    root, target, options = device
    v1, v2 = bundles[0], bundles[1]
    assert _deploy(v1, target, options).ok
    started = tmp_path / "restart-started"
    temp = tmp_path / "temp"
    temp.mkdir()
    restart = f"{options.restart_command}; touch {started}; sleep 20.{os.getpid()}"
    deploy = _deploy_in_background(v2, [sshd.url(root)], options, sshd, restart=restart, env={"TMPDIR": str(temp)})
    _wait_for(started, deploy)
    deploy.send_signal(signal.SIGTERM)
    out, err = deploy.communicate(timeout=60)
    assert deploy.returncode == 143, out + err
    [row] = out.splitlines()[1:]
    assert row.split()[1:4] == [v1.bundle_id[:12], "rolled", "back"], row
    assert "Interrupted: 1 of 1 device(s) did not finish" in err
    _assert_intact(root, v1.bundle_id)
    assert ReleaseStore(root).unconfirmed() is None and list(temp.iterdir()) == []


@pytest.mark.parametrize("how", ["stalled", "dropped"])
def test_a_link_lost_mid_upload_leaves_only_the_summary_on_stderr(device, bundles, sshd, caplog, how):
    """The parallel SFTP writes each failed with ConnectionLost and asyncssh retrieved only the first: stderr got
    "Task exception was never retrieved" tracebacks by the dozen, and "socket.send() raised exception."."""
    import gc

    root, target, options = device
    assert _deploy(bundles[0], target, options).ok
    proxy = StallingProxy(sshd.port)
    try:
        options.known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {sshd.host_public_key}\n")
        target = dataclasses.replace(target, port=proxy.port)
        cut, lose_the_link = _once_half_way_through_the_upload(proxy.stall if how == "stalled" else proxy.close)
        many = dataclasses.replace(options, block_size=64, upload_requests=16, connect_timeout=2)  # many in flight
        caplog.set_level("DEBUG", logger="asyncio")
        result = _deploy(bundles[1], target, many, progress_for=lambda _i, _t: lose_the_link)
        gc.collect()  # unretrieved task exceptions are reported when the tasks are collected
    finally:
        proxy.close()
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise == []
    assert cut and (result.ok, result.outcome) == (False, "failed") and result.reason.startswith("uploading:"), \
        result.reason
    _assert_intact(root, bundles[0].bundle_id)


def test_a_deploy_clears_any_bundle_s_cut_off_upload_and_keeps_a_live_one(device, bundles):
    """Only a deploy of the same bundle removed its cut-off `.part`; prune waited an hour. On a small device that
    blocked deploys of every other bundle."""
    root, target, options = device
    v1, v2, v3 = bundles
    assert _deploy(v1, target, options).ok and _deploy(v2, target, options).ok
    incoming = root / "incoming"
    minutes_ago = time.time() - 120
    parts = {}
    for name in ("stale-upload", "stale-switch", "live"):
        parts[name] = incoming / f"{v3.bundle_id}.{name}.part"
        parts[name].write_bytes(b"half an upload")
    os.utime(parts["stale-upload"], (minutes_ago, minutes_ago))
    assert _deploy(v3, target, options).outcome == "installed"  # v3's own upload clears the stale one
    assert not parts["stale-upload"].exists() and parts["live"].exists()
    os.utime(parts["stale-switch"], (minutes_ago, minutes_ago))
    assert _deploy(v2, target, options).outcome == "switched"  # held already: no upload, but its prune clears it
    assert sorted(incoming.iterdir()) == [parts["live"]]


def test_a_read_only_device_root_is_said_so(device, bundles, tmp_path):
    """A read-only filesystem: SFTP says only "Failure", and the row said `uploading: Failure`."""
    root, target, options = device
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True)
    require(mounted.returncode == 0, "root that may mount a tmpfs (for a filesystem to remount read-only)")
    try:
        assert _deploy(bundles[0], target, options).ok
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        result = _deploy(bundles[1], target, options)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)
    assert (result.ok, result.outcome, result.active) == (False, "failed", bundles[0].bundle_id), result.reason
    assert result.reason.startswith(f"uploading: cannot write under {root} (Failure): the device root is not "
                                    "writable"), result.reason


def test_a_root_under_the_home_folder_that_starts_with_a_dash_is_no_option(sshd, bundles, tmp_path):
    """`ssh://host/~/-x` passed `-x` to `python3 -m edge.releases` as an option."""
    import pwd

    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    root = home / f"-basilar-test-{os.getpid()}"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    options = SshOptions(known_hosts=known_hosts, identity=sshd.client_key, device_python=DEVICE_PYTHON,
                         restart_command="echo restarted >> {root}/restarts.log", health_command=None,
                         service_command="ls {root}/current >/dev/null && echo active")
    target = parse_target(f"ssh://{sshd.user}@{sshd.host}:{sshd.port}/~/{root.name}")
    try:
        result = _deploy(bundles[0], target, options)
        assert (result.ok, result.outcome) == (True, "installed"), result.reason
        [status] = status_fleet([target], options)
        assert (status.ok, status.current, status.service) == (True, bundles[0].bundle_id, "active"), status
        assert _restarts(root) == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_current_that_is_a_directory_is_named_in_deploy_and_status(device, bundles, sshd):
    root, target, options = device
    (root / "current").mkdir(parents=True)
    result = _deploy(bundles[0], target, options)
    assert (result.ok, result.outcome) == (False, "failed"), result.reason
    assert f"{root / 'current'} is a directory, not a link to a release" in result.reason, result.reason
    assert "storage failed" not in result.reason
    [status] = status_fleet([target], options)
    assert status.trouble.startswith("current is a directory, not a link to a release"), status
