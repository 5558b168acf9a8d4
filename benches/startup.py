"""Start-up time of the `hotlora` command: median wall time of N runs of a command, each a fresh process.

    python benches/startup.py            # `hotlora --help` and a 16-token run on the bundled model
    python benches/startup.py -r 21 -- run -m data/hotlora-tiny.gguf -n 16 --temp 0 -p hi

Each case runs once untimed (to warm the OS file cache), then N timed times; prints the median and the spread.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "data" / "hotlora-tiny.gguf"
CASES = {
    "hotlora --help": ["--help"],
    "hotlora run (bundled model, 16 tokens)": ["run", "-m", str(MODEL), "-n", "16", "--temp", "0", "-p", "Hello"],
}


def wall_times(args: list[str], runs: int) -> list[float]:
    """Seconds per run of `python -m hotlora ARGS`; the first, untimed run warms the file cache."""
    command = [sys.executable, "-m", "hotlora", *args]
    subprocess.run(command, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--runs", type=int, default=11, help="timed runs per case")
    parser.add_argument("args", nargs="*", help="hotlora arguments of one case (default: the two standard cases)")
    options = parser.parse_args()
    cases = {"hotlora " + " ".join(options.args): options.args} if options.args else CASES
    for name, args in cases.items():
        times = wall_times(args, options.runs)
        print(f"{name}: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {options.runs} runs)")


if __name__ == "__main__":
    main()
