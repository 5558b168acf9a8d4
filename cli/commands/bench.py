"""`hotlora bench`: llama-bench's pp/tg tests and markdown table, plus decode bandwidth."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..bench import BenchResult, run_test
from ..model import Model

Opt = typer.Option
COLUMNS = [("model", -30), ("size", 10), ("params", 10), ("backend", -10), ("threads", 7), ("test", 13),
           ("t/s", 20), ("GB/s", 8)]


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:.2f} GiB"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def _row(cells: list[str]) -> str:
    """llama-bench's " %*s |" cells: negative width = left-aligned (widths count characters)."""
    return "|" + "".join(f" {cell:<{-w}} |" if w < 0 else f" {cell:>{w}} |" for (_, w), cell in zip(COLUMNS, cells))


def _header() -> str:
    sep = "|" + "".join(f" {'-' * (abs(w) - 1)}{'-' if w < 0 else ':'} |" for _, w in COLUMNS)
    return _row([c for c, _ in COLUMNS]) + "\n" + sep


def bench(
    model: Annotated[Optional[Path], Opt("-m", "--model", help="GGUF model (default: the bundled tiny model)")] = None,
    n_prompt: Annotated[int, Opt("-p", "--n-prompt", help="prompt tokens (0 = no prompt test)", min=0)] = 512,
    n_gen: Annotated[int, Opt("-n", "--n-gen", help="generated tokens (0 = no generation test)", min=0)] = 128,
    repetitions: Annotated[int, Opt("-r", "--repetitions", help="timed runs per test", min=1)] = 5,
    threads: Annotated[Optional[int], Opt("-t", "--threads", help="threads (default: physical cores)", min=1)] = None,
    batch_size: Annotated[int, Opt("-b", "--batch-size", help="prompt tokens per decode", min=1)] = 512,
    output: Annotated[str, Opt("-o", "--output", help="md or json")] = "md",
) -> None:
    """Measure prompt processing and generation speed, like llama-bench."""
    if output not in ("md", "json"):
        raise typer.BadParameter(f"'{output}' is not md or json", param_hint="--output")
    tests = [(p, g) for p, g in ((n_prompt, 0), (0, n_gen)) if p or g]
    results: list[BenchResult] = []
    with Model(model, n_ctx=max(n_prompt + n_gen, 1), n_threads=threads, n_batch=batch_size) as m:
        label = f"{m.hparams.arch} {m.path.stem}"
        n_params = sum(int(t.ne[0]) * int(t.ne[1]) * int(t.ne[2]) * int(t.ne[3]) for t in m._file.tensors.values())
        if output == "md":
            print(_header(), flush=True)
        for p, g in tests:
            r = run_test(m, p, g, repetitions)
            results.append(r)
            if output == "md":
                gbs = f"{r.decode_gb_per_s:.2f}" if r.decode_gb_per_s is not None else ""
                print(_row([label[:30], _size(m.weight_bytes), _params(n_params), "CPU", str(m.n_threads), r.test,
                            f"{r.avg_ts:.2f} ± {r.stddev_ts:.2f}", gbs]), flush=True)
        if output == "json":
            json.dump([{"model_filename": str(m.path), "model_size": m.weight_bytes, "model_n_params": n_params,
                        "n_threads": m.n_threads, "n_prompt": r.n_prompt, "n_gen": r.n_gen, "test": r.test,
                        "avg_ts": r.avg_ts, "stddev_ts": r.stddev_ts, "decode_gb_per_s": r.decode_gb_per_s,
                        "samples_ns": r.samples_ns, "samples_ts": r.samples_ts} for r in results], sys.stdout, indent=2)
            print()
