"""Time of one `Model.decode_batch` step: one new token in each of n sequences (what a serving step costs).

    python benches/decode_batch.py -m MODEL.gguf [-t 2] [--counts 1,2,3,4,8] [-r 7] [--adapters A.gguf,B.gguf,..]

With --adapters, sequence i runs under adapter i mod K at scale 1 (a serving step's mixed batch). Prints, per
n, the median and min over -r repetitions (interleaved: every n once per round) and the tokens per second that
the median allows.
"""
from __future__ import annotations

import argparse
import statistics
import time

from hotlora.model import Model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3, 4, 8])
    ap.add_argument("-r", "--repetitions", type=int, default=7)
    ap.add_argument("--adapters", type=lambda s: s.split(","), default=[], help="sequence i uses adapter i mod K")
    args = ap.parse_args()
    with Model(args.model, n_ctx=64 * max(args.counts), n_threads=args.threads) as m:
        seqs = [m.sequence(64) for _ in range(max(args.counts))]
        adapters = [m.load_adapter(path) for path in args.adapters]
        for i, seq in enumerate(seqs):
            if adapters:
                seq.set_adapters({adapters[i % len(adapters)]: 1.0})
        for seq in seqs:
            m.decode_batch([(seq, [1, 2, 3, 4], False)])  # a short history in every sequence
        times: dict[int, list[float]] = {n: [] for n in args.counts}
        for _ in range(args.repetitions):
            for n in args.counts:
                for seq in seqs[:n]:
                    seq.keep(4)
                start = time.perf_counter()
                m.decode_batch([(seq, [5], False) for seq in seqs[:n]])
                times[n].append(time.perf_counter() - start)
    print(f"{args.model}, {len(args.adapters)} adapters, {args.threads} threads, {args.repetitions} rounds\n")
    print("| sequences | median | min | tokens/s at the median |")
    print("|---:|---:|---:|---:|")
    for n, ts in times.items():
        median = statistics.median(ts)
        print(f"| {n} | {median * 1e3:.1f} ms | {min(ts) * 1e3:.1f} ms | {n / median:.1f} |")


if __name__ == "__main__":
    main()
