"""Kernel benchmark: the multi-token mat-mul (hl_mat_mul, one thread) on TinyLlama's projection shapes.

For each weight type, random weights of shape [n_out, n_in] are quantized by the core, then one
hl_mat_mul of T tokens is timed against T single-token calls (the row-by-token dot loop every
mat-mul used to be). Reports GOP/s (2 * n_in * n_out * T per call) and the speed-up of the batch. With
--repack, a type this CPU repacks at load (hl_repack_type) is measured again in its repacked layout (rows
named e.g. Q4_0_R16), as the engine runs it by default.

    python benches/gemm.py [--types Q4_0,Q8_0,Q4_K] [--tokens 1,16,64,128] [--rows 2048] [--cols 2048] [-r 5]
                           [--repack]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hotlora._core import ffi, lib
from hotlora._native import TYPE_IDS
from hotlora.quantize import encode
from hotlora.repack import repack_rows

AUTO = 0


def time_call(fn, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="F32,F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K")
    ap.add_argument("--tokens", default="1,16,64,128")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--repack", action="store_true", help="also measure the repacked layouts")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n_in, n_out = args.cols, args.rows
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    print(f"kernel set: {ffi.string(lib.hl_simd_name()).decode()}; W [{n_out} x {n_in}], one thread")
    print(f"{'type':8s} {'T':>4s} {'batch GOP/s':>12s} {'per-token GOP/s':>16s} {'speed-up':>9s}")
    for name in args.types.split(","):
        raw, type_id = encode(w, name, n_threads=2), TYPE_IDS[name]
        layouts = [(name, raw, type_id)] + (repacked(name, raw, type_id, n_in, n_out) if args.repack else [])
        for name, raw, type_id in layouts:
            measure(name, raw, type_id, args, rng, n_in, n_out)


def repacked(name: str, raw: np.ndarray, type_id: int, n_in: int, n_out: int) -> list:
    """[(name, bytes, type id)] of the layout this CPU repacks the type into, or [] if none."""
    packed = repack_rows(type_id, raw, n_in, n_out)
    return [] if packed is None else [(f"{name}_R16", *packed)]


def measure(name: str, raw: np.ndarray, type_id: int, args, rng, n_in: int, n_out: int) -> None:
    for T in (int(t) for t in args.tokens.split(",")):
        x = rng.standard_normal((T, n_in)).astype(np.float32)
        y = np.empty((T, n_out), dtype=np.float32)
        wp, yp = ffi.from_buffer(raw), ffi.from_buffer("float[]", y, require_writable=True)
        xs = [ffi.from_buffer("float[]", x[t]) for t in range(T)]
        xp = ffi.from_buffer("float[]", x)

        def batch():
            lib.hl_mat_mul(type_id, wp, n_in, n_out, xp, T, yp, AUTO)

        def per_token():
            for t in range(T):
                lib.hl_mat_mul(type_id, wp, n_in, n_out, xs[t], 1, yp, AUTO)

        ops = 2.0 * n_in * n_out * T
        tb, tp = time_call(batch, args.r), time_call(per_token, args.r)
        print(f"{name:8s} {T:4d} {ops / tb / 1e9:12.1f} {ops / tp / 1e9:16.1f} {tp / tb:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
