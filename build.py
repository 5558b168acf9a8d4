"""CFFI builder for the hotlora C core (API mode, out-of-line).

`ffibuilder` compiles every file in native/src into the extension module
`hotlora._core`, declaring exactly the public header native/include/hotlora.h.

This module is also the project's PEP 517 build backend (see pyproject.toml):
it is setuptools' own backend with one change, that setup() receives
`cffi_modules`, which pyproject.toml has no key for. So `pip install .` and
`pip install -e .` build the core with no other step.
"""
import os
import re
import sys
from pathlib import Path

from cffi import FFI
from setuptools import build_meta as _setuptools_backend

ROOT = Path(__file__).resolve().parent
HEADER = ROOT / "native" / "include" / "hotlora.h"
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "native" / "src").glob("*.c"))


def _cdef_text(header: str) -> str:
    """The header without comments and preprocessor lines, as cffi's cdef wants it."""
    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _compile_args() -> list[str]:
    """The C core's flags; HOTLORA_NO_SIMD=1 compiles every SIMD kernel out (the scalar references only)."""
    args = ["-O3", "-std=c11", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    if sys.platform != "win32":
        args.append("-pthread")
    if os.environ.get("HOTLORA_NO_SIMD") == "1":
        args.append("-DHL_NO_SIMD")
    return args + _sanitize_args()


def _sanitize_args() -> list[str]:
    """HOTLORA_SANITIZE=1: AddressSanitizer and UBSan, any report fatal (compile and link flags; CI only).
    -O0 (after -O3, so it wins): instrumented at -O1, the SIMD kernel files take minutes each to compile."""
    if os.environ.get("HOTLORA_SANITIZE") != "1":
        return []
    return ["-O0", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]


def _flags_macro(args: list[str]) -> tuple[str, str]:
    """HL_BUILD_FLAGS, the string hl_build_flags() returns: the flags as this build used them."""
    text = " ".join(args).replace("\\", "\\\\").replace('"', '\\"')
    return ("HL_BUILD_FLAGS", f'"{text}"')


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text(HEADER.read_text()))
ffibuilder.set_source(
    "hotlora._core",
    '#include "hotlora.h"',
    sources=SOURCES,
    include_dirs=[str(HEADER.parent)],
    extra_compile_args=_compile_args(),
    define_macros=[_flags_macro(_compile_args())],
    extra_link_args=["-pthread", "-lm"] + _sanitize_args(),
)


class _Backend(_setuptools_backend._BuildMetaBackend):
    def run_setup(self, setup_script: str = "setup.py") -> None:
        from setuptools import setup

        os.chdir(ROOT)
        setup(cffi_modules=["build.py:ffibuilder"])


_backend = _Backend()
get_requires_for_build_wheel = _backend.get_requires_for_build_wheel
get_requires_for_build_sdist = _backend.get_requires_for_build_sdist
get_requires_for_build_editable = _backend.get_requires_for_build_editable
prepare_metadata_for_build_wheel = _backend.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _backend.prepare_metadata_for_build_editable
build_wheel = _backend.build_wheel
build_sdist = _backend.build_sdist
build_editable = _backend.build_editable

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT / "build"), verbose=True)
