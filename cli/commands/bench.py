"""`hotlora bench`: llama-bench's tests, options and output, with LoRA adapters interleaved against the base.

    hotlora bench -m a.gguf -m b.gguf -p 128,512 -n 32 -pg 512,128 -t 1,2 -r 5 --hot-lora r16.gguf -o md
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..bench import TestSpec
from ..bench_result import Variant
from ..bench_report import FORMATS, CsvPrinter, JsonlPrinter, JsonPrinter, MarkdownPrinter, RunInfo, TableLayout
from ..bench_runner import CACHE_TYPE, BenchPlan, BenchRunner, Progress
from ..errors import HotLoraError
from ..sysinfo import build_info, cpu_info
from ..system import physical_cores
from .options import MAX_THREADS, MAX_TOKENS, HotLora, HotLoraScaled, NoRepack, adapter_list, int_option

Opt = typer.Option
DEFAULT_BATCH = 512    # the engine's n_batch; the table shows an n_batch column for any other


def parse_int_list(values: list[str], hint: str, low: int, high: int) -> list[int]:
    """'128,512' (repeatable) -> [128, 512], each in [low, high]; a usage error naming the option otherwise."""
    numbers = []
    for value in values:
        for item in value.split(","):
            try:
                n = int(item.strip())
            except ValueError:
                raise typer.BadParameter(f"'{item}' in '{value}' is not an integer", param_hint=hint) from None
            if not low <= n <= high:
                raise typer.BadParameter(f"{n} is not between {low} and {high}", param_hint=hint)
            numbers.append(n)
    return numbers


def parse_pairs(values: list[str], hint: str) -> list[TestSpec]:
    """-pg PP,TG (repeatable) -> prompt-then-generation tests."""
    tests = []
    for value in values:
        pair = parse_int_list([value], hint, 0, MAX_TOKENS)
        if len(pair) != 2:
            raise typer.BadParameter(f"'{value}' is not PP,TG (two integers)", param_hint=hint)
        tests.append(TestSpec(*pair))
    return tests


def _tests(n_prompt: list[str], n_gen: list[str], pg: list[str]) -> list[TestSpec]:
    """llama-bench's order: every pp test, every tg test, every pg test; zero sizes are skipped."""
    tests = [TestSpec(p, 0) for p in parse_int_list(n_prompt, "'-p' / '--n-prompt'", 0, MAX_TOKENS) if p]
    tests += [TestSpec(0, n) for n in parse_int_list(n_gen, "'-n' / '--n-gen'", 0, MAX_TOKENS) if n]
    tests += [t for t in parse_pairs(pg, "'-pg'") if t.n_tokens]
    if not tests:
        raise typer.BadParameter("every test size is 0: nothing to run", param_hint="'-p' / '-n' / '-pg'")
    return tests


def _check_files(models: list[Path], adapters: list[tuple[Path, float]]) -> None:
    """Fails before the first test on a file that is not there (fit is checked as each model loads)."""
    for path, option in [(m, "--model") for m in models] + [(a, "--hot-lora") for a, _ in adapters]:
        if not path.is_file():
            raise HotLoraError(f"{option}: '{path}' does not exist or is not a file")


class ProgressLine:
    """`bench: test 3/12 pp512 adapter r16.gguf rep 2/5` on stderr: redrawn in place on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.in_place = sys.stderr.isatty()

    def show(self, p: Progress) -> None:
        if not self.enabled:
            return
        text = f"bench: test {p.row}/{p.n_rows} {p.test} adapter {p.adapter} rep {p.rep}/{p.n_reps}"
        sys.stderr.write(f"\r\x1b[K{text}" if self.in_place else text + "\n")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled and self.in_place:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _printer(output: str, info: RunInfo, plan: BenchPlan):
    if output == "json":
        return JsonPrinter(info)
    if output == "jsonl":
        return JsonlPrinter(info)
    if output == "csv":
        return CsvPrinter(info)
    has_tg = any(t.is_generation_only for t in plan.tests)
    layout = TableLayout(show_batch=plan.batches != [DEFAULT_BATCH],
                         adapter_width=max((len(Variant(p, s).label) for p, s in plan.adapters), default=0),
                         show_gbs=has_tg, show_probe=has_tg and plan.probe_bytes > 0)
    return MarkdownPrinter(info, layout)


def _list_option(*names: str, help: str):
    return typer.Option(*names, help=help, metavar="N[,N...]")


Models = Annotated[Optional[list[Path]], Opt(
    "-m", "--model", help="GGUF model; repeatable (default: the bundled tiny model)", metavar="PATH")]
PromptSizes = Annotated[list[str], _list_option("-p", "--n-prompt", help="prompt tokens (0 = no pp test)")]
GenSizes = Annotated[list[str], _list_option("-n", "--n-gen", help="generated tokens (0 = no tg test)")]
PromptGen = Annotated[Optional[list[str]], Opt(
    "-pg", help="a prompt-then-generation test; repeatable", metavar="PP,TG")]
Threads = Annotated[Optional[list[str]], _list_option("-t", "--threads", help="threads (default: physical cores)")]
Batches = Annotated[list[str], _list_option("-b", "--batch-size", help="prompt tokens per decode")]
Output = Annotated[str, Opt("-o", "--output", help="output format", metavar="md|json|jsonl|csv")]
ProbeMiB = Annotated[int, int_option("--probe-mib", help="read-bandwidth probe size in MiB (0 = no probe)", low=0)]
ShowProgress = Annotated[bool, Opt("--progress", help="progress lines on stderr even when it is not a terminal")]


def bench(
    model: Models = None,
    n_prompt: PromptSizes = ["512"],
    n_gen: GenSizes = ["128"],
    pg: PromptGen = None,
    threads: Threads = None,
    batch_size: Batches = [str(DEFAULT_BATCH)],
    repetitions: Annotated[int, int_option("-r", "--repetitions", help="timed runs per test", low=1)] = 5,
    output: Output = "md",
    hot_lora: HotLora = None,
    hot_lora_scaled: HotLoraScaled = None,
    probe_mib: ProbeMiB = 1024,
    progress: ShowProgress = False,
    no_repack: NoRepack = False,
) -> None:
    """Measure prompt processing and generation speed like llama-bench, with and without each adapter."""
    if output not in FORMATS:
        raise typer.BadParameter(f"'{output}' is not one of {', '.join(FORMATS)}", param_hint="'-o' / '--output'")
    plan = BenchPlan(
        models=model or [None], tests=_tests(n_prompt, n_gen, pg or []),
        threads=parse_int_list(threads, "'-t' / '--threads'", 1, MAX_THREADS) if threads else [physical_cores()],
        batches=parse_int_list(batch_size, "'-b' / '--batch-size'", 1, MAX_TOKENS), repetitions=repetitions,
        adapters=adapter_list(hot_lora, hot_lora_scaled), probe_bytes=probe_mib * 2**20, repack=not no_repack)
    _check_files(model or [], plan.adapters)
    _run(plan, _printer(output, RunInfo(build_info(), cpu_info(), CACHE_TYPE, not no_repack), plan),
         ProgressLine(progress or sys.stderr.isatty()))


def _run(plan: BenchPlan, printer, line: ProgressLine) -> None:
    """Runs the plan; the header waits for the first rows, so a file that fails to load leaves stdout empty."""
    started = False

    def on_rows(rows) -> None:
        nonlocal started
        line.clear()
        if not started:
            printer.header()
            started = True
        printer.rows(rows)

    BenchRunner(plan, on_rows, line.show).run()
    line.clear()
    printer.footer()
