"""Builds the Cython kernels. Everything else about the package lives in pyproject.toml.

The kernels are integer-only, so compiler flags change speed but never results: a build tuned for the
host CPU gives the same frames as a portable one. Set BASILAR_PORTABLE_BUILD=1 for wheels that must run
on other machines than the one that built them.
"""
import os
import subprocess
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

KERNELS = ["gammatone", "intlog", "frames"]


def _compiler_accepts(flag: str) -> bool:
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        cmd = [cc, flag, src, "-o", os.path.join(tmp, "probe")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def _compile_args() -> list[str]:
    args = ["-O3"]
    if os.environ.get("BASILAR_PORTABLE_BUILD") != "1" and sys.platform.startswith("linux"):
        for flag in ("-march=native", "-mcpu=native"):
            if _compiler_accepts(flag):
                args.append(flag)
                break
    return args


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
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )
)
