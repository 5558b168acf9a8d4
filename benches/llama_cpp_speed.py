"""Optional: llama.cpp's speed on the same benchmark models, through llama-cpp-python, for comparison.

Run it with a Python that has llama-cpp-python (see llama_cpp_parity.py), after benches/engine.py made the models:

    /tmp/lcpp/bin/python benches/llama_cpp_speed.py [--cache /tmp/hotlora-bench] [--types q4_0,q8_0] [-t 2]

Same method as `hotlora bench`: a 128-token random prompt in one batch (pp128), then 32
single-token decodes (tg32); the median of 3 repetitions after a warm-up.
"""
import argparse
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp/hotlora-bench")
    ap.add_argument("--types", default="q4_0,q8_0")
    ap.add_argument("-t", type=int, default=2)
    args = ap.parse_args()
    for qtype in args.types.split(","):
        llm = Llama(model_path=f"{args.cache}/tinyllama-shaped-{qtype}.gguf", n_ctx=256, verbose=False,
                    n_threads=args.t, n_batch=512)
        prompt = [int(t) for t in np.random.default_rng(0).integers(0, 32000, 128)]
        llm.eval(prompt[:8])
        pp, tg = [], []
        for _ in range(3):
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            pp.append(len(prompt) / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(32):
                llm.eval([5])
            tg.append(32 / (time.perf_counter() - start))
        print(f"{qtype}: pp128 {np.median(pp):.2f} t/s, tg32 {np.median(tg):.2f} t/s")


if __name__ == "__main__":
    main()
