"""The 32-bit Raspberry Pi OS install: tflite-runtime with numpy<2, no ai-edge-litert, no extras.

A fresh virtual environment gets exactly that from PyPI, and basilar built from this checkout. The shipped
bundle must run there through tflite-runtime and hear the demo as ai-edge-litert does. tflite-runtime's x86-64
wheel runs int8 models on TFLite's built-in kernels (its XNNPACK takes no int8 operations), so its posteriors
must equal, bit for bit, those of ai-edge-litert told to use its built-in kernels (`StepRunner(builtin_kernels=
True)`); the front end, compiled again there against numpy 1, must give the same frames.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.frontend import Frontend
from edge.runner import StepRunner
from edge.sources import FileSource
from tests.conftest import REPO, require

DEVICE_PACKAGES = ("numpy<2", "tflite-runtime")

# Run in the fallback environment: the demo's frames and posteriors, saved for the test to compare.
POSTERIORS = """
import sys
import numpy as np
from edge.bundle import load_bundle
from edge.frontend import Frontend
from edge.runner import StepRunner
from edge.sources import FileSource

bundle = load_bundle("default")
audio = np.concatenate(list(FileSource(sys.argv[1], bundle.frontend_config.sample_rate, stop=None).chunks()))
frames = Frontend(bundle.frontend_config).process(audio)
runner = StepRunner(bundle)
np.savez(sys.argv[2], frames=frames, posteriors=runner.run(frames), runtime=runner.runtime,
         numpy=np.__version__)
"""


@pytest.fixture(scope="module")
def fallback_python(tmp_path_factory):
    """The Python of a new virtual environment holding DEVICE_PACKAGES and basilar (no extras)."""
    require(shutil.which("git") is not None and (REPO / ".git").exists(), "a git checkout of basilar and git")
    root = tmp_path_factory.mktemp("fallback")
    source = root / "basilar"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):  # the tracked files only: no build left-overs
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              *DEVICE_PACKAGES, str(source)], capture_output=True, text=True, timeout=900)
    require(install.returncode == 0, f"PyPI for `pip install {' '.join(DEVICE_PACKAGES)} basilar`, which failed:\n"
            + install.stderr[-2000:])
    return python


def run_in(python, *args, cwd):
    """A command in the fallback environment, away from this checkout so that its own basilar is imported."""
    return subprocess.run([str(python), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_environment_is_the_32_bit_pi_one(fallback_python, tmp_path):
    probe = run_in(fallback_python, "-c", "import importlib.util, numpy, edge; print(numpy.__version__); "
                   "print(importlib.util.find_spec('ai_edge_litert') is None); print(edge.__file__)", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    numpy_version, no_litert, edge_file = probe.stdout.split()
    assert numpy_version.startswith("1.") and no_litert == "True"
    assert str(fallback_python.parent.parent) in edge_file  # the installed basilar, not this checkout


def test_the_demo_runs_on_tflite_runtime_and_hears_what_ai_edge_litert_hears(fallback_python, tmp_path):
    fallback = run_in(fallback_python, "-m", "firmware_tools.cli", "run", "demo", "--json", cwd=tmp_path)
    assert fallback.returncode == 0, fallback.stderr
    assert "x real time on tflite-runtime, 20 detections" in fallback.stderr
    here = subprocess.run([sys.executable, "-m", "firmware_tools.cli", "run", "demo", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr
    assert "on ai-edge-litert" in here.stderr
    theirs, ours = ([json.loads(line) for line in r.stdout.splitlines()] for r in (fallback, here))
    assert [d["label"] for d in theirs] == [d["label"] for d in ours]
    for a, b in zip(theirs, ours):  # the two runtimes' int8 arithmetic rounds differently: a hop at most
        assert abs(a["start_s"] - b["start_s"]) <= 0.011 and abs(a["end_s"] - b["end_s"]) <= 0.011
        assert abs(a["score"] - b["score"]) <= 0.005  # measured: 0.0005 at most


def test_tflite_runtime_computes_exactly_what_the_builtin_kernels_compute(fallback_python, tmp_path):
    demo = REPO / "edge" / "demo" / "demo.wav"
    result = run_in(fallback_python, "-c", POSTERIORS, demo, tmp_path / "fallback.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fallback = np.load(tmp_path / "fallback.npz")
    assert str(fallback["runtime"]) == "tflite-runtime" and str(fallback["numpy"]).startswith("1.")

    bundle = load_bundle("default")
    audio = np.concatenate(list(FileSource(demo, bundle.frontend_config.sample_rate, stop=None).chunks()))
    frames = Frontend(bundle.frontend_config).process(audio)
    np.testing.assert_array_equal(fallback["frames"], frames)  # the front end built against numpy 1: same frames
    builtin = StepRunner(bundle, builtin_kernels=True).run(frames)
    np.testing.assert_array_equal(fallback["posteriors"], builtin)
    # XNNPACK (ai-edge-litert's default) rounds some frames differently; the builtin run above is not a copy of it.
    assert not np.array_equal(StepRunner(bundle).run(frames), builtin)


def test_tflite_runtime_under_numpy_2_is_a_clear_error_not_a_crash(fallback_python, tmp_path):
    """`pip install tflite-runtime .` without 'numpy<2' gets numpy 2, under which tflite-runtime imports and then
    fails building an interpreter (SystemError): that runtime is passed over with its reason, not a crash.
    Last in this module: it changes the fallback environment."""
    upgrade = subprocess.run([str(fallback_python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "numpy>=2"], capture_output=True, text=True, timeout=900)
    require(upgrade.returncode == 0, "PyPI for numpy 2, which failed:\n" + upgrade.stderr[-2000:])
    result = run_in(fallback_python, "-m", "firmware_tools.cli", "run", "demo", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    # numpy prints its own warning (with the stack of the import) when tflite-runtime loads; basilar's word is last
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: no working TFLite interpreter") and "tflite-runtime: SystemError" in last, last
    assert "numpy<2" in last  # and what to install


# The last fallback: TensorFlow's tf.lite, in a child Python in which the other two runtimes cannot be imported.
ONLY_TENSORFLOW = """
import sys
class OtherRuntimes:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ai_edge_litert", "tflite_runtime"):
            raise ImportError("hidden to leave only tensorflow: " + name)
sys.meta_path.insert(0, OtherRuntimes())
sys.argv[0] = "basilar"
from firmware_tools.cli import main
main()
"""


def test_the_demo_on_tensorflow_prints_none_of_tensorflows_start_up_notices():
    """Through tf.lite, `basilar run` began with TensorFlow's absl, oneDNN and CPU-feature log lines on standard
    error, before basilar's own: noise on every start of a service."""
    require(importlib.util.find_spec("tensorflow") is not None, "the Python package 'tensorflow'")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    result = subprocess.run([sys.executable, "-c", ONLY_TENSORFLOW, "run", "demo"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "x real time on tensorflow, 20 detections" in result.stderr
    assert all(line.startswith("basilar: ") for line in result.stderr.splitlines()), result.stderr
