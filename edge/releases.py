"""The device's release store: installed bundles and the one that is active.

Layout under the device root:

    releases/<bundle-id>/   one complete, verified bundle each (the id is the SHA-256 of its manifest.json)
    current -> releases/<id>   the active bundle; `basilar run` loads it
    previous -> releases/<id>  the one active before, for rollback
    incoming/               uploads in progress (temporary names)
    .staging/               archives being extracted and checked
    trusted_keys/*.pub      when present, only bundles signed by one of these keys are installed
    .abandoned              ids of switches whose deploy lost their answer: an activate with one of them refuses
    .order                  the release ids, oldest first, in the order they were installed or last activated
    .unconfirmed            while a deploy has switched current and not yet seen its health check pass: the bundle
                            it switched to and what to switch back to (a deploy cut off in between is finished by
                            the next one: it restarts and checks that bundle, or switches back)

Why it is safe to interrupt: a release appears under releases/ only by renaming a fully extracted, synced and
checked directory, and `current` changes only by renaming a new symlink over the old one. A crash at any moment
leaves `current` pointing at a complete bundle (or absent, before the first activation); leftovers in incoming/
and .staging/ are swept by later installs and prunes. Mutating operations hold an exclusive lock on `<root>/.lock`,
so the SSH and serial paths cannot interleave.

Also a small command line for deploy tools driving a device over SSH: `python3 -m edge.releases --help`.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edge.bundle import file_sha256

log = logging.getLogger(__name__)
_ID = re.compile(r"^[0-9a-f]{64}$")
_KEEP = object()  # "leave the previous link as activate() would set it"
INCOMING_MAX_AGE_S = 3600  # a serial upload untouched this long was abandoned (it resumes until then)
PART_MAX_AGE_S = 60  # an SSH upload (incoming/*.part) is written every moment: untouched this long, it was cut off
UNCONFIRMED = ".unconfirmed"
ABANDONED = ".abandoned"  # ids of switches whose deploy lost their answer: they must not happen any more
ORDER = ".order"  # the releases' order: not their folders' mtimes, which a Pi without a clock (or a copy) gets wrong
ABANDON_WAIT_S = 0.5  # how long calling a switch off waits for the lock (a switch holds it for milliseconds)


class ReleaseError(Exception):
    """A release operation was refused; the message says why and what to do."""


def _check_id(bundle_id: str) -> str:
    if not isinstance(bundle_id, str) or not _ID.match(bundle_id):
        raise ReleaseError(f"{bundle_id!r} is not a bundle id (64 lowercase hex digits: the SHA-256 of manifest.json)")
    return bundle_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _damage(release: Path) -> str | None:
    """What is wrong with an installed release (its manifest no longer hashing to its id, the folder's name; a
    file not matching the manifest's SHA-256 or not readable), or None when it is whole."""
    from edge import bundle as bundles

    try:
        if file_sha256(release / bundles.MANIFEST) != release.name:
            return "its manifest.json no longer hashes to its id"
        bundles.check_manifest(release, bundles.read_manifest(release))
    except bundles.BundleError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read {exc.filename or release}: {exc.strerror or exc}"
    return None


def _replace_file(source: Path, folder: Path) -> None:
    """Put a copy of `source` in `folder` under its name, atomically and durably."""
    _write_durably(folder / source.name, source.read_bytes())


def _write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably: a temporary name, fsync, rename, fsync of the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a full or failing disk: leave no half-written stray behind
            tmp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp)):  # name the file written, not its stand-in
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    _fsync_dir(path.parent)


def _fsync_tree(path: Path) -> None:
    """Flush every file and folder under path, so a rename that publishes them never outruns their contents."""
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


class ReleaseStore:
    def __init__(self, root: str | Path, trusted_keys_dir: str | Path | None = None):
        self.root = Path(root)
        self.releases_dir = self.root / "releases"
        self.incoming_dir = self.root / "incoming"
        self.staging_dir = self.root / ".staging"
        self.trusted_keys_dir = Path(trusted_keys_dir) if trusted_keys_dir else self.root / "trusted_keys"
        self._current_link = self.root / "current"
        self._previous_link = self.root / "previous"
        self._unconfirmed_file = self.root / UNCONFIRMED
        self._abandoned_file = self.root / ABANDONED
        self._order_file = self.root / ORDER

    # --- reading -------------------------------------------------------------------------------------------------

    def _linked_id(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        if _ID.match(name) and (self.releases_dir / name).is_dir():
            return name
        return None

    def current(self) -> str | None:
        """The id of the active bundle, or None before the first activation."""
        return self._linked_id(self._current_link)

    def current_path(self) -> Path | None:
        """The directory of the active bundle, resolved (so a switch while it is being loaded cannot mix two
        bundles), or None."""
        bundle_id = self.current()
        return self.releases_dir.resolve() / bundle_id if bundle_id else None

    def previous(self) -> str | None:
        return self._linked_id(self._previous_link)

    def unconfirmed(self) -> dict | None:
        """When the active bundle was switched to by a deploy that never saw its health check pass:
        {"bundle": its id, "current": the id to switch back to, "previous": what previous was then}; else None."""
        try:
            note = json.loads(self._unconfirmed_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(note, dict) or note.get("bundle") is None or note.get("bundle") != self.current():
            return None  # the note is about a bundle that is no longer active
        return note

    def releases(self) -> list[str]:
        """Installed bundle ids, oldest first (by the time each was installed or last activated): as .order lists
        them, after those it does not list (installed before it existed), which go by their folders' mtimes."""
        if not self.releases_dir.is_dir():
            return []
        found = {}
        for entry in os.scandir(self.releases_dir):
            if _ID.match(entry.name) and entry.is_dir(follow_symlinks=False):
                found[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
        recorded = [bundle_id for bundle_id in self._recorded_order() if bundle_id in found]
        for bundle_id in recorded:
            del found[bundle_id]
        unlisted = sorted(found, key=lambda bundle_id: (found[bundle_id], bundle_id))
        return unlisted + recorded

    def _recorded_order(self) -> list[str]:
        """The ids .order lists, oldest first; none where it is missing (a store from before it) or damaged."""
        try:
            ids = self._order_file.read_text(encoding="ascii").split()
        except (OSError, ValueError):
            return []
        if len(set(ids)) != len(ids) or not all(_ID.match(bundle_id) for bundle_id in ids):
            return []  # not what _mark_recent writes: trust none of it
        return ids

    def has(self, bundle_id: str) -> bool:
        return bool(_ID.match(bundle_id or "")) and (self.releases_dir / bundle_id).is_dir()

    def path_of(self, bundle_id: str) -> Path:
        return self.releases_dir / _check_id(bundle_id)

    def damage(self, bundle_id: str) -> str | None:
        """What is wrong with an installed release (see _damage), or None when it is whole."""
        return _damage(self.path_of(bundle_id))

    # --- changing ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, give_up_after: float | None = None, create: bool = False):
        """Hold the store's lock; given give_up_after (seconds), go on without it once they pass (yields whether
        it is held). Only an install (`create`) makes the root: a rollback on a mistyped one made it, then said
        there was nothing to roll back to."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise ReleaseError(f"there is no device root at {self.root} (no such folder); check the path (the first "
                               "install makes it)")
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            yield self._take_lock(fd, give_up_after)
        finally:
            os.close(fd)  # closing releases the lock

    def _take_lock(self, fd: int, give_up_after: float | None) -> bool:
        """Whether the lock was taken: always, after saying so if it must wait (a wait behind a stuck holder is no
        silent hang), unless give_up_after seconds pass first."""
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is None:
                    print(f"waiting for {self.root / '.lock'}: another basilar operation on this device root holds "
                          "it", file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def install(self, archive_path: str | Path, expected_sha256: str | None = None) -> str:
        """Verify, extract and check a bundle archive, and add it under releases/; return its bundle id.

        Never touches `current`. Installing a bundle that is already there only refreshes its age.
        """
        from edge import bundle as bundles  # imported here: reading the store must not need the bundle loader

        archive_path = Path(archive_path)
        with self._locked(create=True):
            try:
                actual = file_sha256(archive_path)
            except OSError as exc:
                raise ReleaseError(f"cannot read the archive {archive_path}: {exc.strerror or exc}") from None
            if expected_sha256 is not None and actual != expected_sha256.lower():
                raise ReleaseError(f"the archive's SHA-256 is {actual}, expected {expected_sha256.lower()}: the "
                                   "upload is corrupted or incomplete; deploy again")
            self._sweep_staging()
            self._sweep_abandoned_claims()  # an install killed before now: on a full device, room for this one
            if self.releases_dir.exists() and not self.releases_dir.is_dir():  # else "storage failed: File exists"
                raise ReleaseError(f"{self.releases_dir} is not a folder (made by hand?): move it away (the store "
                                   "keeps its releases in that folder), then try again")
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            self.releases_dir.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix="install-", dir=self.staging_dir))
            try:
                unpacked = stage / "bundle"
                try:
                    bundles.extract_archive(archive_path, unpacked)
                except bundles.BundleError as exc:
                    raise ReleaseError(f"the bundle is invalid: {exc}") from None
                # The signature first: an untrusted model file is never handed to the interpreter.
                self._check_signature(unpacked)
                try:
                    bundle_id = bundles.bundle_id(unpacked)
                    bundles.load_bundle(unpacked)
                except bundles.BundleError as exc:
                    raise ReleaseError(f"the bundle is invalid: {exc}") from None
                release = self.releases_dir / bundle_id
                if release.is_dir():
                    # Same manifest, so the same bundle; but a signed copy of a release installed unsigned (before
                    # the device trusted keys) must bring its signature along, or activate() keeps refusing it.
                    self._refresh_signature(unpacked, release)
                    self._repair(unpacked, release)
                    self._mark_recent(bundle_id)
                    return bundle_id
                _fsync_tree(unpacked)
                os.rename(unpacked, release)
                _fsync_dir(self.releases_dir)
                self._mark_recent(bundle_id)
                return bundle_id
            finally:
                shutil.rmtree(stage, ignore_errors=True)

    def _mark_recent(self, bundle_id: str) -> None:
        """Make a release the most recent one (called with the lock held): last in .order, and its folder's mtime
        now, which the order falls back on where .order is missing or damaged."""
        os.utime(self.releases_dir / bundle_id)
        order = [other for other in self.releases() if other != bundle_id] + [bundle_id]
        try:
            _write_durably(self._order_file, "".join(f"{i}\n" for i in order).encode())
        except OSError as exc:
            # The release is installed or active already, which a record that cannot be written (a full disk) must
            # not undo or fail; without it the order goes by the mtimes just set, until the next change writes it.
            log.warning("cannot record the order of the releases in %s (%s); they are ordered by their folders' "
                        "times until the next install or activation", self._order_file, exc.strerror or exc)
            with contextlib.suppress(OSError):
                self._order_file.unlink()

    def _check_signature(self, bundle_dir: Path) -> None:
        from edge.signing import SignatureError, check_bundle_signature

        try:
            check_bundle_signature(bundle_dir, self.trusted_keys_dir)
        except SignatureError as exc:
            raise ReleaseError(f"refused by the device's signature policy: {exc}") from None

    @staticmethod
    def _repair(unpacked: Path, release: Path) -> None:
        """A release damaged on the device's storage (its manifest no longer hashes to its id, a file no longer
        matches its SHA-256, or cannot be read) is mended from the checked copy being installed: file by file, each
        an atomic replace by identical good bytes, so the release (current, maybe) is never less complete."""
        problem = _damage(release)
        if problem is None:
            return
        log.warning("release %s is damaged (%s); mending it from the copy being installed", release.name, problem)
        for source in sorted(unpacked.iterdir()):
            _replace_file(source, release)

    @staticmethod
    def _refresh_signature(unpacked: Path, release: Path) -> None:
        """Give an installed release the signature of a newly installed copy (already checked) when it differs."""
        from edge.signing import SIGNATURE_FILE

        new, old = unpacked / SIGNATURE_FILE, release / SIGNATURE_FILE
        if new.is_file() and not (old.is_file() and old.read_bytes() == new.read_bytes()):
            _replace_file(new, release)  # signature.json is not in the manifest: the release stays the same bundle

    def signer(self, bundle_id: str) -> str | None:
        """The id of the key that signed a release, or None (unsigned, or a signature that cannot be read)."""
        from edge.signing import SIGNATURE_FILE, SignatureError, key_id, read_signature

        signature = self.path_of(bundle_id) / SIGNATURE_FILE
        try:
            return key_id(read_signature(signature)[0]) if signature.is_file() else None
        except (SignatureError, OSError):
            return None

    def _refusal(self, release: Path, exc: ReleaseError) -> str:
        """Why a release may not become active; for one installed before the keys, what to do about it (short
        enough for a deploy's one-line summary, which keeps only the end of a long message)."""
        from edge.signing import SIGNATURE_FILE

        why = str(exc)
        if (release / SIGNATURE_FILE).is_file() or "not signed" not in why:
            return why
        return (f"refused by the device's signature policy: it is not signed (installed before the device trusted "
                f"the keys in {self.trusted_keys_dir}); install a signed copy on the device first: python3 -m "
                f"edge.releases install {self.root} SIGNED.tar.gz")

    def _switch(self, *changes: tuple[Path, str | None]) -> None:
        """Point each link at a release, or remove it, in order, each atomically: a new symlink renamed over the
        old one. All the new symlinks are made before any is renamed: making one needs space, renaming it does not,
        so a full disk fails the switch before any link changed (not between two, leaving previous == current)."""
        for link, _ in changes:  # else the rename fails as a storage error naming a temporary file
            if link.is_dir() and not link.is_symlink():
                raise ReleaseError(f"{link} is a directory, not a link to a release (made by hand?): move it away "
                                   "(it is no release this store manages), then try again")
        made = {}
        try:
            for link, bundle_id in changes:
                if bundle_id is not None:
                    tmp = self.root / f".{link.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
                    try:
                        os.symlink(f"releases/{bundle_id}", tmp)
                    except OSError as exc:  # it names the target (releases/<id>) as the file: name the link
                        raise OSError(exc.errno, exc.strerror, str(link)) from None
                    made[link] = tmp
            for link, bundle_id in changes:
                if bundle_id is None:
                    with contextlib.suppress(FileNotFoundError):
                        link.unlink()
                else:
                    os.replace(made[link], link)
                    del made[link]
        finally:
            for tmp in made.values():  # not renamed (a full disk, a folder where a link goes): no stray link left
                with contextlib.suppress(OSError):
                    tmp.unlink()
        _fsync_dir(self.root)

    def activate(self, bundle_id: str, *, previous=_KEEP, unconfirmed: bool = False,
                 switch_id: str | None = None) -> str | None:
        """Make an installed bundle the active one; return the id that was active before (None if none).

        `previous` defaults to the bundle active before; deploy tools restoring a failed switch pass the old
        value so that a later rollback goes where the user expects. `unconfirmed`: a deploy that will restart and
        health-check the bundle next leaves a note of it (and of what ran before) until confirm(); any other
        change of `current` drops the note. `switch_id`: refused once abandon() was told it.
        """
        _check_id(bundle_id)
        with self._locked():
            self._check_not_abandoned(switch_id)
            return self._activate_locked(bundle_id, previous, "activate", unconfirmed)

    def _check_not_abandoned(self, switch_id: str | None) -> None:
        if switch_id is not None and switch_id in self._abandoned():
            raise ReleaseError(f"switch {switch_id} was abandoned by its deploy (which lost its answer); "
                               "nothing changed")

    def _abandoned(self) -> list[str]:
        try:
            return self._abandoned_file.read_text().split()
        except FileNotFoundError:
            return []

    def abandon(self, switch_id: str, wait_s: float = ABANDON_WAIT_S) -> None:
        """A deploy lost the answer of its switch (the link dropped, or it timed out): that activate, if it is still
        starting or waiting for the lock, must not switch behind the deploy's back after it read the device's state.
        Under the lock where it comes within wait_s, which orders the two (it switched before, or it never will);
        else without it: a holder that long is no activate mid-switch (that takes milliseconds) but one stuck, and
        an activate waiting behind it reads the note once it has the lock."""
        with self._locked(give_up_after=wait_s):
            kept = self._abandoned()[-99:]  # a bounded list: a switch is abandoned within minutes
            _write_durably(self._abandoned_file, "".join(f"{i}\n" for i in (*kept, switch_id)).encode())

    def confirm(self, bundle_id: str) -> bool:
        """The bundle a deploy switched to passed its health check: drop the note; False if there was none."""
        with self._locked():
            note = self.unconfirmed()
            if note is None or note["bundle"] != bundle_id:
                return False
            self._unconfirmed_file.unlink()
            _fsync_dir(self.root)
            return True

    def _note_unconfirmed(self, note: dict | None) -> None:
        """Write (atomically and durably, before current changes) or drop the unconfirmed-switch note."""
        if note is None:
            with contextlib.suppress(FileNotFoundError):
                self._unconfirmed_file.unlink()
                _fsync_dir(self.root)
            return
        _write_durably(self._unconfirmed_file, json.dumps(note).encode())

    def _check_previous(self, previous) -> None:
        """Refuse an explicit `previous` that is not installed: the link would point at nothing. (One equal to the
        bundle made current is let through: undoing a switch that a power cut left half done may need it.)"""
        if previous is _KEEP or previous is None:
            return
        if not self.has(_check_id(previous)):
            raise ReleaseError(f"the previous bundle {previous} is not installed under {self.releases_dir}; install "
                               "it first, or give --previous - (none); nothing changed")

    def _activate_locked(self, bundle_id: str, previous, doing: str, unconfirmed: bool) -> str | None:
        if not self.has(bundle_id):
            raise ReleaseError(f"bundle {bundle_id} is not installed under {self.releases_dir}; install it first")
        self._check_previous(previous)
        # The trust policy decides what runs, not only what is installed: a release kept from before the device
        # trusted keys must not become active again; nor may a release damaged on the device's storage, which
        # could not start. An explicit `previous` marks the undo of a switch that just failed (a deploy's
        # switch-back, a refused serial upload): it puts back the bundle that ran a moment ago, which neither
        # check blocks, or a device could be left on a bundle that fails. Checked before either link changes, so
        # a refusal leaves current (and previous) as they were.
        release = self.releases_dir / bundle_id
        if previous is _KEEP:
            try:
                self._check_signature(release)
            except ReleaseError as exc:
                raise ReleaseError(f"cannot {doing} {bundle_id[:12]}: {self._refusal(release, exc)}") from None
            problem = _damage(release)
            if problem is not None:
                raise ReleaseError(f"cannot {doing} {bundle_id[:12]}: the release is damaged ({problem}); install "
                                   f"it again (python3 -m edge.releases install {self.root} ARCHIVE mends it)")
        old = self.current()
        # Going back must reach what last passed a check: switching away from a bundle that never did (a deploy
        # of it was cut off) carries its note's bundles forward, not the unchecked one.
        checked = self.unconfirmed() or {"current": old, "previous": self.previous()}
        # Written before current changes, so a deploy cut off at any point after the switch leaves the note.
        self._note_unconfirmed({"bundle": bundle_id, "current": checked["current"], "previous": checked["previous"]}
                               if unconfirmed else None)
        changes = []
        if previous is _KEEP:
            if old is not None and old != bundle_id:
                changes.append((self._previous_link, old))
        else:
            changes.append((self._previous_link, previous and _check_id(previous)))
        if old != bundle_id:
            changes.append((self._current_link, bundle_id))
        if changes:
            self._switch(*changes)
        self._mark_recent(bundle_id)
        return old

    def deactivate(self, *, previous=_KEEP, switch_id: str | None = None) -> str | None:
        """Remove `current` (used only to undo a failed first deployment); return the id that was active.
        `switch_id`: refused once abandon() was told it, as activate() is."""
        with self._locked():
            self._check_not_abandoned(switch_id)
            self._check_previous(previous)
            old = self.current()
            self._note_unconfirmed(None)
            changes = [] if previous is _KEEP else [(self._previous_link, previous)]
            self._switch(*changes, (self._current_link, None))
            return old

    def rollback(self) -> str:
        """Switch back to the previous bundle (the one it replaces becomes `previous`); return the new current id."""
        with self._locked():  # `previous` read under the lock: an activation racing this one cannot change it between
            target = self.previous()
            if target is None:
                raise ReleaseError(f"no previous release under {self.root} to roll back to")
            if target == self.current():  # a switch cut short (power, a full disk) between its two links
                raise ReleaseError(f"previous and current both point at {target[:12]} under {self.root}: there is "
                                   f"nothing to roll back to; activate the release you want instead (python3 -m "
                                   f"edge.releases activate {self.root} ID)")
            # Refused like any activation when the previous release fails the trust policy (say, it was installed
            # unsigned before keys were added) or is damaged: a rollback is the easiest way to run an old bundle,
            # so it must not be a way around "only signed bundles run"; the device stays on its current bundle.
            self._activate_locked(target, _KEEP, "roll back to", unconfirmed=False)
            return target

    def prune(self, keep: int, *, spare=()) -> list[str]:
        """Remove all but the `keep` most recent releases, never the current or the previous one, nor those an
        unconfirmed switch's note would switch back to (nor those in `spare`); return removed ids.

        Also sweeps abandoned uploads and extraction leftovers.
        """
        if keep < 1:
            raise ReleaseError(f"keep must be at least 1, not {keep}")
        with self._locked():
            ordered = self.releases()
            # A deploy cut off before its health check switches back to what its note names: keep those too.
            note = self.unconfirmed() or {}
            noted = {value for value in note.values() if isinstance(value, str)}
            protected = {self.current(), self.previous(), *noted, *spare} | set(ordered[-keep:])
            removed = [bundle_id for bundle_id in ordered if bundle_id not in protected]
            self._sweep_staging()  # first: a crashed prune's `remove-<id>` would block the rename below
            if removed:
                self.staging_dir.mkdir(parents=True, exist_ok=True)
            for bundle_id in removed:
                # Rename first, so a half-deleted release is never visible under releases/; to a plain name, as
                # making a folder for it needs space, which a prune freeing a full disk may not have.
                doomed = self.staging_dir / f"remove-{bundle_id}"
                os.rename(self.releases_dir / bundle_id, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            self._sweep_incoming()
            self._sweep_temporaries()
            return removed

    def _sweep_staging(self) -> None:
        # Called with the lock held: nothing else is extracting, so whatever is here was abandoned.
        if self.staging_dir.is_dir():
            for entry in self.staging_dir.iterdir():
                shutil.rmtree(entry, ignore_errors=True)

    def _sweep_temporaries(self) -> None:
        # Called with the lock held: the links, the note and the order are only written under it, so a temporary
        # name left in the root (.current.*.tmp, ..unconfirmed.*.tmp) is one that a crash or power cut stopped short.
        for name in (self._current_link.name, self._previous_link.name, UNCONFIRMED, ABANDONED, ORDER):  # the store's
            for stray in self.root.glob(f".{name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stray.unlink()

    def _sweep_incoming(self) -> None:
        if not self.incoming_dir.is_dir():
            return
        now = time.time()
        self._sweep_abandoned_claims()  # a live one is left however long it waits: its install reads it yet
        for entry in self.incoming_dir.rglob("*"):  # serial uploads stage in incoming/serial/
            ssh_upload = entry.parent == self.incoming_dir and entry.name.endswith(".part")
            if entry.parent == self.incoming_dir and entry.name.endswith(CLAIMED):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < now - (PART_MAX_AGE_S if ssh_upload
                                                                      else INCOMING_MAX_AGE_S):
                    entry.unlink()

    def _sweep_abandoned_claims(self) -> None:
        if not self.incoming_dir.is_dir():
            return
        for entry in self.incoming_dir.glob(f"*{CLAIMED}"):
            with contextlib.suppress(OSError):
                if abandoned_claim(entry):
                    entry.unlink()

    def status(self) -> dict:
        from edge.signing import KEY_ERROR_PREFIX, read_trusted_keys

        # Key ids, then one "error: <why>" per broken key file (while there is one, every bundle is refused). One
        # list, because it is all that the SSH status and the serial RELEASES message carry.
        keys, problems = read_trusted_keys(self.trusted_keys_dir)
        trusted = sorted(keys) + [KEY_ERROR_PREFIX + problem for problem in problems]
        return {
            "root": str(self.root),
            "current": self.current(),
            "previous": self.previous(),
            "releases": self.releases(),
            "trusted_keys": trusted,
            "unconfirmed": self.unconfirmed(),
        }


def storage_failure(exc: OSError) -> str:
    """What to tell a deploy whose step failed on the device's storage (full, read-only, failing)."""
    where = f" ({exc.filename})" if exc.filename else ""
    return (f"the device's storage failed{where}: {exc.strerror or exc}; free some space or check the storage "
            f"(dmesg), then try again")


# --- command line (what deploy tools run on the device over SSH) -------------------------------------------------

def _optional_id(text: str) -> str | None:
    return None if text in ("", "-", "none") else _id_argument(text)


CLAIMED = ".installing"
_claims: list[int] = []  # descriptors holding this process's claims locked until it exits


def claimed_upload(path: str) -> str:
    """An upload about to be installed, renamed from `.part` before the install waits for the store's lock: another
    deploy clears a `.part` untouched for PART_MAX_AGE_S, and the wait may be longer. The claim is locked for as
    long as this process lives (taken before the rename, so never seen unlocked), so a claim whose install was
    killed or lost its power is told from one still waiting, and cleared (`abandoned_claim`)."""
    if not path.endswith(".part"):
        return path
    claimed = path.removesuffix(".part") + CLAIMED
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # gone: install says it cannot read it
        return path
    fcntl.flock(fd, fcntl.LOCK_EX)  # an upload's .part is locked by no one else: this does not wait
    _claims.append(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, claimed)
        return claimed
    return path


def release_claims() -> None:
    while _claims:
        os.close(_claims.pop())


def abandoned_claim(path: Path) -> bool:
    """Whether a claimed upload's install is gone (its lock is free): it never finishes, and its file holds space
    that a full device's next install needs."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _id_argument(text: str) -> str:
    """_check_id for argparse, which turns only its own error types into a usage error (not a traceback)."""
    try:
        return _check_id(text)
    except ReleaseError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _switch_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{1,64}", text):  # one word of .abandoned
        raise argparse.ArgumentTypeError(f"{text!r} is not a switch id (hex digits, as `basilar deploy` makes)")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edge.releases",
                                     description="Manage the bundle releases under a basilar device root. "
                                                 "Every command prints one JSON object.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="active bundle, previous one, releases kept, trusted keys").add_argument("root")
    install = commands.add_parser("install", help="verify and add a bundle archive (does not activate it)")
    install.add_argument("root")
    install.add_argument("archive")
    install.add_argument("--sha256", help="refuse the archive unless its SHA-256 is this")
    install.add_argument("--remove-archive", action="store_true", help="delete the archive afterwards (an upload)")
    activate = commands.add_parser("activate", help="switch current to an installed bundle")
    activate.add_argument("root")
    activate.add_argument("bundle_id", type=_optional_id, help="'-' removes current")
    activate.add_argument("--previous", type=_optional_id, default=_KEEP, help="set previous to this id ('-': none)")
    activate.add_argument("--unconfirmed", action="store_true",
                          help="note that a health check is to follow (see confirm); status reports it meanwhile")
    activate.add_argument("--switch-id", type=_switch_id, help="refuse to switch once `abandon ROOT SWITCH_ID` was "
                          "run")
    abandon = commands.add_parser("abandon", help="a deploy lost the answer of a switch: it must not happen later")
    abandon.add_argument("root")
    abandon.add_argument("switch_id", type=_switch_id)
    confirm = commands.add_parser("confirm", help="the bundle activated with --unconfirmed passed its health check")
    confirm.add_argument("root")
    confirm.add_argument("bundle_id", type=_id_argument)
    commands.add_parser("rollback", help="switch back to the previous bundle").add_argument("root")
    prune = commands.add_parser("prune", help="remove old releases")
    prune.add_argument("root")
    prune.add_argument("--keep", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "activate" and args.bundle_id is None and args.unconfirmed:  # no bundle to health-check
        activate.error("--unconfirmed needs a bundle to check: '-' removes current; drop --unconfirmed")
    if os.path.exists(args.root) and not os.path.isdir(args.root):  # else a "storage failure" naming the wrong fix
        print(f"error: {args.root} is not a folder; give the device root (a folder, made if missing)", file=sys.stderr)
        return 2

    store = ReleaseStore(args.root)
    try:
        if args.command == "status":
            result = store.status()
            # For deploy tools: a damaged release is re-uploaded (installing it mends it), not taken as held; an
            # unsigned one, or one signed by another key, too where keys are trusted (the signed copy brings its
            # signature); and a root with no store says nothing was deployed there, or that the root is mistyped.
            result["damaged"] = [bundle_id for bundle_id in result["releases"] if store.damage(bundle_id)]
            result["signers"] = {bundle_id: store.signer(bundle_id) for bundle_id in result["releases"]}
            result["store"] = store.releases_dir.is_dir()
            result["current_broken"] = result["current"] is None and os.path.lexists(store._current_link)
            result["current_directory"] = store._current_link.is_dir() and not store._current_link.is_symlink()
            result["abandon"] = True  # this tool takes `activate --switch-id` and `abandon`
        elif args.command == "install":
            archive = claimed_upload(args.archive) if args.remove_archive else args.archive
            try:
                result = {"bundle_id": store.install(archive, args.sha256)}
            finally:
                if args.remove_archive:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(archive)
                release_claims()
        elif args.command == "activate":
            if args.bundle_id is None:
                result = {"previous": store.deactivate(previous=args.previous, switch_id=args.switch_id)}
            else:
                result = {"previous": store.activate(args.bundle_id, previous=args.previous,
                                                     unconfirmed=args.unconfirmed, switch_id=args.switch_id)}
        elif args.command == "confirm":
            result = {"confirmed": store.confirm(args.bundle_id)}
        elif args.command == "abandon":
            store.abandon(args.switch_id)
            result = {"abandoned": args.switch_id}
        elif args.command == "rollback":
            result = {"current": store.rollback()}
        else:
            result = {"removed": store.prune(args.keep)}
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the device's storage: full, read-only, failing
        print(f"error: {storage_failure(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
