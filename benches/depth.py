"""Decode speed as the context fills: prompt t/s for a prompt of N tokens, then ms per decoded token at
that depth (attention reads all N cached cells per token). TinyLlama-shaped Q4_0, 2 threads.

    python benches/depth.py [--depths 16,256,1000] [--cache /tmp/hotlora-bench] [-t 2] [--reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import hotlora


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="16,256,1000")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hotlora-bench"))
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    model = args.cache / "tinyllama-shaped-q4_0.gguf"  # made by benches/engine.py
    with hotlora.Model(model, n_ctx=max(depths) + 16, n_threads=args.t) as m:
        print("| depth | prompt t/s | decode ms/token |\n|---:|---:|---:|")
        for n in depths:
            prompt = np.random.default_rng(0).integers(0, m.n_vocab, n).tolist()
            pp, tg = [], []
            for _ in range(args.reps):
                m.reset()
                start = time.perf_counter()
                m.eval_last(prompt)
                pp.append(n / (time.perf_counter() - start))
                start = time.perf_counter()
                for _ in range(8):
                    m.eval_last([5])
                tg.append((time.perf_counter() - start) / 8 * 1e3)
            print(f"| {n} | {statistics.median(pp):.1f} | {statistics.median(tg):.1f} |")


if __name__ == "__main__":
    main()
