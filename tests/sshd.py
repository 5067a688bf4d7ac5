"""A real OpenSSH server on 127.0.0.1 for deploy tests, with throwaway host and user keys in a temp dir.

Works as root (the usual CI container) and as an ordinary user (sshd then serves only that user). The server
accepts only the throwaway user key and only on loopback.
"""
from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_program


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(ssh_keygen: str, path: Path, comment: str) -> None:
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def _children(pid: int) -> list[int]:
    """Every descendant of a process (sshd forks one or more processes per connection)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Sshd:
    process: subprocess.Popen
    port: int
    user: str
    directory: Path
    client_key: Path  # private key the server accepts
    host_public_key: str  # "ssh-ed25519 AAAA..." of the server

    host = "127.0.0.1"

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}\n"

    def url(self, root: str | Path) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{root}"

    def kill_connections(self) -> int:
        """SIGKILL the processes serving open connections (like a pulled network cable); return how many."""
        victims = _children(self.process.pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)

    def log(self) -> str:
        return (self.directory / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        self.kill_connections()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_sshd(directory: Path) -> Sshd:
    sshd = require_program("sshd")
    ssh_keygen = require_program("ssh-keygen")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    _keygen(ssh_keygen, directory / "host_ed25519", "basilar-test-host")
    _keygen(ssh_keygen, directory / "user_ed25519", "basilar-test-user")
    (directory / "authorized_keys").write_text((directory / "user_ed25519.pub").read_text())
    if os.getuid() == 0:
        # A root sshd chroots its unprivileged child into this directory; the Debian service creates it at start.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {directory}/host_ed25519
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 50
MaxSessions 50
LogLevel VERBOSE
# Debian's bash sources ~/.bashrc for ssh commands unless SHLVL says it is nested; this machine's .bashrc
# (pyenv init) costs ~0.5 s per command, which only slows the tests down.
SetEnv SHLVL=1
""")
    log = open(directory / "sshd.log", "wb")
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    log.close()
    server = Sshd(process, port, user, directory, directory / "user_ed25519",
                  " ".join((directory / "host_ed25519.pub").read_text().split()[:2]))
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}:\n{server.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"sshd did not answer on 127.0.0.1:{port}:\n{server.log()}")
        time.sleep(0.05)
