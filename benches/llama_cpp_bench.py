"""hotlora against llama.cpp, side by side on the same files: `hotlora bench` and `llama-bench`, interleaved.

Each round runs, for every model of the bench set (benches/make_bench_set.py), one repetition of the
same tests in both engines, in alternating order (llama.cpp first in even rounds), plus the C core's
read-bandwidth probe; medians over the rounds, ratios hotlora / llama.cpp. llama-bench comes from
llama.cpp built offline from the sources in pip's llama-cpp-python sdist (never committed), e.g.

    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B /tmp/lcpp-build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build /tmp/lcpp-build -j2 --target llama-bench

    python benches/llama_cpp_bench.py --llama-bench /tmp/lcpp-build/bin/llama-bench \\
        [--types q4_0,q4_k_m,q8_0,f16,bf16] [-p 128,512] [-n 64] [-t 2] [--rounds 5] [--raw out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from hotlora.bench import TestSpec
from hotlora.probe import measure_read_bandwidth


def run_json(cmd: list[str]) -> list[dict]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def one_round(engine: str, args, model: Path) -> dict[str, float]:
    """t/s of each test in one repetition of one engine on one model."""
    tests = ["-p", args.p, "-n", args.n, "-t", str(args.t), "-r", "1", "-o", "json"]
    if engine == "llama.cpp":
        recs = run_json([args.llama_bench, "-m", str(model), *tests])
    else:
        recs = run_json([sys.executable, "-m", "hotlora", "bench", "-m", str(model), "--probe-mib", "0", *tests])
    return {TestSpec(r["n_prompt"], r["n_gen"]).name: r["avg_ts"] for r in recs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hotlora-bench"))
    ap.add_argument("--types", default="q4_0,q4_k_m,q8_0,f16,bf16")
    ap.add_argument("-p", default="128,512")
    ap.add_argument("-n", default="64")
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--raw", type=Path, help="write every sample here as JSON")
    args = ap.parse_args()
    samples: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (model, test, engine) -> t/s
    probes = []
    for rnd in range(args.rounds):
        probes.append(measure_read_bandwidth(1 << 30, args.t))
        for qtype in args.types.split(","):
            model = args.cache / f"tinyllama-shaped-{qtype}.gguf"
            engines = ["llama.cpp", "hotlora"] if rnd % 2 == 0 else ["hotlora", "llama.cpp"]
            for engine in engines:
                for test, ts in one_round(engine, args, model).items():
                    samples[(qtype, test, engine)].append(ts)
            print(f"round {rnd + 1}/{args.rounds} {qtype} done", file=sys.stderr, flush=True)
    report(args, samples, statistics.median(probes))
    if args.raw:
        args.raw.write_text(json.dumps({"probe_gb_per_s": probes,
                                        "samples": [[*k, v] for k, v in samples.items()]}, indent=1))


def report(args, samples, probe: float) -> None:
    print(f"read-bandwidth probe ({args.t} threads, median of {args.rounds}): {probe:.1f} GB/s\n")
    print("| model | test | hotlora t/s | llama.cpp t/s | hotlora / llama.cpp | hotlora GB/s | % of probe |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for qtype in args.types.split(","):
        size = (args.cache / f"tinyllama-shaped-{qtype}.gguf").stat().st_size
        tests = sorted({t for (m, t, _) in samples if m == qtype}, key=lambda t: (t.startswith("tg"), len(t), t))
        for test in tests:
            ours = statistics.median(samples[(qtype, test, "hotlora")])
            theirs = statistics.median(samples[(qtype, test, "llama.cpp")])
            gbs = ours * size / 1e9 if test.startswith("tg") else None
            bw = f"{gbs:.1f} | {100 * gbs / probe:.0f}" if gbs else " | "
            print(f"| {qtype} | {test} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}x | {bw} |")


if __name__ == "__main__":
    main()
