"""The performance report llama-cli prints at exit, and llama-server's timing fields for `--json`
(spec: shared/spec/cli-surface.md §4).

Both follow C: rates are `ms / count` and `1e3 / ms * count` in double, so a zero time gives `inf` and 0/0 or
`inf * 0` gives x86's default NaN, which glibc's printf writes as `-nan`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SAMPLER_FUNC = "llama_perf_sampler_print"
CONTEXT_FUNC = "llama_perf_context_print"

_X86_DEFAULT_NAN = -math.nan  # what an invalid operation (0/0, inf*0) produces on x86: the sign bit is set
_FIXED_FORMAT = re.compile(r"%(\d*)\.(\d+)f")


@dataclass
class PerfCounters:
    """Raw counters (cli-surface.md §4 table); the report applies llama.cpp's clamps itself."""

    load_ms: float = 0.0
    prompt_ms: float = 0.0
    prompt_n: int = 0
    eval_ms: float = 0.0
    eval_n: int = 0
    sample_ms: float = 0.0
    sample_n: int = 0
    total_ms: float = 0.0

    def add_sampling(self, ms: float, runs: int) -> None:
        """Adds a sampler's counters before it is reset, so that the sampling line covers a whole interactive
        session (llama-cli's restarts at each user turn)."""
        self.sample_ms += ms
        self.sample_n += runs


def c_div(numerator: float, denominator: float) -> float:
    """IEEE-754 double division as C does it: x/0 is ±inf, 0/0 is the default NaN (Python would raise)."""
    if denominator == 0:
        if numerator == 0 or math.isnan(numerator):
            return _X86_DEFAULT_NAN
        return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)
    return numerator / denominator


def c_mul(left: float, right: float) -> float:
    """IEEE-754 double product with x86's NaN: `inf * 0` gives the default NaN, which prints as `-nan`."""
    product = left * right
    if math.isnan(product) and not (math.isnan(left) or math.isnan(right)):
        return _X86_DEFAULT_NAN
    return product


def c_float(spec: str, value: float) -> str:
    """`printf(spec, value)` for a `%W.Pf` spec as glibc prints it: like Python's `%` except that a NaN with
    the sign bit set prints as `-nan`."""
    match = _FIXED_FORMAT.fullmatch(spec)
    if match is None:
        raise ValueError(f"unsupported format {spec!r}: expected %W.Pf")
    if math.isnan(value):
        text = "-nan" if math.copysign(1.0, value) < 0 else "nan"
        return text.rjust(int(match.group(1) or 0))
    return spec % value


def _rate_columns(ms: float, count: int) -> tuple[float, float]:
    """(ms per token, tokens per second) exactly as llama.cpp computes them: `ms / n`, `1e3 / ms * n`."""
    return c_div(ms, count), c_mul(c_div(1e3, ms), count)


def _timed_line(func: str, label: str, ms: float, count: int, unit: str) -> str:
    per_token, per_second = _rate_columns(ms, count)
    return (f"{func}: {label} = {c_float('%10.2f', ms)} ms / {count:5d} {unit} "
            f"({c_float('%8.2f', per_token)} ms per token, {c_float('%8.2f', per_second)} tokens per second)\n")


def format_perf_report(c: PerfCounters) -> str:
    """The five report lines (cli-surface.md §4), each ending in a newline. Counts are clamped as llama.cpp
    does: sampling `max(0, n)`, prompt eval and eval `max(1, n)`; the total counts the two clamped values."""
    sample_n = max(0, c.sample_n)
    prompt_n = max(1, c.prompt_n)
    eval_n = max(1, c.eval_n)
    return (
        _timed_line(SAMPLER_FUNC, "   sampling time", c.sample_ms, sample_n, "runs  ")
        + f"{CONTEXT_FUNC}:        load time = {c_float('%10.2f', c.load_ms)} ms\n"
        + _timed_line(CONTEXT_FUNC, "prompt eval time", c.prompt_ms, prompt_n, "tokens")
        + _timed_line(CONTEXT_FUNC, "       eval time", c.eval_ms, eval_n, "runs  ")
        + f"{CONTEXT_FUNC}:       total time = {c_float('%10.2f', c.total_ms)} ms / {prompt_n + eval_n:5d} tokens\n"
    )


def _json_number(value: float) -> float | None:
    """nlohmann::json writes non-finite doubles as null."""
    return value if math.isfinite(value) else None


def timings_json(c: PerfCounters) -> dict:
    """llama-server's `timings` object (prompt_* and predicted_* from the prompt-eval and eval counters, which
    llama-server does not clamp), plus load_ms, sample_ms, sample_n (the sampler's runs) and total_ms.
    Non-finite rates become None."""
    prompt_per_token, prompt_per_second = _rate_columns(c.prompt_ms, c.prompt_n)
    eval_per_token, eval_per_second = _rate_columns(c.eval_ms, c.eval_n)
    return {
        "prompt_n": c.prompt_n,
        "prompt_ms": c.prompt_ms,
        "prompt_per_token_ms": _json_number(prompt_per_token),
        "prompt_per_second": _json_number(prompt_per_second),
        "predicted_n": c.eval_n,
        "predicted_ms": c.eval_ms,
        "predicted_per_token_ms": _json_number(eval_per_token),
        "predicted_per_second": _json_number(eval_per_second),
        "load_ms": c.load_ms,
        "sample_ms": c.sample_ms,
        "sample_n": c.sample_n,
        "total_ms": c.total_ms,
    }
