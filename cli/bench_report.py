"""`hotlora bench` output: llama-bench's markdown table, or its records as JSON, JSONL or CSV.

Records carry llama-bench's field names where one applies, then hotlora's: the adapter, the
median rate, overhead against the base row, decode bandwidth against the read probe, the
Python time per generated token, peak RSS, and how the core was built. Every printer writes
rows as tests finish (a test's rows, base and adapters, finish together).
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from dataclasses import dataclass
from typing import Callable, TextIO

from .bench_result import BenchRow
from .sysinfo import BuildInfo

FORMATS = ("md", "json", "jsonl", "csv")
BACKEND = "CPU"
ARRAY_FIELDS = ("samples_ns", "samples_ts")  # JSON only, as llama-bench


@dataclass(frozen=True)
class RunInfo:
    """What every record repeats: the build, the machine, the KV cache type and whether weights are repacked."""
    build: BuildInfo
    cpu_info: str
    cache_type: str
    repack: bool


def record(row: BenchRow, info: RunInfo) -> dict:
    v = row.variant
    return {
        "build_commit": info.build.commit, "build_number": info.build.number,
        "build_flags": info.build.flags, "kernel_set": info.build.kernel_set,
        "cpu_info": info.cpu_info, "backends": BACKEND,
        "model_filename": row.model.filename, "model_type": row.model.type,
        "model_size": row.model.size, "model_n_params": row.model.n_params,
        "n_batch": row.n_batch, "n_threads": row.n_threads, "type_k": info.cache_type, "type_v": info.cache_type,
        "repack": info.repack,
        "n_prompt": row.test.n_prompt, "n_gen": row.test.n_gen, "test": row.test.name,
        "adapter": v.path.name if v.path else "none", "adapter_filename": str(v.path) if v.path else None,
        "adapter_scale": v.scale if v.path else None, "adapter_size": v.n_bytes,
        "test_time": row.test_time,
        "avg_ns": row.avg_ns, "stddev_ns": row.stddev_ns,
        "avg_ts": row.avg_ts, "stddev_ts": row.stddev_ts, "median_ts": row.median_ts,
        "overhead_pct": row.overhead_pct,
        "decode_bytes_per_token": row.bytes_per_token if row.test.is_generation_only else None,
        "decode_gb_per_s": row.decode_gb_per_s, "probe_gb_per_s": row.probe_gb_per_s,
        "pct_of_probe": row.pct_of_probe, "python_ms_per_token": row.python_ms_per_token,
        "peak_rss_bytes": row.peak_rss_bytes,
        "samples_ns": row.samples_ns, "samples_ts": row.samples_ts,
    }


class JsonPrinter:
    """A JSON array of records, one written as each row finishes (llama-bench's layout)."""

    def __init__(self, info: RunInfo, out: TextIO = sys.stdout):
        self.info, self.out, self.first = info, out, True

    def header(self) -> None:
        self.out.write("[\n")

    def rows(self, rows: list[BenchRow]) -> None:
        for row in rows:
            text = json.dumps(record(row, self.info), indent=2)
            self.out.write(("" if self.first else ",\n") + "\n".join("  " + line for line in text.splitlines()))
            self.first = False
        self.out.flush()

    def footer(self) -> None:
        self.out.write("\n]\n")


class JsonlPrinter:
    def __init__(self, info: RunInfo, out: TextIO = sys.stdout):
        self.info, self.out = info, out

    def header(self) -> None:
        pass

    def rows(self, rows: list[BenchRow]) -> None:
        for row in rows:
            self.out.write(json.dumps(record(row, self.info)) + "\n")
        self.out.flush()

    def footer(self) -> None:
        pass


class CsvPrinter:
    """llama-bench's CSV: a header row, then every value quoted; no per-run arrays; empty for n/a."""

    def __init__(self, info: RunInfo, out: TextIO = sys.stdout):
        self.info, self.out, self.first = info, out, True
        self.writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")

    def header(self) -> None:
        pass  # written with the first row, from its record's fields

    def rows(self, rows: list[BenchRow]) -> None:
        for row in rows:
            values = {k: v for k, v in record(row, self.info).items() if k not in ARRAY_FIELDS}
            if self.first:
                self.writer.writerow(values)
                self.first = False
            self.writer.writerow(["" if v is None else v for v in values.values()])
        self.out.flush()

    def footer(self) -> None:
        pass


@dataclass(frozen=True)
class Column:
    name: str
    width: int                           # llama-bench's: negative = left-aligned
    cell: Callable[[BenchRow], str]


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:.2f} GiB"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def _number(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:.2f}{unit}"


@dataclass(frozen=True)
class TableLayout:
    """Which optional columns the table has, decided before the first row."""
    show_batch: bool        # several batch sizes, or not the default
    adapter_width: int      # 0: no adapters, no adapter or overhead columns
    show_gbs: bool          # some test is generation-only
    show_probe: bool


def columns(layout: TableLayout) -> list[Column]:
    cols = [Column("model", -30, lambda r: r.model.type), Column("size", 10, lambda r: _size(r.model.size)),
            Column("params", 10, lambda r: _params(r.model.n_params)), Column("backend", -10, lambda r: BACKEND),
            Column("threads", 7, lambda r: str(r.n_threads))]
    if layout.show_batch:
        cols.append(Column("n_batch", 7, lambda r: str(r.n_batch)))
    if layout.adapter_width:
        cols.append(Column("adapter", -max(10, layout.adapter_width), lambda r: r.variant.label))
    cols += [Column("test", 15, lambda r: r.test.name),
             Column("t/s", 20, lambda r: f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}")]
    if layout.adapter_width:
        cols.append(Column("overhead %", 10, lambda r: _number(r.overhead_pct)))
    if layout.show_gbs:
        cols.append(Column("GB/s", 10, lambda r: _number(r.decode_gb_per_s)))
    if layout.show_probe:
        cols.append(Column("% of probe", 10, lambda r: _number(r.pct_of_probe)))
    return cols


def _line(cells: list[str], widths: list[int]) -> str:
    return "|" + "".join(f" {c:<{-w}} |" if w < 0 else f" {c:>{w}} |" for c, w in zip(cells, widths))


class MarkdownPrinter:
    """llama-bench's table (" %*s |" cells), then its build line and a line of hotlora's figures."""

    def __init__(self, info: RunInfo, layout: TableLayout, out: TextIO = sys.stdout):
        self.info, self.out = info, out
        self.columns = columns(layout)
        self.widths = [c.width for c in self.columns]
        self.python_ms: list[float] = []
        self.peak_rss = 0

    def header(self) -> None:
        rule = "|" + "".join(f" {'-' * (abs(w) - 1)}{'-' if w < 0 else ':'} |" for w in self.widths)
        self.out.write(_line([c.name for c in self.columns], self.widths) + "\n" + rule + "\n")
        self.out.flush()

    def rows(self, rows: list[BenchRow]) -> None:
        for row in rows:
            self.out.write(_line([c.cell(row) for c in self.columns], self.widths) + "\n")
            if row.python_ms_per_token is not None:
                self.python_ms.append(row.python_ms_per_token)
            self.peak_rss = max(self.peak_rss, row.peak_rss_bytes)
        self.out.flush()

    def footer(self) -> None:
        b = self.info.build
        repacked = "" if self.info.repack else ", no repacking"
        self.out.write(f"\nbuild: {b.commit} ({b.number}), kernels {b.kernel_set}{repacked}\n")
        line = f"peak RSS {_size(self.peak_rss)}"
        if self.python_ms:
            line += (f", Python {statistics.median(self.python_ms):.3f} ms per generated token outside hl_decode_batch"
                     f" (median of the tg rows)")
        self.out.write(line + "\n")
