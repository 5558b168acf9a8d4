"""LoRA overhead against its byte cost, from `hotlora bench ... --hot-lora ... -o json` records.

For each adapter and test: the adapter's bytes over the base's, the measured overhead (hotlora bench's
overhead_pct: median t/s of the base row over the adapter row, interleaved repetitions), and issue 7's
bounds: decode (tg) <= 1.3 x byte ratio + 0.5 points, prompt (pp) <= 2 x byte ratio + 1 point.

    hotlora bench -m base.gguf -p 128 -n 64 -r 5 --hot-lora a.gguf ... -o json > runs.json
    python benches/lora_overhead.py runs.json [more.json ...]
"""
from __future__ import annotations

import json
import sys


def bound(test: str, ratio_pct: float) -> float:
    return 1.3 * ratio_pct + 0.5 if test.startswith("tg") else 2.0 * ratio_pct + 1.0


def main() -> None:
    print("| base | adapter | adapter bytes / base bytes | test | overhead | bound | within |")
    print("|---|---|---:|---|---:|---:|---|")
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        for r in records:
            if r["adapter"] == "none":
                continue
            ratio = 100.0 * r["adapter_size"] / r["model_size"]
            limit = bound(r["test"], ratio)
            base = r["model_filename"].rsplit("/", 1)[-1]
            print(f"| {base} | {r['adapter']} | {ratio:.2f}% | {r['test']} | {r['overhead_pct']:+.2f}% | "
                  f"{limit:.2f}% | {'yes' if r['overhead_pct'] <= limit else 'no'} |")


if __name__ == "__main__":
    main()
