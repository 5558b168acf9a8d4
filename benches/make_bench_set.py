"""Makes the whole bench set with our own tools, in one folder (default /tmp/hotlora-bench):

* TinyLlama-1.1B-shaped random models (benches/make_bench_model.py writes the F16 one; `hotlora quantize`
  derives BF16, Q8_0, Q4_0 and Q4_K_M from it): tinyllama-shaped-{f16,bf16,q8_0,q4_0,q4_k_m}.gguf
* random adapters on all seven projections of every block (benches/make_bench_adapter.py), ranks 4, 16
  and 64, in F16 and Q8_0: lora-r{4,16,64}-{f16,q8_0}.gguf

Files already there are kept. Never committed (about 4 GB).

    python benches/make_bench_set.py [--cache /tmp/hotlora-bench] [--types F16,BF16,Q8_0,Q4_0,Q4_K_M]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def model_path(cache: Path, qtype: str) -> Path:
    return cache / f"tinyllama-shaped-{qtype.lower()}.gguf"


def adapter_path(cache: Path, rank: int, qtype: str) -> Path:
    return cache / f"lora-r{rank}-{qtype.lower()}.gguf"


def make_models(cache: Path, types: list[str]) -> None:
    f16 = model_path(cache, "F16")
    if not f16.exists():
        run(sys.executable, str(HERE / "make_bench_model.py"), str(f16), "--type", "F16")
    for qtype in types:
        out = model_path(cache, qtype)
        if not out.exists():
            run(sys.executable, "-m", "hotlora", "quantize", str(f16), str(out), qtype)


def make_adapters(cache: Path, ranks: list[int], types: list[str]) -> None:
    for rank in ranks:
        for qtype in types:
            out = adapter_path(cache, rank, qtype)
            if not out.exists():
                run(sys.executable, str(HERE / "make_bench_adapter.py"), str(out), "--rank", str(rank),
                    "--type", qtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hotlora-bench"))
    ap.add_argument("--types", default="F16,BF16,Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--ranks", default="4,16,64")
    ap.add_argument("--adapter-types", default="F16,Q8_0")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    make_models(args.cache, args.types.split(","))
    make_adapters(args.cache, [int(r) for r in args.ranks.split(",")], args.adapter_types.split(","))


if __name__ == "__main__":
    main()
