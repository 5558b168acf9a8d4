"""What a benchmark record says about the build and the machine: commit, compile flags, kernels, CPU, memory."""
from __future__ import annotations

import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from ._native import ffi, lib

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when running from one (editable install)


@dataclass(frozen=True)
class BuildInfo:
    commit: str        # `git describe` of the source, else the package version
    number: int        # commits in the source's history (llama-bench's build_number), else 0
    flags: str         # the C core's compile flags
    kernel_set: str    # the SIMD kernels the core chose at run time


def _git(*args: str) -> str | None:
    """A git command's output in the source checkout, or None outside one (an installed wheel)."""
    if not (SOURCE_ROOT / "build.py").is_file() or not (SOURCE_ROOT / "native").is_dir():
        return None
    try:
        proc = subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def build_info() -> BuildInfo:
    count = _git("rev-list", "--count", "HEAD")
    return BuildInfo(commit=_git("describe", "--always", "--dirty") or __version__,
                     number=int(count) if count and count.isdigit() else 0,
                     flags=ffi.string(lib.hl_build_flags()).decode("utf-8", "replace"),
                     kernel_set=ffi.string(lib.hl_simd_name()).decode("ascii"))


def cpu_info() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
