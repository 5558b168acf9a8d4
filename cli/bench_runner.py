"""The benchmark matrix, run as llama-bench orders it, with adapters interleaved.

For each model, batch size and thread count (one context each), every test runs with no
adapter and with each adapter. The adapters are loaded once per context and switched with
Model.set_adapters; within a test, each repetition runs the base and then every adapter in
turn, so drift on a shared machine hits all of them alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .bench import TestSpec, first_token, random_prompt, run_once
from .bench_result import BenchRow, ModelInfo, Variant
from .lora import Adapter
from .model import Model
from .probe import BandwidthProbe
from .sysinfo import peak_rss_bytes

PROMPT_SEED = 0
CACHE_TYPE = "f16"  # the KV cache every context uses (llama-bench's default type_k and type_v)


@dataclass(frozen=True)
class BenchPlan:
    models: list[Path | None]              # None: the bundled model
    tests: list[TestSpec]
    threads: list[int]
    batches: list[int]
    repetitions: int
    adapters: list[tuple[Path, float]]
    probe_bytes: int                       # 0: no read probe
    repack: bool = True                    # weights in this CPU's repacked layouts (Model's repack)

    @property
    def n_rows(self) -> int:
        return (len(self.models) * len(self.batches) * len(self.threads) * len(self.tests)
                * (1 + len(self.adapters)))


@dataclass(frozen=True)
class Progress:
    row: int        # 1-based, of plan.n_rows
    n_rows: int
    test: str
    adapter: str
    rep: int        # 1-based
    n_reps: int


def model_info(m: Model) -> ModelInfo:
    n_params = sum(int(np.prod(t.ne)) for t in m.file.tensors.values())
    return ModelInfo(str(m.path), f"{m.hparams.arch} {m.path.stem}", m.weight_bytes, n_params)


class BenchRunner:
    def __init__(self, plan: BenchPlan, on_rows: Callable[[list[BenchRow]], None],
                 on_progress: Callable[[Progress], None]):
        self.plan = plan
        self.on_rows = on_rows
        self.on_progress = on_progress
        self.probe = BandwidthProbe(plan.probe_bytes) if plan.probe_bytes else None
        self._rows_done = 0

    def run(self) -> None:
        # One cell more than a test's tokens: generation stops, as llama-cli's does, before the last cell fills.
        n_ctx = max(t.n_tokens for t in self.plan.tests) + 1
        for path in self.plan.models:
            for n_batch in self.plan.batches:
                for n_threads in self.plan.threads:
                    with Model(path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, cache_type=CACHE_TYPE,
                               repack=self.plan.repack) as m:
                        self._run_context(m)

    def _run_context(self, m: Model) -> None:
        loaded = [(m.load_adapter(path), scale) for path, scale in self.plan.adapters]
        variants: list[tuple[Variant, dict[Adapter, float]]] = [(Variant(), {})]
        variants += [(Variant(a.path, s, a.n_bytes), {a: s}) for a, s in loaded]
        info = model_info(m)
        for test in self.plan.tests:
            self.on_rows(self._run_test(m, info, test, variants))

    def _run_test(self, m: Model, info: ModelInfo, test: TestSpec,
                  variants: list[tuple[Variant, dict[Adapter, float]]]) -> list[BenchRow]:
        test_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        probe = self.probe.gb_per_s(m.n_threads) if self.probe and test.is_generation_only else None
        rng = np.random.default_rng(PROMPT_SEED)
        prompt, start = random_prompt(m, test.n_prompt, rng), first_token(m, rng)
        for _, scales in variants:  # warm-up, as llama-bench: the prompt, or one generated token
            m.set_adapters(scales)
            run_once(m, prompt, start, min(test.n_gen, 1))
        runs: list[list] = [[] for _ in variants]
        for rep in range(self.plan.repetitions):
            for i, (variant, scales) in enumerate(variants):
                self.on_progress(Progress(self._rows_done + i + 1, self.plan.n_rows, test.name, variant.label,
                                          rep + 1, self.plan.repetitions))
                m.set_adapters(scales)
                runs[i].append(run_once(m, prompt, start, test.n_gen))
        self._rows_done += len(variants)
        base = BenchRow(info, m.n_batch, m.n_threads, test, variants[0][0], runs[0], test_time, None, probe,
                        peak_rss_bytes())
        return [base] + [BenchRow(info, m.n_batch, m.n_threads, test, variant, r, test_time, base.median_ts, probe,
                                  peak_rss_bytes()) for (variant, _), r in zip(variants[1:], runs[1:])]
