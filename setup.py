"""Build script: compiles the Cython speedups in ``_speedups/`` into the package.

Each ``_speedups/<name>.pyx`` becomes the extension module ``tornadose.core.<name>``. When
Cython or a C compiler is missing, the install still succeeds and the package runs on
its pure-Python backend; the build says so clearly.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extensions if possible; never fail the install because of them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, broken toolchain, ...
            self._warn(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        sys.stderr.write(
            "\n*** tornadose: the compiled speedups could not be built "
            f"({type(exc).__name__}: {exc}).\n"
            "*** The package is installed with its pure-Python backend only.\n\n"
        )


def extensions() -> list:
    sources = sorted(glob.glob(os.path.join("_speedups", "*.pyx")))
    if not sources or os.environ.get("TORNADOSE_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("\n*** tornadose: Cython is not installed; pure-Python backend only.\n\n")
        return []
    from setuptools import Extension

    modules = [
        Extension(
            "tornadose.core." + os.path.splitext(os.path.basename(src))[0],
            [src],
            include_dirs=["_speedups"],  # tdeflate.h
        )
        for src in sources
    ]
    return cythonize(
        modules,
        compiler_directives={"language_level": "3", "embedsignature": True},
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
