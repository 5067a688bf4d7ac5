"""The commands a device runs work with none of the host-only packages (`pip install '.[runtime]'` has none of
them): each runs in a child Python in which importing any of them fails; the host's commands say what to install
there, and so does the build where the device lacks a compiler."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

HOST_ONLY = ("tensorflow", "keras", "scipy", "asyncssh", "nacl", "tqdm", "matplotlib", "pyworld")
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


@pytest.mark.parametrize("args, needs", [
    (["train", str(REPO / "tests" / "data" / "fsdd"), "--out", "{tmp}/model"], "keras, from basilar's host extra: "
     "pip install 'basilar[host]'"),
    (["convert", "{tmp}/model.keras", "--calibration", str(REPO / "tests" / "data" / "fsdd"), "--out",
      "{tmp}/bundle"], "keras, from basilar's host extra: pip install 'basilar[host]'"),
    (["bench", "frontend", "--seconds", "0.05", "--repeats", "1"], "scipy, from basilar's host extra: pip install "
     "scipy"),  # not tensorflow, which 32-bit Pi OS has no wheel of
])
def test_host_commands_on_a_device_name_the_extra_to_install(args, needs, tmp_path):
    """A device install has no tensorflow or scipy: the host's commands say what to install, no traceback."""
    (tmp_path / "model.keras").write_bytes(b"")
    args = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-c", WITHOUT_HOST_PACKAGES, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"needs {needs}" in result.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "bundle").exists()


def test_a_build_without_a_c_compiler_says_what_to_install(tmp_path):
    """A fresh Pi has no compiler: setup.py says which packages to install, where its probe of the compiler's
    flags crashed with FileNotFoundError."""
    result = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "CC": str(tmp_path / "cc")}, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"a C compiler, and there is none here ({tmp_path / 'cc'} not found)" in result.stderr
    assert "sudo apt install build-essential python3-dev" in result.stderr
