"""`basilar deploy` and `basilar status`: put a bundle on devices, and see what they run."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import click

from firmware_tools.cli_types import FloatRange, given_options
from firmware_tools.targets import SerialTarget, collect_targets

_SSH_DEFAULTS = dict(restart="systemctl restart basilar", service="systemctl is-active basilar")


def _need_the_host_extra() -> None:
    """deploy and status run every transport through one fleet runner, which needs asyncssh (a host extra)."""
    try:
        with warnings.catch_warnings():
            # asyncssh names DSA keys in its type hints, which recent cryptography (51 here) warns of on import:
            # ten lines on every deploy and status that no user can act on (basilar neither makes nor asks for DSA)
            warnings.filterwarnings("ignore", message="DSA is deprecated")
            import asyncssh  # noqa: F401
    except ImportError:
        raise click.ClickException("`basilar deploy` and `basilar status` run on the host and need its extra "
                                   "(asyncssh): pip install 'basilar[host]'") from None


def one_line(ctx, param, value):
    """Device commands reach the login shell on its standard input (under the device's `timeout`), where bash reads
    one line at a time: a first line that reads its input would swallow the next ones, unrun."""
    line = value.rstrip("\r\n") if value else value
    if line and ("\n" in line or "\r" in line):
        raise click.BadParameter("give one line; join commands with ; or &&")
    return line


def _ssh_options(command):
    """Options shared by deploy and status: how to reach and trust devices over SSH."""
    options = [
        click.option("--inventory", type=click.Path(dir_okay=False), help="File listing targets, one per line "
                     "('[name] URL'; # starts a comment)."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
                     help="Host keys to trust [default: ~/.ssh/known_hosts]."),
        click.option("--accept-new-host-keys", is_flag=True, help="Trust the key of a device seen for the first "
                     "time and add it to the known hosts (ssh's accept-new). A changed key is always refused."),
        click.option("-i", "--identity", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Private key to log in with [default: ssh-agent and ~/.ssh/id_*, as ssh]."),
        click.option("--device-python", default="python3", show_default=True, metavar="CMD",
                     help="How to run the device's Python that has basilar installed, e.g. "
                          "/opt/basilar/venv/bin/python."),
        click.option("--connect-timeout", type=FloatRange(min=1), default=20.0, show_default=True,
                     metavar="SECONDS", help="How long connecting may take; also, a device that answers nothing "
                                             "(not even SSH keepalives) for this long counts as lost, during an "
                                             "upload too."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _targets(target_urls, inventory):
    return collect_targets(list(target_urls), inventory)


@click.command()
@click.argument("bundle")
@click.argument("targets", nargs=-1)
@_ssh_options
@click.option("--parallel", type=click.IntRange(min=1), default=4, show_default=True, metavar="N",
              help="How many devices to deploy to at once.")
@click.option("--dry-run", is_flag=True, help="Connect and report what would happen; change nothing.")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True, metavar="N",
              help="Releases to keep on each device (the current and previous ones are always kept).")
@click.option("--restart-command", default=_SSH_DEFAULTS["restart"], show_default=True, metavar="CMD",
              callback=one_line,
              help="Shell command on the device that restarts the service; an empty string skips it. "
                   "{root} stands for the device root.")
@click.option("--health-command", default=None, metavar="CMD", callback=one_line,
              help="Shell command on the device that must succeed after the restart; {root} stands for the device "
                   "root [default: DEVICE_PYTHON -m firmware_tools.cli bundle verify {root}/current].")
@click.option("--command-timeout", type=FloatRange(min=1), default=300.0, show_default=True,
              metavar="SECONDS", help="How long each command on the device may take; a restart or health check "
                                      "that takes longer counts as failed, and the device is switched back.")
@click.pass_context
def deploy(ctx, bundle, targets, inventory, known_hosts, accept_new_host_keys, identity, device_python,
           connect_timeout, parallel, dry_run, keep, restart_command, health_command, command_timeout):
    """Install BUNDLE on every TARGET and make it the active one.

    BUNDLE is a bundle directory, a .tar.gz archive of one, or `default`. A TARGET is
    ssh://user@host[:port]/path/to/root or serial:///dev/ttyX?baud=115200. A device that fails its restart or health
    check is switched back to the bundle it ran before. The exit status is 0 only if every device succeeded.
    """
    _need_the_host_extra()
    from firmware_tools.deploy_ssh import SshOptions
    from firmware_tools.fleet import BundleNotUsable, Interrupted, deploy_fleet, format_table, prepare_bundle, short_id

    chosen = _targets(targets, inventory)
    # The serial upload protocol cannot carry --keep: the device prunes with its own setting, so refuse rather
    # than pretend it applies.
    serial = [t.label for t in chosen if isinstance(t, SerialTarget)]
    if serial and given_options(ctx, ["keep"]):
        raise click.UsageError(f"--keep applies to SSH targets only, and {serial[0]} is a serial one: a serial "
                               "device prunes its releases itself and keeps 3 unless told otherwise on the "
                               "device (`basilar run --keep N`, or the agent's `python3 -m edge.telemetry.agent "
                               "--keep N`); leave out --keep, or deploy the serial targets in a separate command")
    options = SshOptions(known_hosts=Path(known_hosts) if known_hosts else None,
                         accept_new_host_keys=accept_new_host_keys, identity=identity, device_python=device_python,
                         restart_command=restart_command, health_command=health_command, keep=keep,
                         connect_timeout=connect_timeout, command_timeout=command_timeout)
    with tempfile.TemporaryDirectory(prefix="basilar-deploy-") as workdir:
        try:
            local = prepare_bundle(bundle, Path(workdir))
        except BundleNotUsable as exc:
            raise click.ClickException(f"cannot deploy {exc}") from None
        click.echo(f"bundle {local.bundle_id} ({local.size} bytes) to {len(chosen)} device(s)"
                   + (" [dry run]" if dry_run else ""), err=True)
        bars = _progress_bars(chosen, local.size)
        interrupted = None  # the signal that interrupted the deploy
        try:
            results = deploy_fleet(local, chosen, options, parallel=parallel, dry_run=dry_run,
                                   progress_for=lambda index, _target: bars[index])
        except Interrupted as stop:  # the table still says where each device was left
            results, interrupted = stop.results, stop.signum
        finally:
            for bar in bars:
                bar.close()
    rows = [[r.target.label, short_id(r.active) if r.active_known else "?", r.outcome,
             "; ".join(text for text in (r.reason, r.warning and f"warning: {r.warning}") if text)] for r in results]
    click.echo(format_table(["DEVICE", "ACTIVE", "RESULT", "DETAIL"], rows))
    # A warning (old releases not pruned) does not fail the deploy: the device runs the new bundle, healthy.
    warned = sum(bool(r.warning) for r in results)
    if warned:
        click.echo(f"Warning: {warned} device(s) run the new bundle but need attention; see DETAIL above", err=True)
    failed = sum(not r.ok for r in results)
    if interrupted:
        click.echo(f"Interrupted: {failed} of {len(results)} device(s) did not finish; see DETAIL above" if failed
                   else "Interrupted, though every device finished; see DETAIL above", err=True)
        ctx.exit(128 + interrupted)  # as a shell reports a command ended by the signal: 130 Ctrl-C, 143 SIGTERM
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} device(s) failed; see DETAIL above")


class _Bar:
    """A tqdm bar per device, fed (bytes sent, total) by the transports."""

    def __init__(self, label: str, total: int, position: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, position=position, unit="B", unit_scale=True, leave=True,
                        disable=None, dynamic_ncols=True)

    def __call__(self, sent: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(max(0, sent - self.bar.n))

    def close(self):
        self.bar.close()


def _progress_bars(targets, total):
    return [_Bar(target.label, total, position) for position, target in enumerate(targets)]


@click.command()
@click.argument("targets", nargs=-1)
@_ssh_options
@click.option("--service-command", default=_SSH_DEFAULTS["service"], show_default=True, metavar="CMD",
              callback=one_line,
              help="Shell command on the device that succeeds when the service runs; an empty string skips it. "
                   "{root} stands for the device root.")
@click.option("--parallel", type=click.IntRange(min=1), default=8, show_default=True, metavar="N",
              help="How many devices to query at once.")
@click.option("--command-timeout", type=FloatRange(min=1), default=30.0, show_default=True, metavar="SECONDS",
              help="How long each command on the device may take before the answer is given up on.")
def status(targets, inventory, known_hosts, accept_new_host_keys, identity, device_python, connect_timeout,
           service_command, parallel, command_timeout):
    """Show each TARGET's active bundle, the releases it keeps and whether its service runs."""
    _need_the_host_extra()
    from edge.signing import split_key_entries
    from firmware_tools.deploy_ssh import SshOptions
    from firmware_tools.fleet import format_table, short_id, status_fleet

    chosen = _targets(targets, inventory)
    options = SshOptions(known_hosts=Path(known_hosts) if known_hosts else None,
                         accept_new_host_keys=accept_new_host_keys, identity=identity, device_python=device_python,
                         service_command=service_command, connect_timeout=connect_timeout,
                         command_timeout=command_timeout)
    results = status_fleet(chosen, options, parallel=parallel)
    rows = []
    for s in results:
        if s.ok:
            kept = "?" if s.releases is None else ",".join(short_id(r) for r in reversed(s.releases)) or "-"
            keys, broken = split_key_entries(s.trusted_keys)
            signed = f"signed only ({len(keys)} key(s))" if keys else ""
            # A broken key file is not a key: while it is there the device refuses every bundle, so say so.
            broken = "; ".join(f"broken key file: {why}" for why in broken)
            if broken:
                broken += "; the device refuses every bundle until it is fixed or removed"
            rows.append([s.target.label, short_id(s.current), kept, s.service,
                         "; ".join(text for text in (s.trouble, signed, broken, s.note) if text)])
        else:
            rows.append([s.target.label, "?", "?", "?", s.reason])
    click.echo(format_table(["DEVICE", "ACTIVE", "RELEASES (newest first)", "SERVICE", "DETAIL"], rows))
    unreachable = sum(not s.ok for s in results)
    troubled = sum(bool(s.trouble) for s in results)
    if unreachable or troubled:
        raise click.ClickException("; ".join(text for text in (
            unreachable and f"{unreachable} of {len(results)} device(s) could not be queried",
            troubled and f"{troubled} of {len(results)} device(s) will not start their service") if text)
            + "; see DETAIL above")
