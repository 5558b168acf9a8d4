"""The memory-read ceiling decode is compared with: the core's streaming-read probe, once per thread count."""
from __future__ import annotations

from ._native import check, ffi, lib

PROBE_REPEATS = 5


class BandwidthProbe:
    """GB/s that n threads reach streaming `n_bytes` (median of PROBE_REPEATS reads), measured on first use."""

    def __init__(self, n_bytes: int):
        self.n_bytes = n_bytes
        self._by_threads: dict[int, float] = {}

    def gb_per_s(self, n_threads: int) -> float:
        if n_threads not in self._by_threads:
            out = ffi.new("double *")
            check(lib.hl_read_bandwidth(self.n_bytes, n_threads, PROBE_REPEATS, out), "read-bandwidth probe")
            self._by_threads[n_threads] = out[0]
        return self._by_threads[n_threads]
