"""Deploy to, or query, many devices at once: prepares the bundle archive, runs each target's transport with a
concurrency limit, and formats the summary table. The click commands in deploy_cmd.py are a thin layer on this."""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import tarfile
from pathlib import Path
from typing import Callable

from edge.releases import file_sha256
from firmware_tools.deploy_ssh import (DeployResult, DeviceStatus, LocalBundle, Progress, QuietSendWarnings,
                                       SshOptions, deploy_ssh, quiet_lost_links, refusal, status_ssh, uncancel)
from firmware_tools.targets import SerialTarget, SshTarget, Target


class BundleNotUsable(Exception):
    """The bundle to deploy is missing or invalid; nothing was sent anywhere."""


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during a deploy: every device's result as it was left (switched back where it had
    switched); signum says which signal came."""

    def __init__(self, results: list[DeployResult], signum: int = signal.SIGINT):
        super().__init__("interrupted")
        self.results = results
        self.signum = signum


def prepare_bundle(spec: str, workdir: Path) -> LocalBundle:
    """Check the bundle here first (a broken bundle never leaves this machine) and give an archive to upload.

    spec: a bundle directory, a `.tar.gz` archive of one, or `default`.
    """
    from edge.bundle import BundleError, load_bundle, pack_bundle
    from edge.signing import SignatureError, check_signature_intact

    try:
        bundle = load_bundle(spec)
        signer = check_signature_intact(bundle.path)  # tampered: refused here, not after an upload
    except (BundleError, SignatureError) as exc:
        raise BundleNotUsable(f"{spec}: {exc}") from None
    source = Path(spec)
    if spec != "default" and source.is_file():
        archive = source  # already an archive: upload exactly these bytes
    else:
        archive = Path(workdir) / f"{bundle.id}.tar.gz"
        pack_bundle(bundle.path, archive)
    with tarfile.open(archive, "r:gz") as tar:  # loaded above: readable
        unpacked = sum(member.size for member in tar)
    return LocalBundle(archive=archive, bundle_id=bundle.id, sha256=file_sha256(archive),
                       size=archive.stat().st_size, signed=signer is not None, signer=signer, unpacked_size=unpacked)


_NO_SERIAL = "this installation has no serial deploy (firmware_tools.serial_deploy is missing)"


def _serial_deploy_module():
    """firmware_tools.serial_deploy, or None where this installation lacks it."""
    try:
        return importlib.import_module("firmware_tools.serial_deploy")
    except ModuleNotFoundError as exc:
        if exc.name != "firmware_tools.serial_deploy":
            raise
        return None


def _deploy_serial(target: SerialTarget, bundle: LocalBundle, progress: Progress | None,
                   dry_run: bool) -> DeployResult:
    serial_deploy = _serial_deploy_module()
    if serial_deploy is None:
        return DeployResult(target, False, "failed", None, _NO_SERIAL, active_known=False)
    if dry_run:
        return _plan_serial(serial_deploy, target, bundle)
    try:
        done = serial_deploy.deploy_serial(bundle.archive, target.port, target.baud, progress=progress)
    except Exception as exc:  # the serial transport's errors are reported per device, never abort the fleet
        active = getattr(exc, "active", None)  # a refused bundle: the device said what it still runs
        return DeployResult(target, False, "failed", active, str(exc) or type(exc).__name__,
                            active_known=hasattr(exc, "active"))
    if not done.uploaded:
        return DeployResult(target, True, "unchanged", done.bundle_id, done.message)
    detail = f"resumed at byte {done.resumed_from}" if done.resumed_from else ""
    return DeployResult(target, True, "installed", done.bundle_id, detail, done.total_bytes - done.resumed_from)


def _plan_serial(serial_deploy, target: SerialTarget, bundle: LocalBundle) -> DeployResult:
    """A dry run: ask the device what it runs (HELLO, RELEASES), as a deploy does first, and change nothing."""
    try:
        hello, releases, _ = serial_deploy.query_device(target.port, target.baud)
    except Exception as exc:  # an unreachable device fails a dry run as it would fail the deploy
        return DeployResult(target, False, "failed", None, str(exc) or type(exc).__name__, active_known=False)
    active = hello.bundle_id or None
    if active == bundle.bundle_id:
        return DeployResult(target, True, "unchanged", active, "already active")
    refused = refusal(bundle, list(releases.trusted_keys)) if releases is not None else None
    if refused:  # as the SSH dry run says it: the deploy would upload, and the device refuse
        return DeployResult(target, False, "would fail", active, f"the device would refuse the bundle: {refused}")
    detail = f"would upload {bundle.size} bytes over serial to device {hello.device_id}"
    if releases is None:  # `basilar run --serial` without --root sends no RELEASES and takes no uploads
        detail += "; it keeps no release store (or its software predates RELEASES), so it may refuse the upload"
    return DeployResult(target, True, "would install", active, detail)


async def _deploy_all(bundle, targets, options, parallel, dry_run, progress_for, finished: dict,
                      signals: list[int]) -> int | None:
    """Fill `finished` with each target's result by index; the first of `signals` (SIGINT, SIGTERM) that
    interrupted the deploy, or None."""
    limit = asyncio.Semaphore(max(1, parallel))
    interrupted = []

    async def one(index: int, target: Target) -> None:
        async with limit:
            progress = progress_for(index, target) if progress_for else None
            try:
                if isinstance(target, SshTarget):  # handles an interruption itself (switching back if need be)
                    result = await deploy_ssh(target, bundle, options, progress=progress, dry_run=dry_run)
                else:
                    result = await _serial_to_the_end(target, bundle, progress, dry_run)
            except Exception as exc:  # one device's unexpected error is its own failed row; the others finish
                result = DeployResult(target, False, "failed", None, _unexpected(exc), active_known=False)
        finished[index] = result

    tasks = [asyncio.create_task(one(i, t)) for i, t in enumerate(targets)]

    def interrupt(signum):  # each signal tells every device's task: the first makes them switch back, a second
        # stops that
        interrupted.append(signum)
        for task in tasks:
            task.cancel()

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(quiet_lost_links)
    # In the event loop, not as a KeyboardInterrupt raised wherever the code happens to be (nor as asyncio.run's
    # own handler on Python 3.11, whose second Ctrl-C does that). SIGTERM (timeout, systemd, kill) likewise, or it
    # would end the deploy with a device switched and unchecked.
    handled = []
    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not Unix, or not the main thread
            loop.add_signal_handler(signum, interrupt, signum)
            handled.append(signum)
    try:
        await asyncio.gather(*tasks, return_exceptions=True)  # a task cancelled before it started: not started
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)  # back to Python's own handler, as it was
    return interrupted[0] if interrupted else None


async def _serial_to_the_end(target: SerialTarget, bundle: LocalBundle, progress, dry_run: bool) -> DeployResult:
    """A serial deploy runs in a thread, which no interruption can stop (Python waits for it before it exits
    anyway): wait for it, however often interrupted, and report what it did."""
    work = asyncio.ensure_future(asyncio.to_thread(_deploy_serial, target, bundle, progress, dry_run))
    while True:
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done():  # cancelled itself (asyncio shutting down), so there is nothing left to wait for
                return DeployResult(target, False, "interrupted", None, "interrupted before the serial transfer "
                                                                        "was seen to end: see `basilar status`",
                                    active_known=False)
            uncancel()


def _unexpected(exc: Exception) -> str:
    return f"unexpected error: {type(exc).__name__}: {exc}"


def deploy_fleet(bundle: LocalBundle, targets: list[Target], options: SshOptions, *, parallel: int = 4,
                 dry_run: bool = False,
                 progress_for: Callable[[int, Target], Progress] | None = None) -> list[DeployResult]:
    """Deploy one bundle to every target, at most `parallel` at a time; one result per target, in order. Raises
    Interrupted, with the results so far, on Ctrl-C or SIGTERM."""
    finished: dict[int, DeployResult] = {}
    # Only where a signal has Python's own meaning: a caller's handler, or SIGINT ignored as in a shell's background
    # job, stays as it is (asked before asyncio.run, which puts in a handler of its own on Python 3.11).
    signals = [signum for signum, default in ((signal.SIGINT, signal.default_int_handler),
                                              (signal.SIGTERM, signal.SIG_DFL)) if signal.getsignal(signum) is default]
    asyncio_log = logging.getLogger("asyncio")
    quiet = QuietSendWarnings()
    asyncio_log.addFilter(quiet)
    try:
        interrupted = asyncio.run(_deploy_all(bundle, targets, options, parallel, dry_run, progress_for, finished,
                                              signals))
    except KeyboardInterrupt:  # where the signal handler could not be installed
        interrupted = signal.SIGINT
    finally:
        asyncio_log.removeFilter(quiet)
    results = [finished.get(i) or DeployResult(t, False, "interrupted", None, "not started: interrupted",
                                               active_known=False)
               for i, t in enumerate(targets)]
    if interrupted:
        raise Interrupted(results, interrupted)
    return results


def _status_serial(target: SerialTarget) -> DeviceStatus:
    """What a device says over its serial line: its active bundle and who it is (HELLO), and the releases it
    keeps and the keys it trusts (RELEASES) where it has a release store."""
    serial_deploy = _serial_deploy_module()
    if serial_deploy is None:
        return DeviceStatus(target, False, reason=_NO_SERIAL)
    try:
        hello, releases, problems = serial_deploy.query_device(target.port, target.baud)
    except Exception as exc:  # reported per device, like a deploy's errors
        return DeviceStatus(target, False, reason=str(exc) or type(exc).__name__)
    status = DeviceStatus(target, True, current=hello.bundle_id or None, releases=None, service="answering",
                          note=f"device {hello.device_id}, basilar {hello.basilar_version}",
                          trouble="; ".join(problems))  # its active bundle cannot be loaded, say
    if releases is None:
        status.note += "; it keeps no release store (or its software predates RELEASES)"
        return status
    status.previous = releases.previous or None
    status.releases, status.trusted_keys = list(releases.releases), list(releases.trusted_keys)
    if releases.total > len(releases.releases):
        status.note += f"; {releases.total - len(releases.releases)} older release(s) not listed"
    return status


async def _status_all(targets, options, parallel):
    limit = asyncio.Semaphore(max(1, parallel))

    async def one(target: Target) -> DeviceStatus:
        async with limit:
            if isinstance(target, SshTarget):
                return await status_ssh(target, options)
            return await asyncio.to_thread(_status_serial, target)

    results = await asyncio.gather(*(one(t) for t in targets), return_exceptions=True)
    return [DeviceStatus(t, False, reason=_unexpected(r)) if isinstance(r, Exception) else r
            for t, r in zip(targets, results)]


def status_fleet(targets: list[Target], options: SshOptions, *, parallel: int = 8) -> list[DeviceStatus]:
    return asyncio.run(_status_all(targets, options, parallel))


def short_id(bundle_id: str | None) -> str:
    return bundle_id[:12] if bundle_id else "-"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table; the last column is left unpadded since it holds free text."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
