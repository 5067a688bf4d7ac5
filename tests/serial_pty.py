"""A serial cable made of two real pseudo-terminals, for the telemetry and serial-deploy tests.

The device opens `device_path` (a pty), the host opens `host_path` (a symlink to another pty, like
/dev/serial/by-id/...), and a relay thread copies bytes between the two masters. The cable can be unplugged
(the host's pty disappears: its reader gets an I/O error, whatever was in flight is lost) and plugged in
again (a new pty behind the same host path), and the device-to-host direction can be corrupted byte by byte
with a seeded generator that records exactly what it did.
"""
from __future__ import annotations

import os
import pty
import queue
import select
import threading
import time
import tty
from pathlib import Path

from firmware_tools.line_noise import Corruption


def _raw_pty():
    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo, no newline translation, before any byte passes
    os.set_blocking(master, False)
    return master, slave


class PtyCable:
    def __init__(self, directory: Path, corruption: Corruption | None = None, hold_until_host_speaks: bool = True,
                 plugged: bool = True, baud: int | None = None, corruption_to_device: Corruption | None = None):
        """baud: pace each direction like a UART at this rate (8N1), instead of as fast as the pty goes."""
        self.corruption = corruption
        self.corruption_to_device = corruption_to_device
        self._bytes_per_s = baud / 10 if baud else None
        self._busy_until = {"host": 0.0, "device": 0.0}
        self._dev_master, self._dev_slave = _raw_pty()
        self.device_path = os.ttyname(self._dev_slave)
        self.host_path = str(Path(directory) / "ttyHOST")
        self._host_master = self._host_slave = None
        self._host_spoke = not hold_until_host_speaks
        self.to_host = 0  # bytes written towards the host since the start
        self.to_device = 0
        self._commands: queue.Queue = queue.Queue()
        self._to_host_pending = bytearray()
        self._to_dev_pending = bytearray()
        self._stop = False
        if plugged:
            self._plug()
        self._thread = threading.Thread(target=self._relay, name="pty-cable", daemon=True)
        self._thread.start()

    # --------------------------------------------------------------- cable handling (relay thread only)

    def _plug(self) -> None:
        self._host_master, self._host_slave = _raw_pty()
        tmp = self.host_path + ".new"
        os.symlink(os.ttyname(self._host_slave), tmp)
        os.replace(tmp, self.host_path)

    def _unplug(self) -> None:
        os.unlink(self.host_path)
        os.close(self._host_master)
        os.close(self._host_slave)
        self._host_master = self._host_slave = None
        self._to_host_pending.clear()  # in flight when the cable came out: lost, both ways
        self._to_dev_pending.clear()

    def _call(self, what: str) -> None:
        done = threading.Event()
        self._commands.put((what, done))
        assert done.wait(10), f"cable relay did not {what}"

    def unplug(self) -> None:
        self._call("unplug")

    def plug(self) -> None:
        self._call("plug")

    def device_has_written(self, timeout: float = 10.0) -> bool:
        """Wait until the device has written bytes that the cable holds back until the host speaks."""
        readable, _, _ = select.select([self._dev_master], [], [], timeout)
        return bool(readable)

    def _relay(self) -> None:
        while not self._stop:
            while not self._commands.empty():
                what, done = self._commands.get()
                self._unplug() if what == "unplug" else self._plug()
                done.set()
            readers = [self._dev_master] + ([self._host_master] if self._host_master is not None else [])
            writers = []
            if self._to_host_pending and self._host_master is not None and self._allowance("host"):
                writers.append(self._host_master)
            if self._to_dev_pending and self._allowance("device"):
                writers.append(self._dev_master)
            if len(self._to_host_pending) > 65536 or not self._host_spoke:
                readers.remove(self._dev_master)  # back-pressure: the device's writes wait, as on a real line
            waiting = self._to_dev_pending or (self._to_host_pending and self._host_master is not None)
            readable, writable, _ = select.select(readers, writers, [], 0.005 if waiting else 0.02)
            if self._dev_master in readable:
                data = self._read(self._dev_master)
                if self._host_master is not None and data:
                    self._to_host_pending += self.corruption.apply(data) if self.corruption else data
            if self._host_master is not None and self._host_master in readable:
                data = self._read(self._host_master)
                if data:
                    self._host_spoke = True
                    self._to_dev_pending += (self.corruption_to_device.apply(data) if self.corruption_to_device
                                             else data)
            if self._host_master is not None and self._host_master in writable:
                self.to_host += self._write(self._host_master, self._to_host_pending, "host")
            if self._dev_master in writable:
                self.to_device += self._write(self._dev_master, self._to_dev_pending, "device")

    @staticmethod
    def _read(fd) -> bytes:
        try:
            return os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return b""  # EIO: nobody has the slave open right now

    def _allowance(self, direction: str) -> int:
        """Bytes the line may take now: a UART at the configured rate is busy for 10 bits per byte."""
        if self._bytes_per_s is None:
            return 1 << 30
        ahead = max(0.0, self._busy_until[direction] - time.monotonic())
        return max(0, int((0.02 - ahead) * self._bytes_per_s))  # at most 20 ms of line time queued

    def _write(self, fd, pending: bytearray, direction: str) -> int:
        allowance = self._allowance(direction)
        if allowance <= 0:
            return 0
        try:
            n = os.write(fd, pending[:allowance])
        except (BlockingIOError, OSError):
            return 0
        del pending[:n]
        if self._bytes_per_s is not None:
            start = max(self._busy_until[direction], time.monotonic())
            self._busy_until[direction] = start + n / self._bytes_per_s
        return n

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for fd in (self._dev_master, self._dev_slave, self._host_master, self._host_slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if os.path.lexists(self.host_path):
            os.unlink(self.host_path)
