"""A standalone device agent on a serial port: announces the active bundle, reports health, and accepts bundle
uploads into a device root (releases/, current). `basilar run --serial` does the same with audio running;
this is the agent for a device that is only being provisioned, and the device end in the serial tests.

    python3 -m edge.telemetry.agent /dev/ttyGS0 --root /opt/basilar [--baud 115200]
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from edge import __version__
from edge.telemetry import BAUD_RANGE, DEFAULT_BAUD
from edge.telemetry.link import DeviceLink
from edge.telemetry.protocol import LogLevel
from edge.telemetry.upload import release_store_receiver

log = logging.getLogger(__name__)


def bundle_description(store) -> tuple[str, list[str], int, str | None]:
    """(bundle id, labels, sample rate, problem) of the active bundle; empty values before the first deploy."""
    bundle_id = store.current()
    if bundle_id is None:
        return "", [], 0, None
    try:
        from edge.bundle import load_bundle

        bundle = load_bundle(store.current_path())
        return bundle.id, list(bundle.labels), int(bundle.frontend_config.sample_rate), None
    except Exception as exc:  # noqa: BLE001 - the agent must keep serving uploads even with a broken bundle
        # HELLO then names no bundle: a host that saw this one's id would take it for running and upload nothing,
        # where uploading it again is what mends it (ReleaseStore.install).
        return "", [], 0, f"the active bundle {bundle_id[:12]} cannot be loaded: {exc}; deploy it again to mend it"


class DeviceAgent:
    """A DeviceLink with a release store behind it and a health report every `health_interval` seconds."""

    def __init__(self, port: str | None, root: str | Path, *, baud: int = DEFAULT_BAUD, device_id: str | None = None,
                 health_interval: float = 5.0, keep: int = 3, stream=None, on_new_bundle=None):
        from edge.releases import ReleaseStore

        self.store = ReleaseStore(root)
        self.health_interval = health_interval
        receiver = release_store_receiver(self.store, keep, on_new_bundle=on_new_bundle,
                                          on_installed=self._bundle_changed)
        # Each REQUEST_HELLO is answered from the store as it is then: the agent runs no bundle of its own, and
        # another deploy path (SSH, sharing the root) may have switched `current` since the last HELLO.
        self.link = DeviceLink(port, baud, device_id=device_id or socket.gethostname(), receiver=receiver,
                               store=self.store, stream=stream, on_hello_request=self.announce)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self.announce()

    def announce(self) -> None:
        bundle_id, labels, sample_rate, problem = bundle_description(self.store)
        self.link.emitter.hello(__version__, bundle_id, labels, sample_rate)
        if problem:  # before RELEASES, which a host asking (`basilar status`) reads up to
            self.link.emitter.log(problem, LogLevel.ERROR)
        self.link.send_releases()

    def _bundle_changed(self, bundle_id: str) -> None:
        self.link.emitter.log(f"bundle {bundle_id} installed and active")
        self.announce()

    def run(self) -> None:
        """Report health until stop() is called."""
        cpu_then, wall_then = time.process_time(), time.monotonic()
        if not self.health_interval:  # no reports: only wait to be stopped
            self._stop.wait()
        while not self._stop.wait(self.health_interval):
            cpu_now, wall_now = time.process_time(), time.monotonic()
            cpu_load = (cpu_now - cpu_then) / max(wall_now - wall_then, 1e-6)
            cpu_then, wall_then = cpu_now, wall_now
            self.link.emitter.health(wall_now - self._started, 0.0, cpu_load, 0)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self.link.close()


def _number(kind, text: str, what: str):
    """`text` as a number of `kind`; argparse would otherwise name the converting function ("invalid _baud value")."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _at_least_two(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value}: keep at least 2 releases (the current and the previous one)")
    return value


def _baud(text: str) -> int:
    value = _number(int, text, f"a line speed in baud, e.g. {DEFAULT_BAUD}")
    if not BAUD_RANGE[0] <= value <= BAUD_RANGE[1]:  # B0 would hang a real tty up
        raise argparse.ArgumentTypeError(f"{value}: a line speed from {BAUD_RANGE[0]} up, e.g. {DEFAULT_BAUD}")
    return value


MIN_HEALTH_INTERVAL_S = 0.05  # 20 reports a second, ~600 B/s: a shorter wait floods the line (1e-9: 285 KB/s)


def _seconds(text: str) -> float:
    value = _number(float, text, "a number of seconds")
    # a negative or tiny wait is no wait: the loop would flood the line
    if not math.isfinite(value) or (value != 0 and value < MIN_HEALTH_INTERVAL_S):
        raise argparse.ArgumentTypeError(f"{text}: seconds, 0 (no health reports) or {MIN_HEALTH_INTERVAL_S:g} or "
                                         "more")
    return value


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m edge.telemetry.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("port", help="the device's serial port, e.g. /dev/ttyGS0 or /dev/ttyAMA0")
    parser.add_argument("--root", required=True, help="the device root holding releases/ and current")
    parser.add_argument("--baud", type=_baud, default=DEFAULT_BAUD)
    parser.add_argument("--device-id", help="name sent in HELLO (default: the host name)")
    parser.add_argument("--health-interval", type=_seconds, default=5.0, help="seconds between HEALTH reports (0: "
                        "none)")
    parser.add_argument("--keep", type=_at_least_two, default=3, help="releases kept after an upload (2 or more: "
                        "the current one and the previous one are always kept)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.path.exists(args.root) and not os.path.isdir(args.root):  # else only the first upload would say so
        print(f"error: --root {args.root} is not a folder; give the device root (it is made on the first upload)",
              file=sys.stderr)
        return 2
    if not os.path.exists(args.port):
        print(f"error: serial port {args.port} does not exist; check the name (ls /dev/tty*)", file=sys.stderr)
        return 2
    try:
        agent = DeviceAgent(args.port, args.root, baud=args.baud, device_id=args.device_id,
                            health_interval=args.health_interval, keep=args.keep)
    except Exception as exc:  # noqa: BLE001 - the port could not be opened
        print(f"error: cannot start the agent on {args.port}: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
