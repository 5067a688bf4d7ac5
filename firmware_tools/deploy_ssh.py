"""Deploy a bundle to devices over SSH (asyncssh), many at once.

Why asyncssh rather than paramiko: one event loop drives every connection, so `--parallel N` is real concurrency
without a thread per device; it reads OpenSSH's known_hosts (hashed entries included), ~/.ssh/config, the default
keys and ssh-agent as ssh does; and its SFTP client pipelines writes, which matters on slow links.

On the device the work is done by `python3 -m edge.releases` (the same release store that the serial path and
`basilar run` use), so checks and atomic switches are identical whichever way a bundle arrives:

  1. status: which bundle is current; a bundle already active needs nothing, one already installed no upload;
  2. upload to `<root>/incoming/<id>.<random>.part` over SFTP;
  3. install: the device checks the archive's SHA-256, extracts it safely, verifies the bundle and its signature
     (when the device trusts keys), and renames it into releases/ (the upload is deleted either way);
  4. activate: `current` is switched by renaming a new symlink; the store keeps a note that the switch is
     unconfirmed (and what ran before) until the health check passes;
  5. restart the service, then the health check; if either fails or hangs, switch back, restart the old bundle
     and report. If the connection is lost after the switch, connect again once to switch back; if that fails
     too, the note makes the next deploy of the bundle restart and check it rather than call it unchanged;
  6. confirm the switch and prune old releases (never the current or the previous one); a failure here is only
     a warning, since the new bundle is already active and healthy.

Interrupted (Ctrl-C cancels the task), a device is left as a failure at that step would leave it: before the switch
it runs what it ran; after it and before the health check passed, it is switched back.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import socket
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import asyncssh

from edge.releases import PART_MAX_AGE_S
from edge.signing import split_key_entries
from firmware_tools.targets import DEFAULT_SSH_PORT, SshTarget, host_port

Progress = Callable[[int, int], None]  # (bytes sent, total bytes)


@dataclass
class SshOptions:
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts, as ssh
    accept_new_host_keys: bool = False  # like ssh's StrictHostKeyChecking=accept-new
    identity: Path | None = None  # None: ssh-agent and the default keys in ~/.ssh
    device_python: str = "python3"  # a shell command prefix that runs the device's Python with basilar
    restart_command: str = "systemctl restart basilar"  # "" skips the restart
    health_command: str | None = None  # None: <device_python> -m firmware_tools.cli bundle verify <root>/current
    # In these three commands, {root} stands for the device root (shell-quoted).
    service_command: str = "systemctl is-active basilar"
    keep: int = 3
    connect_timeout: float = 20.0  # also: a link that answers nothing for this long counts as lost (keepalives)
    command_timeout: float = 300.0  # a restart or health check that takes longer counts as failed (rolled back)
    block_size: int = 64 * 1024  # SFTP write size
    upload_requests: int = 16  # SFTP writes in flight at once (pipelining hides the link's latency)

    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts or Path("~/.ssh/known_hosts")).expanduser()


@dataclass
class LocalBundle:
    """A bundle archive ready to upload."""
    archive: Path
    bundle_id: str
    sha256: str
    size: int
    signed: bool = False  # carries signature.json
    signer: str | None = None  # the id of the key in signature.json (None: unsigned, or the file is unreadable)
    unpacked_size: int = 0  # its files' bytes: the device extracts them while the upload is still there

    @property
    def room_needed(self) -> int:
        """Bytes the device's install needs free: the upload and its extracted copy."""
        return self.size + self.unpacked_size


@dataclass
class DeployResult:
    target: object
    ok: bool
    outcome: str  # installed, switched, unchanged, would install, would switch, rolled back, failed, interrupted
    active: str | None = None  # the bundle id the device runs now, as far as we know (None: no bundle)
    reason: str = ""
    uploaded_bytes: int = 0
    warning: str = ""  # a succeeded deploy that still needs attention (e.g. old releases not pruned)
    active_known: bool = True  # False: the deploy never learned what the device runs (active says nothing)


@dataclass
class DeviceStatus:
    target: object
    ok: bool
    current: str | None = None
    previous: str | None = None
    releases: list[str] | None = field(default_factory=list)  # None: the transport cannot list them
    trusted_keys: list[str] = field(default_factory=list)
    service: str = ""
    reason: str = ""  # why the device could not be queried
    note: str = ""  # what else a queried device said
    trouble: str = ""  # why a queried device will not start its service (a damaged or missing active bundle)


class DeployError(Exception):
    """One device's deployment step failed; the message is shown in the summary."""


class OutcomeUnknown(DeployError):
    """A command on the device whose answer was lost (the link dropped, it timed out, a signal ended it): it may
    have done its work, and it may still be running."""


# --- connecting ------------------------------------------------------------------------------------------------

_KEEPALIVE_COUNT_MAX = 3  # keepalives unanswered before the link counts as lost


class _HostKeyPolicy(asyncssh.SSHClient):
    """Decides on host keys that are not in known_hosts: accept them only for hosts known_hosts has never seen,
    and only when the user asked for it (ssh's accept-new). A changed key is always refused."""

    def __init__(self, known: asyncssh.SSHKnownHosts, accept_new: bool):
        self.known = known
        self.accept_new = accept_new
        self.problem = ""
        self.accepted_key: asyncssh.SSHKey | None = None
        self.host_port: tuple[str, int] | None = None  # as known_hosts names the device (after ~/.ssh/config)

    def validate_host_public_key(self, host, addr, port, key):
        self.host_port = (host, port)
        host_keys, ca_keys, *_ = self.known.match(host, addr, port)
        if host_keys or ca_keys:
            self.problem = "changed"
            return False
        if not self.accept_new:
            self.problem = "unknown"
            return False
        self.accepted_key = key
        return True


def _host_pattern(host: str, port: int) -> str:
    """How known_hosts names a host (OpenSSH writes non-default ports as [host]:port)."""
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def _remember_host_key(path: Path, pattern: str, key: asyncssh.SSHKey) -> None:
    """Append a newly accepted host key to known_hosts (no await inside: parallel deploys cannot interleave)."""
    key_text = " ".join(key.export_public_key("openssh").decode().split()[:2])
    line = f"{pattern} {key_text}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    if line not in existing.splitlines(keepends=True):
        with open(path, "a") as f:
            if existing and not existing.endswith("\n"):
                f.write("\n")
            f.write(line)


async def connect(target: SshTarget, options: SshOptions) -> asyncssh.SSHClientConnection:
    known_hosts_path = options.known_hosts_path()
    try:
        known = asyncssh.read_known_hosts(str(known_hosts_path)) if known_hosts_path.exists() \
            else asyncssh.import_known_hosts("")
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read {known_hosts_path}: {exc}") from None
    policy = _HostKeyPolicy(known, options.accept_new_host_keys)
    kwargs = {}
    if target.user:
        kwargs["username"] = target.user
    if options.identity:
        kwargs["client_keys"] = [str(Path(options.identity).expanduser())]
    if target.port is not None:  # else asyncssh takes the Port that ~/.ssh/config sets for the host, or 22
        kwargs["port"] = target.port
    address = target.address
    # Keepalives make a link that stops answering (Wi-Fi gone, a NAT that forgot the flow) fail after about
    # --connect-timeout seconds, even in the middle of an upload, which no command timeout covers.
    keepalive = options.connect_timeout / (_KEEPALIVE_COUNT_MAX + 1)
    try:
        conn, _ = await asyncssh.create_connection(
            lambda: policy, target.host, known_hosts=known, connect_timeout=options.connect_timeout,
            keepalive_interval=keepalive, keepalive_count_max=_KEEPALIVE_COUNT_MAX, **kwargs)
    except asyncssh.ConfigParseError as exc:
        # A ValueError, not an asyncssh.Error: uncaught, it would end the whole fleet command with a traceback.
        raise DeployError(f"cannot read the SSH configuration: {exc}; fix or remove that line (it is read with "
                          "asyncssh, which is stricter than OpenSSH: for instance it takes times as plain seconds, "
                          "ServerAliveInterval 30 rather than 30s)") from None
    except asyncssh.HostKeyNotVerifiable:
        host, port = policy.host_port or (target.host, target.port or DEFAULT_SSH_PORT)
        address = host_port(host, port)
        if policy.problem == "changed":
            raise DeployError(f"the host key of {address} differs from the one in {known_hosts_path}: the device "
                              "was reinstalled or someone is in between; check, then remove the old entry with "
                              f"ssh-keygen -R '{_host_pattern(host, port)}' -f {known_hosts_path}") from None
        raise DeployError(f"the host key of {address} is not in {known_hosts_path}; check it and add it "
                          f"(ssh-keyscan -p {port} {host} >> {known_hosts_path}), or pass "
                          "--accept-new-host-keys to trust a device seen for the first time") from None
    except asyncssh.PermissionDenied:
        raise DeployError(f"authentication to {target.user + '@' if target.user else ''}{address} failed: put your "
                          "public key in the device's ~/.ssh/authorized_keys (ssh-copy-id), load it into ssh-agent, "
                          "or pass --identity FILE") from None
    except asyncssh.KeyImportError as exc:
        raise DeployError(f"cannot load the identity {options.identity}: {exc}; a passphrase-protected key must "
                          "be loaded into ssh-agent instead") from None
    except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
        raise DeployError(f"cannot connect to {address}: {_describe(exc)}") from None
    if policy.accepted_key is not None:
        _remember_host_key(known_hosts_path, _host_pattern(*policy.host_port), policy.accepted_key)
    return conn


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeployError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.ConnectionLost) and "keepalive" in exc.reason:
        return "the link went silent (SSH keepalives unanswered for about --connect-timeout seconds)"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's, which os.strerror calls "unknown error -2"
        return (f"the name does not resolve ({exc.strerror}); check its spelling, the device's entry in DNS or "
                "/etc/hosts, or use its IP address")
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def quiet_lost_links(loop, context) -> None:
    """An event loop's exception handler: a dropped link fails all of an SFTP upload's parallel writes, and
    asyncssh retrieves only the first failure (the device's row reports it); the rest are no news."""
    if context.get("message") == "Task exception was never retrieved" and isinstance(
            context.get("exception"), (asyncssh.Error, OSError)):
        return
    loop.default_exception_handler(context)


class QuietSendWarnings(logging.Filter):
    """For asyncio's logger: writes to a lost link log "socket.send() raised exception." by the dozen."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "socket.send() raised exception."


# --- running things on the device ------------------------------------------------------------------------------

def _tail(text: str, limit: int = 300) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    return last if len(last) <= limit else "..." + last[-limit:]


async def _run(conn, command: str, timeout: float, stdin: str | None = None) -> asyncssh.SSHCompletedProcess:
    # errors="replace": asyncssh decodes output as UTF-8 and, strictly, drops the whole connection on a byte that
    # is not (a Latin-1 message from a health check, say), which would cut a deploy off before its switch-back.
    return await conn.run(command, input=stdin, check=False, timeout=timeout, errors="replace")


# How `python3 -m edge.releases` ends when it ran to an answer: done, refused (its error), a usage error, or no
# such program. Anything else (a signal, the link gone) leaves its outcome unknown.
KNOWN_ENDS = (0, 1, 2, 127)


def _root_arg(root: str) -> str:
    """The device root as a command's argument: a root under the home folder that starts with `-` would read as
    an option."""
    return "./" + root if root.startswith("-") else root


async def _releases(conn, options: SshOptions, command: str, root: str, *args: str) -> dict:
    command = f"{options.device_python} -m edge.releases " + " ".join(
        shlex.quote(a) for a in (command, _root_arg(root), *args))
    # Bounded on the device too: a store command given up on (waiting on the store's lock, say) must not go on to
    # switch `current` behind the deploy's back. `exec`: busybox's and toybox's `timeout` signal only the shell.
    result, timed_out = await _run_bounded(conn, "exec " + command, options.command_timeout)
    if timed_out or result.exit_status in (124, 137, 143):  # 143: busybox's `timeout` ends it with SIGTERM
        raise OutcomeUnknown(f"the command timed out (--command-timeout {options.command_timeout:g} s)")
    if result.exit_status is None or result.exit_status not in KNOWN_ENDS:
        raise OutcomeUnknown("the connection was lost before the device answered" if result.exit_status is None
                             else f"the command ended with exit status {result.exit_status}, not an answer")
    if result.exit_status != 0:
        why = _tail(result.stderr) or _tail(result.stdout) or f"exit status {result.exit_status}"
        if "No module named" in why or result.exit_status == 127:
            why += (f" (the device cannot run `{options.device_python} -m edge.releases`: install basilar there, "
                    "or pass --device-python with the Python that has it)")
        raise DeployError(why.removeprefix("error: "))
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"unexpected answer from the device: {_tail(result.stdout)!r}") from None


def device_command(template: str, root: str) -> str:
    """A restart, health or service command for one device: `{root}` stands for its root, shell-quoted."""
    return template.replace("{root}", shlex.quote(_root_arg(root)))


def health_command(options: SshOptions, root: str) -> str:
    if options.health_command is not None:
        return device_command(options.health_command, root)
    # Through --device-python, since a `basilar` installed in a virtual environment is not on the login's PATH.
    return f"{options.device_python} -m firmware_tools.cli bundle verify {shlex.quote(_root_arg(root) + '/current')}"


# After the time is up the device's `timeout` sends SIGTERM, and SIGKILL this much later.
KILL_GRACE_S = 5


def bounded_shell(timeout: float) -> str:
    """The device's login shell under its own `timeout`, which ends it, and what it started, when the time is up;
    the command goes to its standard input. A simple command, so that every login shell parses it (sh, bash, fish,
    tcsh: a wrapper in sh syntax made fish exit 0 without running anything).

    Closing the SSH channel would not end a hung command: sshd leaves a command without a terminal running (a hung
    `systemctl restart` would outlive the deploy and race the restart of the old bundle), and it ignores signal
    requests.
    """
    return f"timeout -k {KILL_GRACE_S} {timeout:g} $SHELL"


_HAS_TIMEOUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per connection: asked once


async def _device_has_timeout(conn) -> bool:
    """Whether the device's `timeout` takes -k (coreutils; busybox's since 1.28; its SIGTERM reaches only the
    shell, not what the shell started)."""
    if conn not in _HAS_TIMEOUT:
        try:
            _HAS_TIMEOUT[conn] = (await _run(conn, "timeout -k 1 1 true", 30)).exit_status == 0
        except (asyncssh.Error, OSError):
            return False  # asked again next time: the link may have dropped
    return _HAS_TIMEOUT[conn]


async def _run_bounded(conn, command: str, timeout: float):
    """(result, timed_out) of a restart, health or service command that may hang; the result holds its output."""
    started = time.monotonic()
    try:
        if await _device_has_timeout(conn):
            result = await _run(conn, bounded_shell(timeout), timeout + KILL_GRACE_S + 5, stdin=command + "\n")
        else:  # as before: given up on, and left to finish
            result = await _run(conn, command, timeout)
    except asyncssh.TimeoutError as exc:
        return exc, True
    # 124: `timeout` ended it with SIGTERM; 137: with SIGKILL
    return result, result.exit_status in (124, 137) and time.monotonic() - started >= timeout


async def _check(conn, what: str, command: str, timeout: float) -> str | None:
    """Run a restart or health command; return why it failed, or None."""
    if not command.strip():
        return None
    result, timed_out = await _run_bounded(conn, command, timeout)
    if timed_out:
        # A hung `systemctl restart` is the usual way a bad bundle fails to come up: a failure to roll back.
        detail = _tail(result.stderr) or _tail(result.stdout)
        return (f"{what} did not finish within {timeout:g} s (--command-timeout)"
                + (f"; its last output: {detail}" if detail else ""))
    if result.exit_status == 0:
        return None
    detail = _tail(result.stderr) or _tail(result.stdout)
    if result.exit_status is None:  # the channel closed without a status: the command took the link down with it
        return f"{what} ended without an exit status (the connection dropped)" + (f": {detail}" if detail else "")
    if result.exit_status == 127:
        detail += " (not found on the device: install it there or pass --restart-command/--health-command)"
    return f"{what} failed (exit status {result.exit_status})" + (f": {detail}" if detail else "")


async def _free_bytes(sftp, path: str) -> int | None:
    """Bytes an unprivileged user may still write under path, or None where the server cannot say."""
    try:
        vfs = await sftp.statvfs(path)
    except (asyncssh.Error, OSError):  # no statvfs@openssh.com extension, or no such folder yet
        return None
    return vfs.bavail * vfs.frsize if vfs.blocks and vfs.frsize else None  # all zeros: a server that cannot say


def _no_room(root: str, free: int, needed: int) -> str:
    return (f"the device has {free / 1024:.0f} KB free under {root} and the bundle needs {needed / 1024:.0f} KB (the "
            "upload and its extracted copy); free some space there (`python3 -m edge.releases prune "
            f"{shlex.quote(root)} --keep 1` keeps only the current and previous releases) and deploy again")


async def _drop_stale_parts(sftp, incoming: str, own: str) -> None:
    """Remove the partial uploads, of any bundle, that earlier cut-off attempts left (they hold space a full device
    needs), but not one that another deploy is writing right now. Ages are taken on the device's clock: this
    upload's own file, made first, says what time it is there."""
    async with sftp.open(own, "wb"):
        pass
    now = (await sftp.stat(own)).mtime
    for name in await sftp.listdir(incoming):
        path = f"{incoming}/{name}"
        if name.endswith(".part") and path != own:
            with contextlib.suppress(asyncssh.SFTPError):  # gone meanwhile: its deploy finished
                if now is None or (await sftp.stat(path)).mtime < now - PART_MAX_AGE_S:
                    await sftp.remove(path)


async def _upload(conn, bundle: LocalBundle, remote_path: str, progress: Progress | None,
                  options: SshOptions) -> None:
    def report(_src, _dst, sent, total):
        if progress:
            progress(sent, total)

    incoming = str(Path(remote_path).parent)
    root = str(Path(incoming).parent)
    async with conn.start_sftp_client() as sftp:
        free = await _free_bytes(sftp, root)
        # SFTP would only say "Failure" half-way, or "not a directory"; the install, "No space left" with no numbers
        if free is not None and free < bundle.room_needed:
            raise DeployError(_no_room(root, free, bundle.room_needed))
        try:
            try:
                await sftp.makedirs(incoming, exist_ok=True)
                await _drop_stale_parts(sftp, incoming, remote_path)
            except asyncssh.SFTPError as exc:  # SFTP says only "Failure" for a read-only filesystem
                raise DeployError(f"cannot write under {root} ({exc.reason}): the device root is not writable (a "
                                  "read-only filesystem, or the SSH user may not write there)") from None
            # put() may return normally if the link drops after the last write was acknowledged; that is fine,
            # because the device checks the SHA-256 of what it received before installing anything.
            await sftp.put(str(bundle.archive), remote_path, block_size=options.block_size,
                           max_requests=options.upload_requests, progress_handler=report)
        except asyncio.CancelledError:  # interrupted: take the partial upload away now, as a failure does
            uncancel()
            with contextlib.suppress(asyncssh.Error, OSError):
                await sftp.remove(remote_path)
            raise
        except asyncssh.SFTPError as exc:
            with contextlib.suppress(asyncssh.Error, OSError):  # a partial upload holds space a full device needs
                await sftp.remove(remote_path)
            free = await _free_bytes(sftp, root)
            if free is not None and free < bundle.room_needed:
                raise DeployError(_no_room(root, free, bundle.room_needed)) from None
            raise


# --- one device ------------------------------------------------------------------------------------------------

async def deploy_ssh(target: SshTarget, bundle: LocalBundle, options: SshOptions, *,
                     progress: Progress | None = None, dry_run: bool = False) -> DeployResult:
    stage = "connecting"
    active = None
    uploaded = 0
    undo = None  # once current points at the new bundle: (the bundle to switch back to, the previous to restore)
    failure = None  # why the new bundle failed its restart or health check
    done = None  # the result, once the new bundle passed its health check
    status = None  # what the device said it holds, once read
    unsure = False  # the switch's answer was lost: the device may or may not have switched, or still switch
    switch_id = secrets.token_hex(8)  # names the switch, so that one whose answer was lost can be called off

    async def upload_and_install(conn) -> None:
        nonlocal stage
        stage = "uploading"
        part = f"{_root_arg(target.root)}/incoming/{bundle.bundle_id}.{secrets.token_hex(4)}.part"
        await _upload(conn, bundle, part, progress, options)
        stage = "installing on the device"
        await _releases(conn, options, "install", target.root, part, "--sha256", bundle.sha256, "--remove-archive")

    try:
        async with await connect(target, options) as conn:
            stage = "reading the device's releases"
            status = await _releases(conn, options, "status", target.root)
            active, previous = status.get("current"), status.get("previous")
            damaged = bundle.bundle_id in status.get("damaged", [])
            # An earlier deploy switched to the active bundle and was cut off before its health check.
            unchecked = status.get("unconfirmed")
            # A device with a basilar from before these notes has no such key, and its release tool knows neither
            # `activate --unconfirmed` nor `confirm`: deploy to it as before.
            notes = "unconfirmed" in status
            if dry_run:
                return _plan(target, bundle, status)
            if active == bundle.bundle_id and not unchecked and not damaged:
                if not _signature_missing(bundle, status):
                    if progress:
                        progress(bundle.size, bundle.size)
                    return DeployResult(target, True, "unchanged", active, "already active")
                # A signed copy of the active release, which the device holds unsigned or signed by another key:
                # install it for its signature (or a later rollback to it is refused), with no switch or restart.
                await upload_and_install(conn)
                return DeployResult(target, True, "unchanged", active, "already active; its signature installed "
                                                                       "(the device held it unsigned or signed by "
                                                                       "another key)", bundle.size)

            detail = ""
            if active == bundle.bundle_id and unchecked and not damaged:
                # Never checked, so not "unchanged": restart and check it now, and if it fails switch back to what
                # ran before that deploy.
                undo = (unchecked.get("current"), unchecked.get("previous"))
                detail = "was active but never checked (an earlier deploy was cut off); restarted and checked now"
                if progress:
                    progress(bundle.size, bundle.size)
            else:
                if _needs_upload(bundle, status):
                    await upload_and_install(conn)
                    uploaded = bundle.size
                elif progress:
                    progress(bundle.size, bundle.size)
                if status.get("store") is False:  # a mistyped root would otherwise pass unnoticed
                    detail = f"made a new release store in {target.root} (the first deploy there)"
                stage = "switching current"
                # Back to what last passed a check: not to a bundle an earlier, cut-off deploy left unchecked.
                back = (unchecked.get("current"), unchecked.get("previous")) if unchecked else (active, previous)
                flags = (["--unconfirmed"] if notes else []) + (["--switch-id", switch_id] if status.get("abandon")
                                                                else [])
                activation = asyncio.ensure_future(_releases(conn, options, "activate", target.root,
                                                             bundle.bundle_id, *flags))
                try:
                    await asyncio.shield(activation)
                except (OutcomeUnknown, OSError, asyncssh.Error):
                    undo, unsure = back, True  # it may have switched: find out over a new connection
                    raise
                except asyncio.CancelledError:
                    # The device's activate runs on whatever happens here: let it finish first, or it could switch
                    # to the new bundle after the switch-back below. Interrupted again, switching back could race
                    # it, so stop and say what the device may run.
                    undo = back
                    uncancel()
                    try:
                        await activation
                    except (OutcomeUnknown, OSError, asyncssh.Error):
                        unsure = True  # its answer lost as well: call it off and look, not switch back blind
                    except DeployError:
                        pass  # refused: nothing switched
                    except asyncio.CancelledError:
                        return DeployResult(target, False, "interrupted", None, "interrupted again while switching "
                                            f"current; {_unchecked(bundle)}", active_known=False)
                    raise
                undo = back

            stage = "restarting and checking the service"
            restart = device_command(options.restart_command, target.root)
            failure = await _check(conn, "restart", restart, options.command_timeout)
            if failure is None:
                failure = await _check(conn, "health check", health_command(options, target.root),
                                       options.command_timeout)
            if failure is not None:
                stage = "switching back"
                return await _switch_back(conn, target, bundle, options, undo, failure, uploaded)

            undo = None  # healthy: nothing to switch back from, whatever happens next
            done = DeployResult(target, True, "installed" if uploaded else "switched", bundle.bundle_id, detail,
                                uploaded)
            stage = "noting the passed check"
            # The new bundle is active and healthy now: failing to confirm or prune only leaves work for the next
            # deploy (checking it again, removing old releases).
            try:
                if notes:
                    await _releases(conn, options, "confirm", target.root, bundle.bundle_id)
            except (DeployError, OSError, asyncssh.Error) as exc:
                done.warning = (f"noting on the device that it passed its health check failed ({_describe(exc)}); "
                                "the next deploy of it restarts and checks it again")
                return done
            stage = "pruning old releases"
            try:
                await _releases(conn, options, "prune", target.root, "--keep", str(options.keep))
            except (DeployError, OSError, asyncssh.Error) as exc:
                done.warning = _prune_warning(_describe(exc), target, options)
            return done
    except DeployError as exc:
        reason = str(exc) if stage == "connecting" else f"{stage}: {exc}"
    except (OSError, asyncssh.Error) as exc:
        reason = f"{stage}: {_describe(exc)}"
    except asyncio.CancelledError:
        uncancel()  # handled here: the switch-back below still needs the event loop
        reason = f"interrupted while {stage}"
        if done is not None:
            done.warning = (f"{reason}, after its health check passed; " + (
                "old releases stay until the next deploy prunes them" if stage == "pruning old releases"
                else "the next deploy of it checks it again and prunes old releases"))
            return done
        if undo is None:
            ran = (f"the device runs what it ran before ({(active or 'no bundle')[:12]})" if status is not None
                   else "nothing on the device was changed")
            return DeployResult(target, False, "interrupted", active, f"{reason}; {ran}",
                                active_known=status is not None)
    if undo is not None:
        # Cut off after the switch (the link dropped during the restart, or Ctrl-C): the new bundle is unchecked
        # or failed, so connect once more to put back the old one.
        reason = f"{failure}; {reason}" if failure else reason
        step = "connecting again to switch back"
        try:
            async with await connect(target, options) as conn:
                if unsure:
                    if status.get("abandon"):  # an activate still starting or waiting must not switch later
                        step = "calling off the switch"
                        await _releases(conn, options, "abandon", target.root, switch_id)
                    step = "reading which bundle the device runs"
                    now = (await _releases(conn, options, "status", target.root)).get("current")
                    if now != bundle.bundle_id:
                        if not status.get("abandon"):  # its release tool cannot call a switch off
                            return DeployResult(target, False, "failed", now, f"{reason}; reconnected: the device "
                                                f"had not switched (it runs {_short(now)}), but its switch may still "
                                                f"come; {_unchecked(bundle)}")
                        return DeployResult(target, False, "failed", now, f"{reason}; reconnected: the device did "
                                                                          f"not switch (it runs {_short(now)})")
                step = "switching back"
                return await _switch_back(conn, target, bundle, options, undo, f"{reason} (reconnected)", uploaded)
        except (DeployError, OSError, asyncssh.Error) as exc:
            return DeployResult(target, False, "failed", None, f"{reason}; {step} failed: {_describe(exc)}; "
                                                               f"{_unchecked(bundle)}", active_known=False)
        except asyncio.CancelledError:  # interrupted again: stop, and say what the device may run
            return DeployResult(target, False, "interrupted", None, f"{reason}; interrupted again while switching "
                                                                    f"back; {_unchecked(bundle)}", active_known=False)
    return DeployResult(target, False, "failed", active, reason, active_known=status is not None)


def uncancel() -> None:
    """Take back a cancellation that was handled (Python 3.11+), so that later awaits and timeouts work."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def _short(bundle_id: str | None) -> str:
    return bundle_id[:12] if bundle_id else "no bundle"


def _unchecked(bundle: LocalBundle) -> str:
    return (f"the device may now run {bundle.bundle_id[:12]} unchecked: deploying it again restarts and checks it "
            "(or switches back)")


async def _switch_back(conn, target: SshTarget, bundle: LocalBundle, options: SshOptions, undo, failure: str,
                       uploaded: int) -> DeployResult:
    """Undo a switch whose restart or health check failed: put back the bundle (and previous) from before it, and
    restart that. A refused switch-back is reported with the failure that called for it; a lost connection is
    raised (the caller connects again)."""
    back_to, back_previous = undo
    restart = device_command(options.restart_command, target.root)
    try:
        await _releases(conn, options, "activate", target.root, back_to or "-", "--previous", back_previous or "-")
    except DeployError as exc:
        return DeployResult(target, False, "failed", None, f"{failure}; switching back failed: {exc}; "
                                                           f"{_unchecked(bundle)}", active_known=False)
    back = f"switched back to {back_to[:12]}" if back_to else "removed current (there was no older bundle)"
    try:
        again = await _check(conn, "restart of the old bundle", restart, options.command_timeout)
    except (OSError, asyncssh.Error) as exc:
        again = f"restart of the old bundle: {_describe(exc)}"
    except asyncio.CancelledError:  # switched back already; only the restart was cut short
        uncancel()
        again = "the restart of the old bundle was interrupted: restart the service on the device"
    return DeployResult(target, False, "rolled back", back_to, f"{failure}; {back}" + (f"; {again}" if again else ""),
                        uploaded)


def _plan(target: SshTarget, bundle: LocalBundle, status: dict) -> DeployResult:
    """A dry run: what the deploy would do, from the device's status; a bundle it would refuse fails here too."""
    active = status.get("current")
    damaged = bundle.bundle_id in status.get("damaged", [])
    if active == bundle.bundle_id and not damaged and status.get("unconfirmed"):
        return DeployResult(target, True, "would check", active, "active but never checked (an earlier deploy was "
                                                                 "cut off); would restart and check it")
    if active == bundle.bundle_id and not damaged and not _signature_missing(bundle, status):
        return DeployResult(target, True, "unchanged", active, "already active")
    refused = refusal(bundle, status.get("trusted_keys", []))
    if refused:
        return DeployResult(target, False, "would fail", active, f"the device would refuse the bundle: {refused}")
    if damaged:
        return DeployResult(target, True, "would install", active, f"damaged on the device; would upload "
                                                                   f"{bundle.size} bytes to mend it")
    if not _needs_upload(bundle, status):
        return DeployResult(target, True, "would switch", active, "installed already; no upload")
    if active == bundle.bundle_id:
        return DeployResult(target, True, "would sign", active, f"already active; would upload {bundle.size} bytes "
                                                                "to install its signature, with no restart")
    new_store = "; would make a new release store there (none yet)" if status.get("store") is False else ""
    return DeployResult(target, True, "would install", active, f"would upload {bundle.size} bytes{new_store}")


def _signature_missing(bundle: LocalBundle, status: dict) -> bool | None:
    """Whether a device that trusts keys holds the release without this bundle's signature (unsigned: installed
    before the keys; or signed by another key: before a key rotation); None where its software does not list its
    releases' signers."""
    if not (bundle.signed and status.get("trusted_keys")):
        return False
    if "signers" not in status:
        return None
    return bundle.signer is None or status["signers"].get(bundle.bundle_id) != bundle.signer


def _needs_upload(bundle: LocalBundle, status: dict) -> bool:
    """Whether the device needs the archive: it lacks the release, holds it damaged (installing mends it), or
    may hold it without this signature (the signed copy brings it)."""
    return (bundle.bundle_id not in status.get("releases", []) or bundle.bundle_id in status.get("damaged", [])
            or _signature_missing(bundle, status) is not False)


def refusal(bundle: LocalBundle, trusted_keys: list[str]) -> str | None:
    """Why a device trusting these keys (as its status lists them) would refuse the bundle, or None."""
    keys, broken = split_key_entries(trusted_keys)
    if broken:
        return f"a key file of its trusted_keys/ is broken ({broken[0]}), so it refuses every bundle; fix or remove it"
    if not keys:
        return None
    if not bundle.signed:
        return (f"the bundle is not signed and the device trusts {len(keys)} key(s); sign it with: "
                "basilar bundle sign BUNDLE --key PRIVATE_KEY")
    if bundle.signer is None:
        return "the bundle's signature.json cannot be read; sign it again"
    if bundle.signer not in keys:
        return (f"the bundle is signed by key {bundle.signer}, which the device does not trust ({', '.join(keys)}); "
                "sign it with a trusted key or add its .pub file to the device's trusted_keys/")
    return None


def _prune_warning(why: str, target: SshTarget, options: SshOptions) -> str:
    return (f"pruning old releases failed ({why}); they stay on the device until the next deploy prunes them: "
            f"fix the cause there, or run `{options.device_python} -m edge.releases prune "
            f"{shlex.quote(_root_arg(target.root))} --keep {options.keep}` on it")


async def status_ssh(target: SshTarget, options: SshOptions) -> DeviceStatus:
    try:
        async with await connect(target, options) as conn:
            status = await _releases(conn, options, "status", target.root)
            service = "not checked"
            if options.service_command.strip():
                command = device_command(options.service_command, target.root)
                result, timed_out = await _run_bounded(conn, command, options.command_timeout)
                if timed_out:  # the releases were read: the device answers, its service check hangs
                    service = f"unknown (`{command}` did not finish within {options.command_timeout:g} s)"
                else:
                    answer = _tail(result.stdout) or _tail(result.stderr)
                    service = answer if result.exit_status == 0 else f"not running ({answer or result.exit_status})"
    except DeployError as exc:
        return DeviceStatus(target, False, reason=str(exc))
    except (OSError, asyncssh.Error) as exc:
        return DeviceStatus(target, False, reason=_describe(exc))
    current, note, trouble = status.get("current"), "", ""
    if status.get("unconfirmed"):
        note = "never checked: a deploy switched to it and was cut off before its health check; deploy it again"
    if status.get("store") is False:
        note = f"no release store in {target.root}: nothing deployed there yet, or the root is mistyped"
    if current in status.get("damaged", []):  # the service refuses it at its next start
        trouble = "the active bundle is damaged on the device, so its service will not start: deploy it again"
    elif status.get("current_directory"):  # a deploy cannot put a link in its place
        trouble = ("current is a directory, not a link to a release (made by hand?), so its service will not start: "
                   "move it away, then deploy a bundle")
    elif status.get("current_broken"):
        trouble = "current points at no release the device holds, so its service will not start: deploy a bundle"
    return DeviceStatus(target, True, current, status.get("previous"), status.get("releases", []),
                        status.get("trusted_keys", []), service, note=note, trouble=trouble)
