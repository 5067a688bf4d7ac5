"""The commands a device runs work with none of the host-only packages (`pip install '.[runtime]'` has none of
them): each runs in a child Python in which importing any of them fails."""
import subprocess
import sys

import pytest

from tests.conftest import REPO

HOST_ONLY = ("tensorflow", "keras", "scipy", "asyncssh", "nacl", "tqdm", "matplotlib")
WITHOUT_HOST_PACKAGES = f"""
import sys
class HostOnly:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HOST_ONLY!r}:
            raise ImportError("host-only package imported on a device: " + name)
sys.meta_path.insert(0, HostOnly())
sys.argv[0] = "basilar"
from firmware_tools.cli import main
main()
"""


@pytest.mark.parametrize("args", [
    ["run", "demo"],
    ["eval", "default", str(REPO / "tests" / "data" / "fsdd")],
    ["eval-stream", "default", str(REPO / "edge" / "demo" / "demo.wav"), "--truth",
     str(REPO / "edge" / "demo" / "demo_truth.csv")],
    ["bundle", "verify", "default"],
])
def test_device_commands_need_no_host_package(args):
    result = subprocess.run([sys.executable, "-c", WITHOUT_HOST_PACKAGES, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "host-only package" not in result.stderr
