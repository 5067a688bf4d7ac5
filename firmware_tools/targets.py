"""Deploy targets: where a bundle goes.

A target is written as a URL:

    ssh://[user@]host[:port]/path/to/root     the device root is an absolute path
    ssh://[user@]host[:port]/~/path           ... or a path relative to the login's home directory
    serial:///dev/ttyUSB0[?baud=115200]       a device reached only by a cable

An inventory file lists many targets, one per line, each optionally preceded by a name shown in reports:

    # name        target
    kitchen-pi    ssh://pi@10.0.0.21/opt/basilar
    ssh://pi@10.0.0.22:2222/opt/basilar
    bench-board   serial:///dev/ttyUSB0?baud=115200
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import click

from edge.telemetry import BAUD_RANGE, DEFAULT_BAUD  # the device end's default: both ends must agree

_EXAMPLES = "ssh://pi@10.0.0.21/opt/basilar or serial:///dev/ttyUSB0?baud=115200"
DEFAULT_SSH_PORT = 22  # where no port is given, in the target or in ~/.ssh/config


class TargetError(click.ClickException):
    """A target or inventory that cannot be understood; the message says what is wrong and how to write it."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    root: str  # absolute, or relative to the login's home directory
    user: str | None = None
    port: int | None = None  # None: as ~/.ssh/config says (Port), else 22
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.url

    @property
    def address(self) -> str:
        """host[:port] as messages name the device."""
        return host_port(self.host, self.port)

    @property
    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        root = self.root if self.root.startswith("/") else f"/~/{self.root}"
        return f"ssh://{user}{self.address}{root}"


def host_port(host: str, port: int | None = None) -> str:
    """host:port as URLs and messages write it: an IPv6 address in brackets ([::1]:22), else its colons blur
    into the port's."""
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True)
class SerialTarget:
    port: str
    baud: int = DEFAULT_BAUD
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.url

    @property
    def url(self) -> str:
        return f"serial://{self.port}?baud={self.baud}"


Target = SshTarget | SerialTarget


def parse_target(text: str, name: str | None = None) -> Target:
    """Parse one target URL; raise TargetError naming the problem."""
    text = text.strip()
    if "://" not in text:
        raise TargetError(f"target {text!r} is not a URL; write it as {_EXAMPLES}")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unclosed "[", or a name in brackets (urlsplit checks they hold an IP address)
        hint = "; brackets hold an IPv6 address only, and must be closed: ssh://pi@[fe80::1]:22/opt/basilar" \
            if "[" in text else ""
        raise TargetError(f"target {text!r} is not a valid URL: {exc}{hint}") from None
    if parts.scheme == "ssh":
        return _parse_ssh(text, parts, name)
    if parts.scheme == "serial":
        return _parse_serial(text, parts, name)
    raise TargetError(f"target {text!r} has the scheme {parts.scheme!r}; use ssh:// or serial://, e.g. {_EXAMPLES}")


def _parse_ssh(text, parts, name) -> SshTarget:
    if parts.password is not None:
        raise TargetError(f"target {text!r} holds a password; passwords are not accepted on the command line: "
                          "use an SSH key (ssh-copy-id) or an ssh-agent")
    if not parts.hostname:
        # urlsplit finds no host in an IPv6 address without brackets (ssh://root@::1/x)
        hint = "; an IPv6 address goes in brackets: ssh://pi@[fe80::1]:22/opt/basilar" \
            if parts.netloc.rpartition("@")[2].count(":") > 1 else ""
        raise TargetError(f"target {text!r} names no host; write ssh://user@host/path/to/root{hint}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    # No port in the URL stays None, so that asyncssh takes the one ~/.ssh/config sets for the host (else 22).
    if port is not None and not 1 <= port <= 65535:
        raise TargetError(f"target {text!r} has an invalid port; it must be a number from 1 to 65535")
    if parts.query or parts.fragment:
        raise TargetError(f"target {text!r}: ssh targets take no '?' or '#' part")
    # One spelling per folder ("/opt//b/" and "/opt/./b" are "/opt/b"), so that a device is recognised however its
    # root is written. ".." stays: folding "a/.." away (as posixpath.normpath does) is wrong where a is a symlink.
    path = "/" + "/".join(part for part in unquote(parts.path).split("/") if part not in ("", "."))
    if path == "/":
        raise TargetError(f"target {text!r} names no device root; add the path that holds releases/ and current, "
                          "e.g. ssh://pi@host/opt/basilar")
    if path == "/~" or path.startswith("/~/"):
        root = path[3:]
        if not root:
            raise TargetError(f"target {text!r}: give a folder under the home directory, e.g. ssh://pi@host/~/basilar")
    else:
        root = path
    if "\0" in root or "\n" in root:
        raise TargetError(f"target {text!r}: the device root contains a control character")
    user = unquote(parts.username) if parts.username else None
    return SshTarget(host=parts.hostname, root=root, user=user, port=port, name=name)


def _parse_serial(text, parts, name) -> SerialTarget:
    if parts.netloc:
        raise TargetError(f"target {text!r}: a serial target has three slashes and the device path, "
                          "e.g. serial:///dev/ttyUSB0?baud=115200")
    port = unquote(parts.path)
    if not port or port == "/":
        raise TargetError(f"target {text!r} names no serial device; e.g. serial:///dev/ttyUSB0")
    if "\0" in port:  # %00: no device path holds it
        raise TargetError(f"target {text!r}: the device path holds a NUL byte (%00); e.g. serial:///dev/ttyUSB0")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"baud"})
    if unknown:
        raise TargetError(f"target {text!r}: unknown option(s) {', '.join(unknown)}; only ?baud=N is understood")
    baud = DEFAULT_BAUD
    if "baud" in query:
        value = query["baud"][-1]
        # isascii: str.isdigit takes "²" too, which int() refuses
        if not (value.isascii() and value.isdigit()) or not BAUD_RANGE[0] <= int(value) <= BAUD_RANGE[1]:
            raise TargetError(f"target {text!r}: baud must be a whole number from {BAUD_RANGE[0]} to "
                              f"{BAUD_RANGE[1]}, e.g. ?baud=115200")
        baud = int(value)
    return SerialTarget(port=port, baud=baud, name=name)


def read_inventory(path: str | Path) -> list[Target]:
    """Read an inventory file: one `[name] target` per line; '#' starts a comment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drops the byte-order mark that Windows editors write
    except OSError as exc:
        raise TargetError(f"cannot read the inventory {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TargetError(f"the inventory {path} is not UTF-8 text; list one target per line") from None
    targets, named, devices = [], {}, {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) == 1:
            name, url = None, fields[0]
        elif len(fields) == 2:
            name, url = fields
        else:
            raise TargetError(f"{path}:{number}: expected '[name] target', found {len(fields)} words: {line!r}")
        # The summary tells devices apart by name only: two lines with one name would make two rows that cannot be
        # told apart.
        if name in named:
            raise TargetError(f"{path}:{number}: the name {name!r} is already used on line {named[name]}; give each "
                              "device its own name")
        if name is not None:
            named[name] = number
        try:
            target = parse_target(url, name)
        except TargetError as exc:
            raise TargetError(f"{path}:{number}: {exc.message}") from None
        # A device on two lines is most often a line copied for another device and not edited: that device would
        # silently be left out (and the second name with it).
        key = _device_key(target)
        if key in devices:
            first, label = devices[key]
            raise TargetError(f"{path}:{number}: {target.label} is the same device as {label} on line {first} (one "
                              "host, port and device root); list each device once (was this line copied for another "
                              "device?)")
        devices[key] = number, target.label
        targets.append(target)
    if not targets:
        raise TargetError(f"the inventory {path} lists no targets; write one per line, e.g. {_EXAMPLES}")
    return targets


def _device_key(target: Target):
    """What makes two targets one device: an SSH URL with :22 and one without name the same one (22 is the default
    when ~/.ssh/config sets no Port)."""
    if isinstance(target, SshTarget):
        # An absolute root is the same folder whoever logs in, so the user is left out. A root under the home
        # directory depends on the login; without a user it is ~/.ssh/config's User, else the local login name,
        # which only asyncssh's reading of the config when it connects can tell: it stays apart from a given user.
        user = None if target.root.startswith("/") else target.user
        return "ssh", user, target.host, target.port or DEFAULT_SSH_PORT, target.root
    return "serial", target.port  # one cable is one device, whatever baud rate each spelling asks for


def collect_targets(urls: tuple[str, ...] | list[str], inventory: str | Path | None = None) -> list[Target]:
    """All targets from the command line and an inventory, without duplicates (first occurrence wins)."""
    targets = [parse_target(url) for url in urls]
    if inventory is not None:
        targets += read_inventory(inventory)
    if not targets:
        raise TargetError(f"no targets given; name at least one ({_EXAMPLES}) or pass --inventory FILE")
    unique, seen = [], set()
    for target in targets:
        key = _device_key(target)
        if key not in seen:
            seen.add(key)
            unique.append(target)
    return unique
