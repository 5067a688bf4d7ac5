"""The device's release store (edge.releases): install, activate, rollback, prune, signature policy."""
import contextlib
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.bundle import pack_bundle
from edge.releases import ReleaseError, ReleaseStore, file_sha256, main
from tests.bundle_variants import tamper_file, tamper_manifest, variant
from tests.conftest import REPO, require, require_module, require_program


@pytest.fixture
def bundles(tmp_path, tiny_bundle):
    """Four distinct valid bundle dirs and their archives."""
    made = []
    for n in range(1, 5):
        directory = variant(tiny_bundle, tmp_path / f"bundle{n}", n)
        archive = tmp_path / f"bundle{n}.tar.gz"
        bundle_id = pack_bundle(directory, archive)
        made.append((directory, archive, bundle_id))
    return made


@pytest.fixture
def store(tmp_path):
    return ReleaseStore(tmp_path / "device")


def _leftovers(store):
    staging = list(store.staging_dir.iterdir()) if store.staging_dir.exists() else []
    temp_links = [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
    return staging + temp_links


def test_install_verifies_and_adds_without_activating(store, bundles):
    _, archive, bundle_id = bundles[0]
    assert store.install(archive, file_sha256(archive)) == bundle_id
    assert store.releases() == [bundle_id] and store.has(bundle_id)
    assert store.current() is None and store.current_path() is None
    assert (store.path_of(bundle_id) / "manifest.json").is_file()
    assert _leftovers(store) == []
    # the same archive again: nothing new
    assert store.install(archive) == bundle_id
    assert store.releases() == [bundle_id]


def test_corrupted_archive_is_refused_and_leaves_nothing(store, bundles):
    _, archive, bundle_id = bundles[0]
    expected = file_sha256(archive)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="SHA-256 .* corrupted or incomplete"):
        store.install(archive, expected)
    assert store.releases() == [] and _leftovers(store) == []


def test_invalid_bundle_is_refused(store, bundles, tmp_path):
    directory = variant(bundles[0][0], tmp_path / "broken", 9)
    tamper_file(directory)
    pack_bundle(directory, tmp_path / "broken.tar.gz")
    with pytest.raises(ReleaseError, match="the bundle is invalid"):
        store.install(tmp_path / "broken.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not a gzip file")
    with pytest.raises(ReleaseError, match="the bundle is invalid"):
        store.install(tmp_path / "junk.tar.gz")
    assert store.releases() == [] and _leftovers(store) == []


def test_activate_upgrade_and_rollback(store, bundles):
    ids = [store.install(archive) for _, archive, _ in bundles[:2]]
    assert store.activate(ids[0]) is None
    link = store.root / "current"
    assert link.is_symlink() and os.readlink(link) == f"releases/{ids[0]}"
    assert store.current_path() == (store.releases_dir / ids[0]).resolve()
    assert store.activate(ids[1]) == ids[0]
    assert (store.current(), store.previous()) == (ids[1], ids[0])
    assert store.activate(ids[1]) == ids[1]  # already active: nothing changes
    assert store.previous() == ids[0]
    assert store.rollback() == ids[0]
    assert (store.current(), store.previous()) == (ids[0], ids[1])
    assert _leftovers(store) == []


def test_restoring_after_a_failed_switch_keeps_previous_meaningful(store, bundles):
    ids = [store.install(archive) for _, archive, _ in bundles[:3]]
    store.activate(ids[0])
    store.activate(ids[1])  # previous = 0
    old, old_previous = store.current(), store.previous()
    store.activate(ids[2])  # the new one fails its health check ...
    store.activate(old, previous=old_previous)  # ... and the deploy tool switches back
    assert (store.current(), store.previous()) == (ids[1], ids[0])
    store.deactivate(previous=None)
    assert store.current() is None and store.previous() is None


def test_an_unconfirmed_switch_is_noted_until_confirmed_or_replaced(store, bundles, capsys):
    """A deploy activates with --unconfirmed and confirms after the health check; cut off in between, the note
    tells the next deploy to check the bundle and what to switch back to. Any other switch drops the note."""
    ids = [store.install(archive) for _, archive, _ in bundles[:3]]
    store.activate(ids[0])
    store.activate(ids[1])
    assert store.status()["unconfirmed"] is None
    assert main(["activate", str(store.root), ids[2], "--unconfirmed"]) == 0
    capsys.readouterr()
    note = {"bundle": ids[2], "current": ids[1], "previous": ids[0]}
    assert store.unconfirmed() == note and ReleaseStore(store.root).status()["unconfirmed"] == note
    assert not store.confirm(ids[1])  # only the noted bundle confirms it
    assert main(["confirm", str(store.root), ids[2]]) == 0
    assert json.loads(capsys.readouterr().out) == {"confirmed": True}
    assert store.unconfirmed() is None and store.current() == ids[2]

    for undo in (lambda: store.activate(ids[1], previous=ids[0]), store.rollback, store.deactivate):
        store.activate(ids[2], unconfirmed=True)
        assert store.unconfirmed()["bundle"] == ids[2]
        undo()
        assert store.unconfirmed() is None
        assert not [p for p in store.root.iterdir() if p.name.startswith(".unconfirmed")]


def test_switching_away_from_an_unchecked_bundle_keeps_the_note_on_the_last_checked_one(store, bundles):
    """Two deploys in a row cut off after their switch: the second's note named the first (never checked) as the
    bundle to go back to, so a failing third deploy switched back to it and called the device clean."""
    ids = [store.install(archive) for _, archive, _ in bundles[:4]]
    store.activate(ids[0])
    store.activate(ids[1])  # checked: the note of the next switch goes back here
    store.activate(ids[2], unconfirmed=True)
    store.activate(ids[3], unconfirmed=True)
    assert store.unconfirmed() == {"bundle": ids[3], "current": ids[1], "previous": ids[0]}


def test_an_abandoned_switch_never_happens(store, bundles, capsys):
    """A deploy that lost the answer of its switch abandons it before it reads which bundle is current: an activate
    still starting or waiting for the lock then must not switch behind its back."""
    ids = [store.install(archive) for _, archive, _ in bundles[:2]]
    store.activate(ids[0])
    assert main(["abandon", str(store.root), "0123abcd"]) == 0
    assert main(["activate", str(store.root), ids[1], "--unconfirmed", "--switch-id", "0123abcd"]) == 1
    assert "switch 0123abcd was abandoned by its deploy" in capsys.readouterr().err
    assert store.current() == ids[0] and store.unconfirmed() is None
    assert main(["activate", str(store.root), ids[1], "--switch-id", "4567ef01"]) == 0  # another switch: goes on
    assert store.current() == ids[1]


def test_activate_unknown_bundle_is_refused(store):
    for change in (store.rollback, lambda: store.activate("a" * 64), lambda: store.prune(2)):
        with pytest.raises(ReleaseError, match="no device root at .* check the path"):  # a mistyped root
            change()
    assert not store.root.exists()  # nor is it made
    store.root.mkdir()
    with pytest.raises(ReleaseError, match="not installed"):
        store.activate("a" * 64)
    with pytest.raises(ReleaseError, match="not a bundle id"):
        store.activate("../../etc")
    with pytest.raises(ReleaseError, match="no previous release"):
        store.rollback()


def test_prune_keeps_current_previous_and_newest(store, bundles):
    ids = [store.install(archive) for _, archive, _ in bundles]
    store.activate(ids[0])
    store.activate(ids[1])
    # oldest to newest after the activations: 2, 3, 0, 1; installing 3 again makes it the newest
    store.install(bundles[3][1])
    assert store.prune(keep=1) == [ids[2]]
    assert store.releases() == [ids[0], ids[1], ids[3]]
    with pytest.raises(ReleaseError, match="at least 1"):
        store.prune(keep=0)


def _set_clock(store, oldest_to_newest, start=1e9):
    """Give the release folders mtimes in this order (a second apart), as a clock that was set wrong leaves them."""
    for n, bundle_id in enumerate(oldest_to_newest):
        os.utime(store.path_of(bundle_id), (start + n, start + n))


def test_a_clock_set_back_or_forward_changes_neither_the_order_nor_what_prune_keeps(store, bundles, capsys):
    """A Pi has no real-time clock: it boots at the time fake-hwclock saved and NTP moves it later, and a copy or a
    backup touches a release's folder. Ordered by the folders' mtimes, status listed the releases out of order and
    prune removed those a user meant to roll back to, keeping stale ones."""
    ids = [store.install(archive) for _, archive, _ in bundles]
    store.activate(ids[0])
    installed = [ids[1], ids[2], ids[3], ids[0]]  # oldest to newest
    _set_clock(store, installed[::-1])  # the clock stepped back before each
    os.utime(store.path_of(ids[1]), (4e9, 4e9))  # and a copy touched the oldest on a clock set far ahead
    assert store.releases() == installed
    assert main(["status", str(store.root)]) == 0
    assert json.loads(capsys.readouterr().out)["releases"] == installed
    assert store.prune(keep=2) == [ids[1], ids[2]]
    # Every change that makes a release recent orders it so: an install (again), an activation, a rollback.
    store.install(bundles[2][1])
    store.install(bundles[1][1])  # 3, 0, 2, 1
    store.activate(ids[1])  # current 1, previous 0: 3, 0, 2, 1
    assert store.rollback() == ids[0]  # current 0, previous 1: 3, 2, 1, 0
    _set_clock(store, [ids[0], ids[1], ids[2], ids[3]])
    assert store.releases() == [ids[3], ids[2], ids[1], ids[0]]
    assert store.prune(keep=3) == [ids[3]]
    shutil.rmtree(store.path_of(ids[2]))  # removed by hand: simply not listed
    assert store.releases() == [ids[1], ids[0]]
    assert _leftovers(store) == []


def test_a_store_from_before_the_order_record_is_read_by_mtime_and_upgraded(store, bundles):
    """A store the old code wrote has no .order: its releases go by their folders' mtimes, before (older than) any
    .order lists, and the next install or activation records them all."""
    ids = [store.install(archive) for _, archive, _ in bundles]
    shutil.rmtree(store.path_of(ids[3]))
    (store.root / ".order").unlink(missing_ok=True)
    _set_clock(store, [ids[2], ids[0], ids[1]])
    assert store.releases() == [ids[2], ids[0], ids[1]]
    store.activate(ids[0])  # the first change records them all: 2, 1, 0
    _set_clock(store, [ids[0], ids[1], ids[2]])
    assert store.releases() == [ids[2], ids[1], ids[0]]
    # Releases it does not list (the old code installed them after a downgrade) are older than those it does.
    store.install(bundles[3][1])
    (store.root / ".order").write_text(f"{ids[1]}\n{ids[0]}\n")
    _set_clock(store, [ids[0], ids[1], ids[2], ids[3]])
    assert store.releases() == [ids[2], ids[3], ids[1], ids[0]]
    assert store.prune(keep=2) == [ids[2], ids[3]]


@pytest.mark.parametrize("damage", ["not text", "cut short", "a folder"])
def test_a_damaged_order_record_falls_back_to_mtime_and_stops_nothing(store, bundles, capsys, caplog, damage):
    ids = [store.install(archive) for _, archive, _ in bundles]
    shutil.rmtree(store.path_of(ids[3]))
    store.activate(ids[0])
    store.activate(ids[1])
    record = store.root / ".order"
    record.unlink(missing_ok=True)
    if damage == "a folder":
        record.mkdir()
    elif damage == "not text":
        record.write_bytes(b"\xff\xfe\x00 not a list of ids")
    else:
        record.write_text(f"{ids[2]}\n{ids[0][:20]}")
    _set_clock(store, [ids[1], ids[2], ids[0]])
    assert store.releases() == [ids[1], ids[2], ids[0]]  # the folders' times
    assert main(["status", str(store.root)]) == 0
    assert json.loads(capsys.readouterr().out)["releases"] == [ids[1], ids[2], ids[0]]
    assert store.rollback() == ids[0]
    assert store.install(bundles[3][1]) == ids[3]
    assert store.prune(keep=2) == [ids[2]]
    assert (store.current(), store.previous()) == (ids[0], ids[1]) and _leftovers(store) == []
    if damage == "a folder":  # it cannot be replaced: said, and the order goes by the folders' times
        assert "cannot record the order of the releases" in caplog.text
    else:  # rewritten at the first change: the clock no longer matters
        _set_clock(store, [ids[3], ids[0], ids[1]])
        assert store.releases() == [ids[1], ids[0], ids[3]]


def test_leftovers_of_an_interrupted_install_are_swept(store, bundles):
    _, archive, bundle_id = bundles[0]
    store.install(archive)
    (store.staging_dir / "install-crashed" / "bundle").mkdir(parents=True)
    store.incoming_dir.mkdir()
    stale = store.incoming_dir / "abc.part"
    stale.write_bytes(b"half an upload")
    os.utime(stale, (0, 0))
    fresh = store.incoming_dir / "def.part"
    fresh.write_bytes(b"an upload in progress")
    store.prune(keep=3)
    assert list(store.staging_dir.iterdir()) == []
    assert not stale.exists() and fresh.exists()


def test_prune_clears_a_cut_off_ssh_upload_after_a_minute_and_a_serial_one_after_an_hour(store, bundles):
    """docs/deploy.md: a cut-off upload is removed by a later deploy once untouched for a minute; prune waited an
    hour, so a deploy of a bundle the device held left another bundle's half upload taking a small device's space.
    A serial upload resumes where it stopped, so it keeps the hour."""
    store.install(bundles[0][1])
    (store.incoming_dir / "serial").mkdir(parents=True)
    minutes_ago = os.path.getmtime(store.root) - 120
    cut_off = store.incoming_dir / f"{'a' * 64}.0a0b0c0d.part"
    serial = store.incoming_dir / "serial" / "upload.bin"
    for path in (cut_off, serial):
        path.write_bytes(b"half an upload")
        os.utime(path, (minutes_ago, minutes_ago))
    live = store.incoming_dir / f"{'b' * 64}.01020304.part"
    live.write_bytes(b"being written")
    store.prune(keep=3)
    assert not cut_off.exists() and serial.exists() and live.exists()


def test_a_current_that_is_a_directory_is_named_as_such(store, bundles, capsys):
    """A hand-made device whose `current` is a real folder: the switch failed as "the device's storage failed
    (.../.current.<pid>.<ns>.tmp): Is a directory; free some space", and status said nothing of it."""
    bundle_id = store.install(bundles[0][1])
    (store.root / "current").mkdir()
    for argv in (["activate", str(store.root), bundle_id], ["activate", str(store.root), "-"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"{store.root / 'current'} is a directory, not a link to a release" in err and "move it away" in err
        assert "storage failed" not in err
    assert main(["status", str(store.root)]) == 0
    assert json.loads(capsys.readouterr().out)["current_directory"] is True
    assert (store.root / "current").is_dir() and _leftovers(store) == []


def test_temporary_files_a_crash_left_in_the_root_are_swept(store, bundles):
    """A power cut while the note or a link was being written leaves its temporary name; no exception handler runs."""
    _, archive, bundle_id = bundles[0]
    store.activate(store.install(archive))
    (store.root / f"..unconfirmed.{os.getpid() + 1}.tmp").write_text('{"bundle": "')
    (store.root / f"..order.{os.getpid() + 1}.tmp").write_text(bundle_id[:10])
    os.symlink(f"releases/{bundle_id}", store.root / f".current.{os.getpid() + 1}.123.tmp")
    (store.root / ".notes.tmp").write_text("someone else's")  # not the store's: left alone
    store.prune(keep=3)
    assert [p.name for p in store.root.iterdir() if p.name.endswith(".tmp")] == [".notes.tmp"]
    assert store.current() == bundle_id


def test_signature_policy(store, bundles, tmp_path):
    require_module("nacl")
    from edge.signing import generate_keypair, sign_bundle_dir

    private, public = generate_keypair(tmp_path / "key")
    store.trusted_keys_dir.mkdir(parents=True)
    shutil.copy(public, store.trusted_keys_dir / "release.pub")

    unsigned_dir, unsigned_archive, _ = bundles[0]
    with pytest.raises(ReleaseError, match="signature policy: the bundle is not signed"):
        store.install(unsigned_archive)

    signed_dir = variant(unsigned_dir, tmp_path / "signed", 7)
    sign_bundle_dir(signed_dir, private)
    bundle_id = pack_bundle(signed_dir, tmp_path / "signed.tar.gz")
    assert store.install(tmp_path / "signed.tar.gz") == bundle_id

    tampered_dir = variant(unsigned_dir, tmp_path / "tampered", 8)
    sign_bundle_dir(tampered_dir, private)
    tamper_manifest(tampered_dir)
    pack_bundle(tampered_dir, tmp_path / "tampered.tar.gz")
    with pytest.raises(ReleaseError, match="changed after it was signed"):
        store.install(tmp_path / "tampered.tar.gz")
    assert store.releases() == [bundle_id]


def test_command_line_prints_json(store, bundles, capsys):
    _, archive, bundle_id = bundles[0]
    upload = store.root / "incoming" / "upload.part"
    upload.parent.mkdir(parents=True)
    shutil.copy(archive, upload)
    assert main(["install", str(store.root), str(upload), "--sha256", file_sha256(archive), "--remove-archive"]) == 0
    assert json.loads(capsys.readouterr().out) == {"bundle_id": bundle_id}
    assert not upload.exists()
    assert main(["activate", str(store.root), bundle_id]) == 0
    assert json.loads(capsys.readouterr().out) == {"previous": None}
    assert main(["status", str(store.root)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["current"], status["releases"]) == (bundle_id, [bundle_id])
    assert main(["rollback", str(store.root)]) == 1
    assert "no previous release" in capsys.readouterr().err


def test_command_line_runs_as_a_module(store):
    result = subprocess.run([sys.executable, "-m", "edge.releases", "status", str(store.root)], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["current"] is None


def _signing_store(store, tmp_path):
    """Make the store trust a new key; return the private key."""
    from edge.signing import generate_keypair

    private, public = generate_keypair(tmp_path / "key")
    store.trusted_keys_dir.mkdir(parents=True)
    shutil.copy(public, store.trusted_keys_dir / "release.pub")
    return private


def test_activate_and_rollback_refuse_releases_the_trust_policy_refuses(store, bundles, tmp_path, capsys):
    """Keys added after unsigned releases were installed: those releases can no longer become active, and the
    device stays on the bundle it runs."""
    require_module("nacl")
    from edge.signing import sign_bundle_dir

    ids = [store.install(archive) for _, archive, _ in bundles[:3]]
    store.activate(ids[0])
    store.activate(ids[1])  # previous = 0
    private = _signing_store(store, tmp_path)

    with pytest.raises(ReleaseError, match=f"cannot activate {ids[2][:12]}: .*not signed"):
        store.activate(ids[2])
    with pytest.raises(ReleaseError, match=f"cannot roll back to {ids[0][:12]}: .*not signed"):
        store.rollback()
    assert main(["activate", str(store.root), ids[0]]) == 1
    assert "signature policy" in capsys.readouterr().err
    assert (store.current(), store.previous()) == (ids[1], ids[0])  # checked before anything was switched
    assert _leftovers(store) == []

    # A signed copy of a release the device holds (same id: the signature is not in the manifest) brings its
    # signature along, and then it can be activated.
    signed = shutil.copytree(bundles[2][0], tmp_path / "signed2")
    sign_bundle_dir(signed, private)
    assert pack_bundle(signed, tmp_path / "signed2.tar.gz") == ids[2]
    assert store.install(tmp_path / "signed2.tar.gz") == ids[2]
    assert (store.path_of(ids[2]) / "signature.json").is_file()
    assert store.activate(ids[2]) == ids[1]
    assert store.current() == ids[2]

    # Undoing a switch that just failed (an explicit previous, as a deploy's switch-back passes) puts back the
    # bundle that ran a moment ago, signed or not: the device must not stay on the bundle that failed.
    store.activate(ids[1], previous=ids[0])
    assert (store.current(), store.previous()) == (ids[1], ids[0])
    store.activate(ids[2], previous=ids[1])

    (store.trusted_keys_dir / "bad.pub").write_text("garbage\n")  # a broken key file opens no door either
    with pytest.raises(ReleaseError, match="bad.pub is not a basilar-ed25519 key file"):
        store.activate(ids[1])
    assert (store.current(), store.previous()) == (ids[2], ids[1])


def test_a_trusted_keys_path_that_cannot_be_read_refuses_every_bundle(store, bundles):
    """Not a folder (or one this user may not list): never read as 'no keys', which would take unsigned bundles."""
    store.root.mkdir(parents=True, exist_ok=True)
    store.trusted_keys_dir.write_text("not a folder\n")
    with pytest.raises(ReleaseError, match="cannot read the trusted keys folder"):
        store.install(bundles[0][1])
    assert store.releases() == []


def test_status_shows_a_broken_key_file_as_such(store, bundles, tmp_path, capsys):
    require_module("nacl")
    from edge.signing import key_id, read_public_key

    _signing_store(store, tmp_path)
    good = key_id(read_public_key(store.trusted_keys_dir / "release.pub"))
    (store.trusted_keys_dir / "bad.pub").write_text("garbage\n")
    assert main(["status", str(store.root)]) == 0
    keys = json.loads(capsys.readouterr().out)["trusted_keys"]
    assert keys[0] == good and len(keys) == 2
    assert keys[1].startswith("error: ") and "bad.pub is not a basilar-ed25519 key file" in keys[1]


def test_basilar_status_names_a_broken_key_file_and_counts_only_keys(monkeypatch):
    from click.testing import CliRunner

    import firmware_tools.fleet
    from firmware_tools.cli import main as cli
    from firmware_tools.deploy_ssh import DeviceStatus
    from firmware_tools.targets import parse_target

    target = parse_target("ssh://pi@10.0.0.21/opt/basilar")
    answers = {
        "broken": ["0123456789abcdef", "error: /opt/basilar/trusted_keys/bad.pub is not a basilar-ed25519 key file"],
        "only broken": ["error: /opt/basilar/trusted_keys/bad.pub is not a basilar-ed25519 key file"],
        "fine": ["0123456789abcdef"],
    }
    for case, keys in answers.items():
        monkeypatch.setattr(firmware_tools.fleet, "status_fleet", lambda targets, options, parallel, keys=keys: [
            DeviceStatus(target, True, "a" * 64, None, ["a" * 64], keys, "active")])
        result = CliRunner().invoke(cli, ["status", "ssh://pi@10.0.0.21/opt/basilar"])
        assert result.exit_code == 0, result.output
        if case == "fine":
            assert "signed only (1 key(s))" in result.output and "broken" not in result.output
        else:
            assert "broken key file: /opt/basilar/trusted_keys/bad.pub" in result.output, result.output
            assert "refuses every bundle" in result.output
            assert ("signed only (1 key(s))" in result.output) == (case == "broken")


def test_a_manifest_changed_on_the_device_is_mended_by_installing_again_and_never_run(store, bundles, capsys):
    """The manifest itself is part of what was deployed: one bit of it changed on the device's storage (a
    threshold, say) kept every file's hash right, so nothing noticed, and the bundle ran with it."""
    from click.testing import CliRunner

    from firmware_tools.cli import main as cli

    _, archive, bundle_id = bundles[0]
    store.activate(store.install(archive))
    manifest = store.path_of(bundle_id) / "manifest.json"
    good = manifest.read_bytes()
    changed = json.loads(good)
    changed["detector"]["threshold"] = 0.12  # every file it lists still matches its hash
    manifest.write_text(json.dumps(changed, indent=2))
    assert "no longer hashes to its id" in store.damage(bundle_id)
    run = CliRunner().invoke(cli, ["run", "--root", str(store.root), "demo"])
    assert run.exit_code == 1 and f"the active bundle {bundle_id[:12]}" in run.output and "damaged" in run.output
    assert store.install(archive) == bundle_id and manifest.read_bytes() == good and store.damage(bundle_id) is None


def test_a_damaged_release_is_not_made_current_by_activate_or_rollback(store, bundles):
    (_, first, id1), (_, second, id2) = bundles[0], bundles[1]
    for archive in (first, second):
        store.activate(store.install(archive))
    model = next(p for p in store.path_of(id1).iterdir() if p.suffix == ".tflite")
    model.write_bytes(model.read_bytes()[:1000])
    for change in (store.rollback, lambda: store.activate(id1)):
        with pytest.raises(ReleaseError, match=f"{id1[:12]}: the release is damaged .*install it again"):
            change()
        assert store.current() == id2 and store.previous() == id1
    store.activate(id1, previous=id2)  # the undo of a failed switch still puts back what ran


def test_rollback_reads_previous_under_the_store_lock(store, bundles, monkeypatch):
    """An activation racing a rollback must not change `previous` between the rollback reading it and using it."""
    import fcntl

    for _, archive, _ in bundles[:2]:
        store.activate(store.install(archive))
    read = store.previous
    held = []

    def previous_seen_locked():
        fd = os.open(store.root / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return read()

    monkeypatch.setattr(store, "previous", previous_seen_locked)
    store.rollback()
    assert held and held[0] is True


def test_storage_errors_are_clear_and_leave_no_stray_link(store, bundles, capsys, monkeypatch):
    _, archive, bundle_id = bundles[0]
    store.install(archive)

    def failing_rename(source, _destination):  # a failing disk (a folder where `current` goes has its own message)
        raise OSError(errno.EIO, "Input/output error", str(source))

    monkeypatch.setattr(os, "replace", failing_rename)
    assert main(["activate", str(store.root), bundle_id]) == 1
    err = capsys.readouterr().err
    assert "error: the device's storage failed" in err and "Traceback" not in err
    assert [p for p in store.root.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------ a real full disk


@contextlib.contextmanager
def small_disk(where: Path, options: str):
    """A real, small filesystem mounted at `where` (a tmpfs with `options`: size=256k, nr_inodes=64) for a test to
    fill up. Mounting needs root, which CI is: there it always runs."""
    require(os.geteuid() == 0, "root, to mount a small tmpfs that a test fills up")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run([require_program("mount"), "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run([require_program("umount"), str(where)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Take the free space of `disk` but `leave` bytes (rounded up to whole blocks)."""
    usage = os.statvfs(disk)
    block = usage.f_frsize
    size = usage.f_bavail * block - -(-leave // block) * block
    with open(disk / "filler", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, size)
    assert os.statvfs(disk).f_bavail * block == -(-leave // block) * block


def fill_inodes(disk: Path, leave: int = 0) -> None:
    """Take the free inodes of `disk` (what each new file, folder or symlink needs) but `leave`."""
    folder = disk / "inodes"
    folder.mkdir()
    made = []
    with contextlib.suppress(OSError):
        while True:
            made.append(folder / str(len(made)))
            made[-1].touch()
    made.pop()  # the one that did not fit
    for path in made[:leave]:
        path.unlink()
    assert os.statvfs(disk).f_ffree == leave


def _first_switch_on(tmp_path, bundles):
    """A device on its first bundle (no previous yet) with a second one installed, on a disk of 64 inodes."""
    store = ReleaseStore(tmp_path / "disk" / "device")
    first, second = (store.install(archive) for _, archive, _ in bundles[:2])
    store.activate(first)
    return store, first, second


def test_a_switch_the_disk_has_no_room_for_changes_no_link(tmp_path, bundles):
    """Making a symlink needs an inode (or a block), renaming it over the old link does not: with room for one new
    link only, the switch used to set previous and then fail on current, leaving previous == current."""
    with small_disk(tmp_path / "disk", "nr_inodes=64"):
        store, first, second = _first_switch_on(tmp_path, bundles)
        fill_inodes(tmp_path / "disk", leave=1)
        with pytest.raises(OSError) as failure:
            store.activate(second)
        assert failure.value.errno == errno.ENOSPC
        assert (store.current(), store.previous()) == (first, None)  # nothing switched, not half of it
        assert _leftovers(store) == []
        with pytest.raises(ReleaseError, match="no previous release"):
            store.rollback()


def test_a_link_that_does_not_fit_is_named_not_its_target(tmp_path, bundles, capsys):
    with small_disk(tmp_path / "disk", "nr_inodes=64"):
        store, _, second = _first_switch_on(tmp_path, bundles)
        fill_inodes(tmp_path / "disk", leave=1)
        assert main(["activate", str(store.root), second]) == 1
        err = capsys.readouterr().err
        assert f"storage failed ({store.root / 'current'}): No space left on device" in err, err
        assert "releases/" not in err


def test_rollback_refuses_when_previous_is_current(store, bundles, capsys):
    """A switch cut between its two renames (power lost) leaves previous pointing where current does: a rollback
    then changed nothing and said it succeeded."""
    first, second = (store.install(archive) for _, archive, _ in bundles[:2])
    store.activate(first)
    store.activate(second)
    (store.root / "previous").unlink()  # the cut switch: previous renamed to the bundle current still names
    os.symlink(f"releases/{second}", store.root / "previous")
    with pytest.raises(ReleaseError, match=f"previous and current both point at {second[:12]} .* nothing to roll "
                                           f"back to; activate the release you want instead"):
        store.rollback()
    assert main(["rollback", str(store.root)]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert (store.current(), store.previous()) == (second, second)


@pytest.mark.parametrize("full", ["size=256k", "nr_inodes=64"])
def test_a_note_the_full_disk_cannot_take_leaves_no_temporary_file(tmp_path, bundles, capsys, full):
    """Writing .unconfirmed on a full disk (no block, no inode left) fails: its temporary file must not stay behind,
    and the error names the file that could not be written (not its temporary name)."""
    with small_disk(tmp_path / "disk", full):
        store, first, second = _first_switch_on(tmp_path, bundles)
        (fill if full.startswith("size") else fill_inodes)(tmp_path / "disk")
        assert main(["activate", str(store.root), second, "--unconfirmed"]) == 1
        err = capsys.readouterr().err
        assert f"storage failed ({store.root / '.unconfirmed'}): No space left on device" in err, err
        assert [p.name for p in store.root.iterdir() if "unconfirmed" in p.name] == []
        assert (store.current(), store.previous()) == (first, None)


def test_prune_frees_a_disk_that_has_no_inode_left(tmp_path, bundles):
    """Pruning is how a full disk is freed: it must not need a new folder (an inode, a block) to do it."""
    with small_disk(tmp_path / "disk", "nr_inodes=64"):
        store = ReleaseStore(tmp_path / "disk" / "device")
        ids = [store.install(archive) for _, archive, _ in bundles[:3]]
        store.activate(ids[1])
        store.activate(ids[2])
        fill_inodes(tmp_path / "disk")
        assert store.prune(keep=1) == [ids[0]]
        assert sorted(store.releases()) == sorted(ids[1:]) and _leftovers(store) == []
        assert os.statvfs(tmp_path / "disk").f_ffree > 0


@pytest.mark.parametrize("args, message", [
    (["activate", "{root}", "cab208"], "argument bundle_id: 'cab208' is not a bundle id"),  # a 12-digit display id
    (["activate", "{root}", "-", "--previous", "abc"], "argument --previous: 'abc' is not a bundle id"),
    (["confirm", "{root}", "abc"], "argument bundle_id: 'abc' is not a bundle id"),
    (["abandon", "{root}", "no such id"], "'no such id' is not a switch id"),
])
def test_the_command_line_refuses_a_bad_id_as_a_usage_error_not_a_traceback(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(root=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_a_root_that_is_a_file_is_said_to_be_one_not_a_storage_failure(tmp_path, capsys):
    (tmp_path / "root").write_text("")
    assert main(["install", str(tmp_path / "root"), str(tmp_path / "b.tar.gz")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_store_operation_that_waits_for_the_lock_says_so(tmp_path, capfd):
    """Behind a holder that hangs (an agent stuck on its port), every install or switch over SSH waited without a
    word."""
    store = ReleaseStore(tmp_path / "root")
    store.root.mkdir()
    holder = os.open(store.root / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    waiter = threading.Thread(target=store.prune, kwargs={"keep": 3})
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # it waits: the holder may be busy, not stuck
    os.close(holder)
    waiter.join(10)
    assert not waiter.is_alive() and "waiting for" in capfd.readouterr().err


def test_an_upload_being_installed_is_claimed_before_the_wait_for_the_lock(tmp_path, bundles):
    """Another deploy clears a `.part` untouched for a minute; an install may wait longer than that for the lock,
    and its upload must still be there when it gets it."""
    from edge.releases import PART_MAX_AGE_S

    archive = bundles[0][1]
    store = ReleaseStore(tmp_path / "root")
    store.incoming_dir.mkdir(parents=True)
    part = store.incoming_dir / "upload.0a0b.part"
    shutil.copy(archive, part)
    holder = os.open(store.root / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    done = []
    installer = threading.Thread(target=lambda: done.append(main(["install", str(store.root), str(part),
                                                                 "--remove-archive"])))
    installer.start()
    time.sleep(0.5)
    stale = time.time() - PART_MAX_AGE_S - 60
    for entry in store.incoming_dir.iterdir():  # as old as a cut-off upload: another deploy would clear a .part
        os.utime(entry, (stale, stale))
    assert not part.exists() and [p.name for p in store.incoming_dir.iterdir()] == ["upload.0a0b.installing"]
    os.close(holder)
    installer.join(30)
    assert done == [0] and list(store.incoming_dir.iterdir()) == [] and len(store.releases()) == 1


def test_calling_a_switch_off_behind_a_stuck_lock_holder_does_not_wait_for_it(tmp_path, bundles):
    """The holder may be what made the switch time out: calling it off must not wait behind it too, and the
    activate waiting there must still refuse once it gets the lock."""
    store = ReleaseStore(tmp_path / "root")
    bundle_id = store.install(bundles[0][1])
    holder = os.open(store.root / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    started = time.monotonic()
    store.abandon("0a0b0c")
    assert time.monotonic() - started < 3
    os.close(holder)
    with pytest.raises(ReleaseError, match="switch 0a0b0c was abandoned"):
        store.activate(bundle_id, switch_id="0a0b0c")
    assert store.current() is None


def test_prune_spares_what_an_unconfirmed_note_switches_back_to(store, bundles, capsys):
    """Two deploys cut off before their health checks: the note says to switch back to the last checked bundle (and
    its previous); `prune --keep 1`, suggested for a full disk, removed both, and the switch-back then failed."""
    ids = [store.install(archive) for _, archive, _ in bundles]
    store.activate(ids[0])
    store.activate(ids[1])
    store.activate(ids[2], unconfirmed=True)
    store.activate(ids[3], unconfirmed=True)
    assert main(["prune", str(store.root), "--keep", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": []}
    assert sorted(store.releases()) == sorted(ids)
    assert store.unconfirmed() == {"bundle": ids[3], "current": ids[1], "previous": ids[0]}
    store.activate(ids[1], previous=ids[0])  # the deploy's switch back still works
    assert sorted(store.prune(keep=1)) == sorted(ids[2:])  # no note now: current and previous stay


def test_activate_refuses_a_previous_that_is_not_installed(store, bundles, capsys):
    first, second = (store.install(archive) for _, archive, _ in bundles[:2])
    store.activate(first)
    store.activate(second)
    missing = "b" * 64
    for args in (["activate", str(store.root), first, "--previous", missing],
                 ["activate", str(store.root), "-", "--previous", missing]):
        assert main(args) == 1
        assert f"the previous bundle {missing} is not installed" in capsys.readouterr().err
    assert (store.current(), store.previous()) == (second, first)  # nothing changed
    assert os.readlink(store.root / "previous") == f"releases/{first}"
    assert main(["activate", str(store.root), first, "--previous", "-"]) == 0  # none is fine
    assert (store.current(), store.previous()) == (first, None)


def test_removing_current_honours_the_switch_id_and_refuses_unconfirmed(store, bundles, capsys):
    bundle_id = store.install(bundles[0][1])
    store.activate(bundle_id)
    assert main(["abandon", str(store.root), "abc"]) == 0
    assert main(["activate", str(store.root), "-", "--switch-id", "abc"]) == 1
    assert "switch abc was abandoned" in capsys.readouterr().err
    assert store.current() == bundle_id
    with pytest.raises(SystemExit) as exit_info:
        main(["activate", str(store.root), "-", "--unconfirmed"])
    assert exit_info.value.code == 2 and "--unconfirmed needs a bundle" in capsys.readouterr().err
    assert store.current() == bundle_id
    assert main(["activate", str(store.root), "-", "--switch-id", "def"]) == 0  # another switch: goes on
    assert store.current() is None


def test_a_releases_path_that_is_a_file_is_said_to_be_one(store, bundles, capsys):
    store.root.mkdir()
    store.releases_dir.write_text("")
    assert main(["install", str(store.root), str(bundles[0][1])]) == 1
    err = capsys.readouterr().err
    assert f"{store.releases_dir} is not a folder" in err and "move it away" in err and "storage failed" not in err
    assert store.releases_dir.is_file()


def test_an_upload_claimed_by_an_install_that_was_killed_is_cleared_and_a_waiting_ones_is_not(tmp_path, bundles):
    """An install killed (or its power cut) after claiming its upload left `.installing` for an hour: on a nearly
    full device every retried deploy's install then failed for want of the space it held."""
    store = ReleaseStore(tmp_path / "root")
    store.install(bundles[0][1])
    holder = os.open(store.root / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the installs claim their uploads, then wait here
    installs, claims = [], []
    store.incoming_dir.mkdir()
    for name in ("killed", "waiting"):
        part = store.incoming_dir / f"{name}.part"
        shutil.copy(bundles[1][1], part)
        installs.append(subprocess.Popen([sys.executable, "-m", "edge.releases", "install", str(store.root), str(part),
                                          "--remove-archive"], cwd=REPO, stderr=subprocess.PIPE, text=True))
        claims.append(part.with_suffix(".installing"))
    deadline = time.monotonic() + 30
    while not all(claim.exists() for claim in claims) and time.monotonic() < deadline:
        time.sleep(0.05)
    installs[0].kill()
    installs[0].wait(10)
    os.close(holder)  # the waiting install takes the lock, and clears the killed one's claim before it installs
    assert installs[1].wait(30) == 0, installs[1].stderr.read()
    assert list(store.incoming_dir.iterdir()) == [] and len(store.releases()) == 2
    # A claim left with no install alive, as after a power cut: prune clears it at once, not after an hour
    shutil.copy(bundles[1][1], claims[0])
    assert store.prune(keep=3) == [] and not claims[0].exists()
