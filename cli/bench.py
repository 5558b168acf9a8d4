"""llama-bench's method (cli-surface.md §6): prompt processing (ppN) and text generation (tgN) tests.

Each test gets a fresh context of n_prompt + n_gen cells, one warm-up, then
`repetitions` timed runs; t/s is the mean of per-run rates. Decode runs also
report the weight bytes streamed per second (a decode step reads every matrix
once), the figure to compare with the machine's memory bandwidth.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from .model import Model


@dataclass
class BenchResult:
    test: str          # "pp512", "tg128"
    n_prompt: int
    n_gen: int
    samples_ns: list[int]
    weight_bytes: int  # bytes of all tensors, read once per decoded token

    @property
    def samples_ts(self) -> list[float]:
        return [1e9 * (self.n_prompt + self.n_gen) / ns for ns in self.samples_ns]

    @property
    def avg_ts(self) -> float:
        return statistics.fmean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0

    @property
    def decode_gb_per_s(self) -> float | None:
        """Weight bytes streamed per second during generation (tg tests only)."""
        return self.avg_ts * self.weight_bytes / 1e9 if self.n_gen and not self.n_prompt else None


def _random_prompt(model: Model, n: int, rng: np.random.Generator) -> list[int]:
    ids = rng.integers(0, model.n_vocab, size=n).tolist()
    if model.tokenizer.add_bos and model.tokenizer.bos_id is not None and ids:
        ids[0] = model.tokenizer.bos_id
    return ids


def _one_run(model: Model, prompt: list[int], n_gen: int) -> int:
    model.reset()
    start = time.perf_counter_ns()
    if prompt:
        model.eval_last(prompt)
    token = prompt[-1] if prompt else (model.tokenizer.bos_id or 0)
    for _ in range(n_gen):
        model.eval_last([token])
    return time.perf_counter_ns() - start


def run_test(model: Model, n_prompt: int, n_gen: int, repetitions: int, seed: int = 0) -> BenchResult:
    """Times one test on a model whose context holds at least n_prompt + n_gen tokens."""
    rng = np.random.default_rng(seed)
    prompt = _random_prompt(model, n_prompt, rng)
    _one_run(model, prompt, min(n_gen, 1))  # warm-up
    samples = [_one_run(model, prompt, n_gen) for _ in range(repetitions)]
    name = f"pp{n_prompt}" if not n_gen else f"tg{n_gen}" if not n_prompt else f"pp{n_prompt}+tg{n_gen}"
    return BenchResult(name, n_prompt, n_gen, samples, model.weight_bytes)
