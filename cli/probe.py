"""The memory-read ceiling decode is compared with: the core's streaming-read probe, once per thread count.

The probe reads a buffer of its own (1 GiB by default), so it runs in a child process: the
benchmark's peak RSS then stays the engine's.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from ._native import check, ffi, lib

PROBE_REPEATS = 5


def measure_read_bandwidth(n_bytes: int, n_threads: int) -> float:
    """Median GB/s over PROBE_REPEATS reads of a fresh n_bytes buffer by n_threads threads (in this process)."""
    out = ffi.new("double *")
    check(lib.hl_read_bandwidth(n_bytes, n_threads, PROBE_REPEATS, out), "read-bandwidth probe")
    return out[0]


class BandwidthProbe:
    """measure_read_bandwidth in a fresh child process, on first use for each thread count."""

    def __init__(self, n_bytes: int):
        self.n_bytes = n_bytes
        self._by_threads: dict[int, float] = {}

    def gb_per_s(self, n_threads: int) -> float:
        if n_threads not in self._by_threads:
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
                self._by_threads[n_threads] = child.submit(measure_read_bandwidth, self.n_bytes, n_threads).result()
        return self._by_threads[n_threads]
