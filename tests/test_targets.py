import asyncio

import pytest

from firmware_tools.targets import (SerialTarget, SshTarget, TargetError, collect_targets, host_port, parse_target,
                                    read_inventory)


def test_ssh_target_with_user_port_and_root():
    target = parse_target("ssh://pi@10.0.0.21:2222/opt/basilar")
    assert target == SshTarget(host="10.0.0.21", root="/opt/basilar", user="pi", port=2222)
    assert target.url == "ssh://pi@10.0.0.21:2222/opt/basilar"


def test_ssh_target_defaults_and_home_relative_root():
    target = parse_target("ssh://device.local/~/basilar/")
    # No port: left for ~/.ssh/config (Port) to set, else 22; passing 22 would override the config.
    assert (target.user, target.port, target.root) == (None, None, "basilar")
    assert target.url == "ssh://device.local/~/basilar"


def test_ssh_target_ipv6():
    target = parse_target("ssh://pi@[fe80::1]:22/srv/b")
    assert (target.host, target.port, target.url) == ("fe80::1", 22, "ssh://pi@[fe80::1]:22/srv/b")


def test_serial_target_with_and_without_baud():
    assert parse_target("serial:///dev/ttyUSB0?baud=115200") == SerialTarget(port="/dev/ttyUSB0", baud=115200)
    assert parse_target("serial:///dev/ttyACM1") == SerialTarget(port="/dev/ttyACM1", baud=115200)


@pytest.mark.parametrize("text, complaint", [
    ("pi@host:/opt/basilar", "not a URL"),
    ("http://host/opt", "scheme 'http'"),
    ("ssh://pi:secret@host/opt", "password"),
    ("ssh://pi@host", "no device root"),
    ("ssh://pi@host/", "no device root"),
    ("ssh://pi@host//", "no device root"),
    ("ssh://pi@host///", "no device root"),
    ("ssh://pi@host:99999/opt", "invalid port"),
    ("ssh://pi@host:0/opt", "invalid port"),
    ("ssh://pi@host:ssh/opt", "invalid port"),
    ("ssh:///opt", "no host"),
    ("ssh://pi@host/~/", "under the home directory"),
    ("ssh://pi@host/./", "no device root"),
    ("ssh://root@[::1/opt/b", r"not a valid URL: Invalid IPv6 URL; brackets hold an IPv6 address only"),
    ("ssh://root@[pi-kitchen]:22/x", r"not a valid URL: .*pi-kitchen.*; brackets hold an IPv6 address only"),
    ("serial://dev/ttyUSB0", "three slashes"),
    ("serial:///dev/ttyUSB0?baud=fast", "whole number from 50 to 2147483647"),
    ("serial:///dev/ttyUSB0?baud=\u00b2", "whole number from 50"),  # a digit to str.isdigit, not to int()
    ("serial:///dev/ttyUSB0?baud=10", "whole number from 50"),  # --baud 10 is refused as well
    ("serial:///dev/ttyUSB0?baud=99999999999", "whole number from 50"),
    ("serial:///dev/tty%00S0", "NUL byte"),
    ("serial:///dev/ttyUSB0?speed=9600", "unknown option"),
    ("serial://", "names no serial device"),
])
def test_bad_targets_are_explained(text, complaint):
    with pytest.raises(TargetError, match=complaint):
        parse_target(text)


def test_inventory_with_names_comments_and_duplicates(tmp_path):
    inventory = tmp_path / "devices.txt"
    inventory.write_text("# fleet\n"
                         "kitchen  ssh://pi@10.0.0.21/opt/basilar   # the one by the door\n"
                         "\n"
                         "ssh://pi@10.0.0.22:2222/opt/basilar\n"
                         "bench serial:///dev/ttyUSB0?baud=921600\n")
    targets = read_inventory(inventory)
    assert [t.label for t in targets] == ["kitchen", "ssh://pi@10.0.0.22:2222/opt/basilar", "bench"]
    both = collect_targets(["ssh://pi@10.0.0.21/opt/basilar"], inventory)
    assert len(both) == 3  # the command-line target and the inventory's kitchen are the same device
    assert len(collect_targets(["ssh://pi@10.0.0.21:22/opt/basilar"], inventory)) == 3  # 22 is the default port


def test_inventory_errors_name_the_line(tmp_path):
    inventory = tmp_path / "devices.txt"
    inventory.write_text("ok ssh://pi@h/opt\nbroken ftp://h/x\n")
    with pytest.raises(TargetError, match=r"devices.txt:2: .*scheme 'ftp'"):
        read_inventory(inventory)
    inventory.write_text("a b c\n")
    with pytest.raises(TargetError, match=r":1: expected '\[name\] target'"):
        read_inventory(inventory)
    inventory.write_text("# nothing\n")
    with pytest.raises(TargetError, match="lists no targets"):
        read_inventory(inventory)
    with pytest.raises(TargetError, match="cannot read the inventory"):
        read_inventory(tmp_path / "missing.txt")


def test_a_malformed_bracketed_host_in_an_inventory_names_the_line(tmp_path):
    """urlsplit raises ValueError on these: it must become a TargetError, not a traceback."""
    inventory = tmp_path / "devices.txt"
    inventory.write_text("ok ssh://pi@h/opt\nbroken ssh://root@[::1/opt/b\n")
    with pytest.raises(TargetError, match=r"devices.txt:2: target .* is not a valid URL"):
        read_inventory(inventory)


def test_one_device_however_its_target_is_written():
    """Two deploys to one device root at once break each other: every spelling of it must be one device."""
    spellings = ["ssh://root@10.0.0.21:2222/opt/basilar",
                 "ssh://10.0.0.21:2222/opt/basilar",  # the default user (~/.ssh/config or the login): same folder
                 "ssh://pi@10.0.0.21:2222/opt/basilar/",
                 "ssh://root@10.0.0.21:2222//opt//./basilar//"]
    [target] = collect_targets(spellings)
    assert target.url == "ssh://root@10.0.0.21:2222/opt/basilar"
    assert parse_target(spellings[-1]).root == "/opt/basilar"
    assert parse_target("ssh://pi@h/~/.//basilar/").root == "basilar"
    assert parse_target("ssh://pi@h/opt/a/../b").root == "/opt/a/../b"  # a may be a symlink: ".." is not folded
    # Under the home directory the user decides the folder; a missing one is only known on connecting.
    assert len(collect_targets(["ssh://h/~/basilar", "ssh://pi@h/~/basilar", "ssh://pi@h/~//basilar/"])) == 2
    assert len(collect_targets(["ssh://h/opt/b", "ssh://h:2222/opt/b", "ssh://g/opt/b", "ssh://h/opt/c"])) == 4
    # One cable is one device, whatever the baud rate.
    assert len(collect_targets(["serial:///dev/ttyUSB0?baud=9600", "serial:///dev/ttyUSB0"])) == 1


def test_inventory_refuses_one_device_on_two_lines(tmp_path):
    """A line copied for another device and not edited would leave that device out, and its name with it."""
    inventory = tmp_path / "devices.txt"
    inventory.write_text("kitchen ssh://pi@10.0.0.21/opt/basilar\n"
                         "hall    ssh://pi@10.0.0.22/opt/basilar\n"
                         "porch   ssh://pi@10.0.0.21/opt/basilar/\n")
    with pytest.raises(TargetError, match=r"devices.txt:3: porch is the same device as kitchen on line 1"):
        read_inventory(inventory)
    inventory.write_text("ssh://pi@10.0.0.21/opt/basilar\nssh://10.0.0.21/opt/basilar\n")
    with pytest.raises(TargetError, match=r":2: ssh://10.0.0.21/opt/basilar is the same device as "
                                          r"ssh://pi@10.0.0.21/opt/basilar on line 1"):
        read_inventory(inventory)


def test_inventory_with_a_byte_order_mark(tmp_path):
    """Windows editors may start a UTF-8 file with a byte-order mark: it is no part of the first name or URL."""
    inventory = tmp_path / "devices.txt"
    inventory.write_text("kitchen ssh://pi@10.0.0.21/opt/basilar\n", encoding="utf-8-sig")
    assert [t.name for t in read_inventory(inventory)] == ["kitchen"]
    inventory.write_text("ssh://pi@10.0.0.21/opt/basilar\n", encoding="utf-8-sig")
    assert [t.url for t in read_inventory(inventory)] == ["ssh://pi@10.0.0.21/opt/basilar"]


def test_ipv6_addresses_are_bracketed_in_messages(tmp_path):
    """"::1:22203" reads as an address ending in :22203; messages write "[::1]:22203" as URLs do."""
    assert parse_target("ssh://pi@[::1]:22203/opt/b").address == "[::1]:22203"
    assert parse_target("ssh://pi@[::1]/opt/b").address == "[::1]"
    assert parse_target("ssh://pi@10.0.0.21:2222/opt/b").address == "10.0.0.21:2222"
    assert host_port("fe80::1", 22) == "[fe80::1]:22"  # the host key messages name the host asyncssh reports
    from firmware_tools.deploy_ssh import DeployError, SshOptions, connect
    target = parse_target("ssh://pi@[::1]:1/opt/b")  # nothing listens on port 1 (or there is no IPv6 at all)
    with pytest.raises(DeployError, match=r"cannot connect to \[::1\]:1: "):
        asyncio.run(connect(target, SshOptions(known_hosts=tmp_path / "known_hosts", connect_timeout=5)))


def test_inventory_refuses_a_name_used_twice(tmp_path):
    """The summary shows devices by name: two devices named alike would make rows that cannot be told apart."""
    inventory = tmp_path / "devices.txt"
    inventory.write_text("kitchen ssh://pi@10.0.0.21/opt/basilar\n"
                         "hall    ssh://pi@10.0.0.22/opt/basilar\n"
                         "kitchen ssh://pi@10.0.0.23/opt/basilar\n")
    with pytest.raises(TargetError, match=r"devices.txt:3: the name 'kitchen' is already used on line 1"):
        read_inventory(inventory)


def test_no_targets_at_all():
    with pytest.raises(TargetError, match="no targets given"):
        collect_targets([])


def test_every_end_of_a_serial_line_has_the_same_default_baud():
    """A UART has no autobauding: a device run with its defaults and a host deploying, reading or checking status
    with theirs must be on the same speed."""
    from edge.telemetry.agent import command_line
    from firmware_tools.cli import main

    def default(command):
        return next(p.default for p in main.get_command(None, command).params if p.name == "baud")

    assert {default("run"), default("service"), default("telemetry"), command_line().get_default("baud"),
            parse_target("serial:///dev/ttyUSB0").baud} == {115200}


def test_an_ipv6_address_without_brackets_gets_the_bracket_hint():
    with pytest.raises(TargetError, match=r"names no host; .*an IPv6 address goes in brackets: ssh://pi@\[fe80::1\]"):
        parse_target("ssh://root@::1/x")
    with pytest.raises(TargetError) as plain:
        parse_target("ssh://root@/x")
    assert "brackets" not in str(plain.value)
