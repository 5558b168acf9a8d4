"""LoRA cost on the TinyLlama-shaped Q4_0 model: decode and prompt overhead per rank, and swap latency.

Interleaves the configurations (no adapter, rank 16, rank 64, ...) in every
repetition and reports medians, so machine noise hits all of them alike.

    python benches/lora.py [--cache /tmp/hotlora-bench] [--adapters r16:F16,r64:F16,r64:Q8_0] [--reps 7] [-t 2]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import hotlora

HERE = Path(__file__).resolve().parent


def ensure(path: Path, *args: str) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, *args, str(path)], check=True, cwd=HERE)
    return path


def time_decode(m: hotlora.Model, n: int) -> float:
    """ms per token over n single-token decodes after a 16-token prompt."""
    m.reset()
    m.eval_last(list(range(1, 17)))
    start = time.perf_counter()
    for _ in range(n):
        m.eval_last([5])
    return (time.perf_counter() - start) * 1e3 / n


def time_prompt(m: hotlora.Model, n: int) -> float:
    m.reset()
    start = time.perf_counter()
    m.eval_last(list(range(1, n + 1)))
    return (time.perf_counter() - start) * 1e3 / n


def swap_latency_us(m: hotlora.Model, a, b, n: int = 2000) -> float:
    """Median time of set_adapters alternating between two loaded adapters."""
    times = []
    for i in range(n):
        start = time.perf_counter_ns()
        m.set_adapters({a if i % 2 else b: 1.0})
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hotlora-bench"))
    ap.add_argument("--adapters", default="r16:F16,r64:F16,r64:Q8_0", help="rank:type of each adapter tried")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("-t", type=int, default=2)
    args = ap.parse_args()
    model_path = ensure(args.cache / "tinyllama-shaped-q4_0.gguf", "make_bench_model.py", "--type", "Q4_0")
    kinds = [(int(k.split(":")[0][1:]), k.split(":")[1]) for k in args.adapters.split(",")]
    with hotlora.Model(model_path, n_ctx=256, n_threads=args.t) as m:
        base_map = m.file.reader.data
        adapters = {f"r{r} {t}": m.load_adapter(ensure(args.cache / f"lora-r{r}-{t.lower()}.gguf",
                                                       "make_bench_adapter.py", "--rank", str(r), "--type", t))
                    for r, t in kinds}
        configs = {"none": {}} | {name: {a: 1.0} for name, a in adapters.items()}
        decode = {c: [] for c in configs}
        prompt = {c: [] for c in configs}
        for _ in range(args.reps):
            for name, scales in configs.items():
                m.set_adapters(scales)
                decode[name].append(time_decode(m, 16))
                prompt[name].append(time_prompt(m, 64))
        base_d, base_p = statistics.median(decode["none"]), statistics.median(prompt["none"])
        print(f"model {model_path.name}, {args.t} threads, {args.reps} interleaved repetitions, medians\n")
        print("| adapters | adapter MiB | decode ms/token | decode overhead | prompt ms/token | prompt overhead |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in configs:
            mib = sum(a.n_bytes for a in configs[name]) / 2**20
            d, p = statistics.median(decode[name]), statistics.median(prompt[name])
            print(f"| {name} | {mib:.1f} | {d:.2f} | {100 * (d / base_d - 1):+.1f}% | {p:.2f} | {100 * (p / base_p - 1):+.1f}% |")
        print(f"\nweights: {m.weight_bytes / 2**20:.0f} MiB; adapter bytes / weight bytes: " + ", ".join(
            f"{name} {a.n_bytes / m.weight_bytes:.1%}" for name, a in adapters.items()))
        first, second = list(adapters.values())[:2]
        print(f"swap latency (set_adapters between two loaded adapters): {swap_latency_us(m, first, second):.1f} µs median")
        print(f"base memory map unchanged by loading/swapping: {m.file.reader.data is base_map}")


if __name__ == "__main__":
    main()
