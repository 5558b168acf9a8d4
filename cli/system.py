"""Facts about the machine the engine runs on."""
from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores available to this process (llama.cpp's default thread count)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as f:
            cores, physical = set(), None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    cores.add((physical, value.strip()))
        if cores:
            return max(1, min(len(cores), available))
    except OSError:
        pass
    return max(1, available)
