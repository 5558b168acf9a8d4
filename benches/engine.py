"""Engine benchmark: llama-bench's pp/tg tests on TinyLlama-shaped random models, plus a bandwidth probe.

Makes the models once (benches/make_bench_model.py) in a cache folder, then for
each weight type runs `hotlora bench` and reports decode speed as tokens/s and as
weight bytes streamed per second next to a memory-read probe taken in the same run.

    python benches/engine.py [--types Q4_0,Q8_0] [--cache /tmp/hotlora-bench] [-p 128] [-n 32] [-r 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def read_bandwidth_gbs(n_threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Median GB/s of n_threads summing disjoint slices of a large float32 array (numpy releases the GIL)."""
    data = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    slices = np.array_split(data, n_threads)
    rates = []
    for _ in range(repeats):
        threads = [threading.Thread(target=np.sum, args=(s,)) for s in slices]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates.append(data.nbytes / (time.perf_counter() - start) / 1e9)
    return float(np.median(rates))


def ensure_model(cache: Path, qtype: str) -> Path:
    path = cache / f"tinyllama-shaped-{qtype.lower()}.gguf"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "make_bench_model.py"), str(path), "--type", qtype], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_0,Q8_0")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hotlora-bench"))
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    args = ap.parse_args()
    print(f"read-bandwidth probe ({args.t} threads): {read_bandwidth_gbs(args.t):.1f} GB/s\n")
    for qtype in args.types.split(","):
        model = ensure_model(args.cache, qtype)
        proc = subprocess.run([sys.executable, "-m", "hotlora", "bench", "-m", str(model), "-p", str(args.p),
                               "-n", str(args.n), "-r", str(args.r), "-t", str(args.t), "-o", "json"],
                              check=True, capture_output=True, text=True)
        for r in json.loads(proc.stdout):
            gbs = f", {r['decode_gb_per_s']:.1f} GB/s of weights" if r["decode_gb_per_s"] else ""
            print(f"{qtype:5s} {r['test']:>6s}: {r['avg_ts']:8.2f} ± {r['stddev_ts']:.2f} t/s{gbs}")
    print(f"\nprobe again ({args.t} threads): {read_bandwidth_gbs(args.t):.1f} GB/s")


if __name__ == "__main__":
    main()
