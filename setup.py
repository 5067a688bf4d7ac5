"""Builds the Cython kernels. Everything else about the package lives in pyproject.toml.

The kernels are integer-only, so compiler flags change speed but never results: a build tuned for the
host CPU gives the same frames as a portable one. Set BASILAR_PORTABLE_BUILD=1 for wheels that must run
on other machines than the one that built them (a wheel built on one Pi for a fleet).
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

KERNELS = ["gammatone", "intlog", "frames"]


BUILD_TOOLS = "sudo apt install build-essential python3-dev (Raspberry Pi OS, Debian, Ubuntu)"


def _compiler() -> list[str]:
    """The C compiler setuptools will call: $CC, else the one this Python was built with."""
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")


def _check_build_tools() -> None:
    """Say what to install before setuptools fails on it in the middle of a build."""
    cc = _compiler()
    if not cc or shutil.which(cc[0]) is None:
        sys.exit(f"error: basilar compiles its integer kernels with a C compiler, and there is none here "
                 f"({' '.join(cc) or 'CC is empty'} not found): {BUILD_TOOLS}")
    # where setuptools looks (INCLUDEPY), and where sysconfig says (they differ for a relocated Python)
    places = {sysconfig.get_paths()["include"], sysconfig.get_config_var("INCLUDEPY") or ""} - {""}
    if not any(os.path.exists(os.path.join(place, "Python.h")) for place in places):
        sys.exit(f"error: basilar compiles its integer kernels against Python's headers, and Python.h is not in "
                 f"{' or '.join(sorted(places))}: {BUILD_TOOLS}")


def _compiler_accepts(flag: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        cmd = [*_compiler(), flag, src, "-o", os.path.join(tmp, "probe")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def _compile_args() -> list[str]:
    args = ["-O3", "-g0"]  # no debug information: it would triple what a device installs
    if os.environ.get("BASILAR_PORTABLE_BUILD") != "1" and sys.platform.startswith("linux"):
        for flag in ("-march=native", "-mcpu=native"):
            if _compiler_accepts(flag):
                args.append(flag)
                break
    return args


_check_build_tools()

import numpy  # noqa: E402 - after the check, which needs neither
from Cython.Build import cythonize  # noqa: E402
from setuptools import Extension, setup  # noqa: E402

extensions = [
    Extension(
        f"cython_kernels.{name}",
        [f"cython_kernels/{name}.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=_compile_args(),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions,
        build_dir="build/cython",  # the generated C stays out of the package folder, and so out of wheels
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
