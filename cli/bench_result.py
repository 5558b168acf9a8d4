"""One row of a benchmark: a test on one model, thread count, batch size and adapter, and its statistics.

t/s follows llama-bench (the mean and sample standard deviation of per-run rates); the columns
derived from it (overhead against the base row, GB/s, share of the read probe) use medians, which
a noisy machine moves less.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .bench import RunTime, TestSpec


@dataclass(frozen=True)
class ModelInfo:
    filename: str
    type: str          # "llama hotlora-tiny": architecture and file name
    size: int          # bytes of all tensors
    n_params: int


@dataclass(frozen=True)
class Variant:
    """The adapter a row runs with; path None is the base model."""
    path: Path | None = None
    scale: float = 1.0
    n_bytes: int = 0   # the adapter's tensor bytes, read once per decoded token

    @property
    def label(self) -> str:
        if self.path is None:
            return "none"
        return self.path.name if self.scale == 1.0 else f"{self.path.name} @{self.scale:g}"


@dataclass
class BenchRow:
    model: ModelInfo
    n_batch: int
    n_threads: int
    test: TestSpec
    variant: Variant
    runs: list[RunTime]
    test_time: str                      # RFC 3339, when the test started
    base_median_ts: float | None        # the same test's base row, for rows with an adapter
    probe_gb_per_s: float | None        # read ceiling at n_threads (generation-only tests, probe on)
    peak_rss_bytes: int

    @property
    def samples_ns(self) -> list[int]:
        return [r.total_ns for r in self.runs]

    @property
    def samples_ts(self) -> list[float]:
        return [1e9 * self.test.n_tokens / ns for ns in self.samples_ns]

    avg_ns = property(lambda self: round(statistics.fmean(self.samples_ns)))
    stddev_ns = property(lambda self: round(_stdev(self.samples_ns)))
    avg_ts = property(lambda self: statistics.fmean(self.samples_ts))
    stddev_ts = property(lambda self: _stdev(self.samples_ts))
    median_ts = property(lambda self: statistics.median(self.samples_ts))

    @property
    def overhead_pct(self) -> float | None:
        """Extra time per token against the base row (median rates); None on base rows."""
        if self.base_median_ts is None:
            return None
        return (self.base_median_ts / self.median_ts - 1.0) * 100.0

    @property
    def bytes_per_token(self) -> int:
        """What one decode step reads: every weight, plus the active adapter's tensors."""
        return self.model.size + self.variant.n_bytes

    @property
    def decode_gb_per_s(self) -> float | None:
        """Bytes read per second while generating (generation-only tests)."""
        return self.median_ts * self.bytes_per_token / 1e9 if self.test.is_generation_only else None

    @property
    def pct_of_probe(self) -> float | None:
        gbs = self.decode_gb_per_s
        return 100.0 * gbs / self.probe_gb_per_s if gbs is not None and self.probe_gb_per_s else None

    @property
    def python_ms_per_token(self) -> float | None:
        """Median time per generated token spent outside hl_decode_batch (generation-only tests)."""
        if not self.test.is_generation_only:
            return None
        return statistics.median((r.total_ns - r.decode_ns) / self.test.n_gen for r in self.runs) / 1e6


def _stdev(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
