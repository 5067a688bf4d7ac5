"""Device side of a bundle upload over the telemetry link (host side: firmware_tools/serial_deploy.py).

The host announces an archive (size, SHA-256), the device answers where to continue: bytes it already holds
from an interrupted attempt are kept in `<staging>/<sha256>.part`, so a pulled cable costs only the chunk in
flight. Chunks must arrive in order; each is written, flushed and acknowledged with the next offset and the
CRC-32 of everything held so far (the host compares it with its own file before trusting a resume point).
At the end the device hashes the file, and only an exact SHA-256 match is handed to `install`.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Callable

from edge.releases import storage_failure
from edge.telemetry.protocol import (FLAG_RESTART, Message, UploadAck, UploadBegin, UploadChunk, UploadEnd,
                                     UploadResult, UploadStatus)

log = logging.getLogger(__name__)
DEFAULT_MAX_SIZE = 256 * 1024 * 1024


def _crc_of_file(path: Path, length: int) -> int:
    crc, left = 0, length
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc & 0xFFFFFFFF


class _Transfer:
    def __init__(self, path: Path, sha256: bytes, total: int, restart: bool):
        self.path, self.sha256, self.total = path, sha256, total
        if restart:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        held = path.stat().st_size if path.exists() else 0
        if held > total:
            held = 0  # not a prefix of this archive; start over
        self.file = open(path, "r+b" if path.exists() else "w+b")
        self.file.truncate(held)
        self.offset = held
        self.crc = _crc_of_file(path, held)

    def append(self, data: bytes) -> None:
        self.file.seek(self.offset)
        self.file.write(data)
        self.file.flush()  # acknowledged bytes are in the kernel; a crash of this process loses none of them
        self.offset += len(data)
        self.crc = zlib.crc32(data, self.crc) & 0xFFFFFFFF

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self.file.fileno())
        self.file.close()

    def ack(self, status: UploadStatus = UploadStatus.OK) -> UploadAck:
        return UploadAck(int(status), self.offset, self.crc)


class UploadReceiver:
    """Consumes UPLOAD_* messages and returns the replies to send.

    install(archive_path, sha256_hex) -> bundle_id puts the verified archive in place (in production: install
    it in the release store and hand it to the running software, see `release_store_receiver`); it may raise
    to refuse, and the message goes back to the host.
    is_current(bundle_id): whether the last bundle installed is still the active one. The receiver answers a
    repeated BEGIN or END of that archive "already installed" without a new transfer only while it is: once
    something else switched `current` (a deploy over SSH), uploading the archive again installs it again.
    """

    def __init__(self, staging_dir: str | Path, install: Callable[[Path, str], str], *,
                 max_size: int = DEFAULT_MAX_SIZE, is_current: Callable[[str], bool] | None = None):
        self.staging_dir = Path(staging_dir)
        self.install = install
        self.max_size = max_size
        self._is_current = is_current
        self._transfer: _Transfer | None = None
        self._completed: dict[bytes, str] = {}  # sha256 -> bundle id, so a repeated END/BEGIN is answered again

    def handle(self, message: Message) -> list[Message]:
        try:
            if isinstance(message, UploadBegin):
                return [self._begin(message)]
            if isinstance(message, UploadChunk):
                return [self._chunk(message)]
            if isinstance(message, UploadEnd):
                return [self._end(message)]
        except OSError as exc:
            self._drop_transfer()
            return [UploadResult(int(UploadStatus.IO_ERROR), "",
                                 f"the device cannot write its staging file in {self.staging_dir}: "
                                 f"{exc.strerror or exc}; free some space and deploy again")]
        return []

    def _already_installed(self, sha256: bytes) -> UploadResult | None:
        bundle_id = self._completed.get(sha256)
        if bundle_id is None:
            return None
        if self._is_current is not None and not self._is_current(bundle_id):
            self._completed = {}
            return None
        return UploadResult(int(UploadStatus.OK), bundle_id, "already installed")

    def _begin(self, begin: UploadBegin) -> Message:
        if (done := self._already_installed(begin.sha256)) is not None:
            return done
        if begin.total_size > self.max_size:
            return UploadResult(int(UploadStatus.TOO_LARGE), "",
                                f"the archive is {begin.total_size} bytes; this device accepts at most "
                                f"{self.max_size}")
        if self._transfer and self._transfer.sha256 == begin.sha256 and not begin.flags & FLAG_RESTART \
                and self._transfer.total == begin.total_size:
            return self._transfer.ack()
        self._drop_transfer()
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        name = begin.sha256.hex() + ".part"
        # Only one upload at a time: keep disk use bounded. A .tar.gz here is an archive whose install was cut
        # short (the device lost power while installing it); nothing will ever resume from it.
        for stale in [*self.staging_dir.glob("*.part"), *self.staging_dir.glob("*.tar.gz")]:
            if stale.name != name:
                stale.unlink(missing_ok=True)
        self._transfer = _Transfer(self.staging_dir / name, begin.sha256, begin.total_size,
                                   restart=bool(begin.flags & FLAG_RESTART))
        return self._transfer.ack()

    def _chunk(self, chunk: UploadChunk) -> Message:
        t = self._transfer
        if t is None:
            return UploadAck(int(UploadStatus.NO_TRANSFER), 0, 0)
        if chunk.offset != t.offset:
            return t.ack(UploadStatus.OUT_OF_ORDER)
        if t.offset + len(chunk.data) > t.total:
            return t.ack(UploadStatus.OUT_OF_ORDER)
        t.append(chunk.data)
        return t.ack()

    def _end(self, end: UploadEnd) -> Message:
        if (done := self._already_installed(end.sha256)) is not None:
            return done
        t = self._transfer
        if t is None or t.sha256 != end.sha256:
            return UploadAck(int(UploadStatus.NO_TRANSFER), 0, 0)
        if t.offset != t.total:
            return t.ack(UploadStatus.OUT_OF_ORDER)
        t.close()
        self._transfer = None
        digest = hashlib.sha256()
        with open(t.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        expected = t.sha256.hex()
        if digest.hexdigest() != expected:
            t.path.unlink(missing_ok=True)
            return UploadResult(int(UploadStatus.SHA_MISMATCH), "",
                                f"the received archive hashes to {digest.hexdigest()}, expected {expected}; "
                                "the partial copy was discarded: deploy again")
        archive = t.path.with_name(expected + ".tar.gz")
        os.replace(t.path, archive)
        try:
            bundle_id = self.install(archive, expected)
        except OSError as exc:  # the device's storage (full, failing), not the bundle: said as an SSH deploy says it
            log.warning("serial upload %s not installed: %s", expected, exc)
            return UploadResult(int(UploadStatus.IO_ERROR), "", storage_failure(exc))
        except Exception as exc:  # noqa: BLE001 - whatever the installer refuses, the host must hear why
            log.warning("serial upload %s refused: %s", expected, exc)
            return UploadResult(int(UploadStatus.INSTALL_FAILED), "", str(exc) or type(exc).__name__)
        finally:
            archive.unlink(missing_ok=True)
        self._completed = {t.sha256: bundle_id}
        return UploadResult(int(UploadStatus.OK), bundle_id, "installed and active")

    def _drop_transfer(self) -> None:
        if self._transfer is not None:
            with contextlib.suppress(OSError):
                self._transfer.close()
            self._transfer = None

    def close(self) -> None:
        self._drop_transfer()


def release_store_receiver(store, keep: int = 3, on_new_bundle: Callable[[str], None] | None = None,
                           on_installed: Callable[[str], None] | None = None) -> UploadReceiver:
    """An UploadReceiver that installs into the device root's release store (staging in its incoming/serial)."""
    return UploadReceiver(store.incoming_dir / "serial", release_store_installer(store, keep, on_new_bundle,
                                                                                 on_installed),
                          is_current=lambda bundle_id: store.current() == bundle_id)


def release_store_installer(store, keep: int = 3, on_new_bundle: Callable[[str], None] | None = None,
                            on_installed: Callable[[str], None] | None = None) -> Callable[[Path, str], str]:
    """install() for a device root: verify and add the archive to the release store (`edge.releases`), make it
    current, hand it to on_new_bundle(bundle_id) (the running software loads it, or raises to refuse it), keep
    the `keep` most recent releases, and then tell on_installed(bundle_id) (which announces the store as it is).

    A refusal puts `current` and `previous` back as they were and prunes nothing, as an SSH deploy's switch-back
    does: the releases the device could roll back to are all still there. (Only a disk too full to install the
    archive has old releases pruned first, those this deploy would prune anyway: never current or previous.)"""

    def install(archive: Path, sha256: str) -> str:
        try:
            bundle_id = store.install(archive, sha256)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            bundle_id = _install_after_pruning(store, archive, sha256, keep)
        before = store.current(), store.previous()
        store.activate(bundle_id)
        if on_new_bundle is not None:
            try:
                on_new_bundle(bundle_id)
            except BaseException:
                _put_back(store, *before)
                raise
        try:
            store.prune(keep)
        except Exception as exc:  # noqa: BLE001 - the new bundle runs; old releases only take space
            log.warning("bundle %s is active, but pruning old releases failed: %s", bundle_id[:12], exc)
        if on_installed is not None:
            on_installed(bundle_id)
        return bundle_id

    return install


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _install_after_pruning(store, archive: Path, sha256: str, keep: int) -> str:
    """The disk is too full to install the archive. Nothing over the cable can free space, so remove now the old
    releases a successful deploy would prune anyway (never the current, the previous or the one being installed)
    and try once more; still too full, say how much is needed and what would free it."""
    from edge import bundle as bundles

    try:
        installing = [bundles.bundle_id(archive)]
    except bundles.BundleError:
        installing = []
    removed = store.prune(max(keep - 1, 1), spare=installing)  # the new release takes one of the `keep` places
    if removed:
        log.warning("the disk is full: removed %d old release(s) to make room for the upload", len(removed))
        try:
            return store.install(archive, sha256)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
    pruned = f"even after removing {len(removed)} old release(s)" if removed else "and no old release can go"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            needed = archive.stat().st_size + sum(member.size for member in tar)
        free = shutil.disk_usage(store.root).free + archive.stat().st_blocks * 512  # the upload is deleted next
        space = (f"the bundle needs about {needed // 1024} KB (the upload and its extracted copy), {free // 1024} KB "
                 f"are free {pruned}")
    except (OSError, tarfile.TarError, EOFError):
        space = f"the bundle does not fit {pruned}"
    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {space}; python3 -m edge.releases prune "
                  f"{store.root} --keep 1 keeps only the current, previous and newest releases", str(store.root))


def _put_back(store, current: str | None, previous: str | None) -> None:
    try:
        if current is None:
            store.deactivate(previous=previous)
        else:
            store.activate(current, previous=previous)  # an explicit previous: an undo, not a new activation
    except Exception as exc:  # noqa: BLE001 - the refusal itself is what the host must hear
        log.error("could not put current back to %s after the refusal: %s", current, exc)
