"""The C core's compile flags, in one place: build.py compiles with them and `hotlora bench` reports them.

build.py loads this file by path at build time (the package cannot be imported before the core
is compiled), so the flags reported at run time are the ones the build used.
"""
from __future__ import annotations

import sys


def compile_args(platform: str = sys.platform) -> list[str]:
    args = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    if platform != "win32":
        args.append("-pthread")
    return args
