"""Tests for hotlora.timings against shared/spec/cli-surface.md §4."""

import json
import math
import re

from hotlora.timings import PerfCounters, c_div, c_float, c_mul, format_perf_report, timings_json

SPEC_EXAMPLE = (
    "llama_perf_sampler_print:    sampling time =       0.32 ms /    11 runs   (    0.03 ms per token, 34375.00 tokens per second)\n"
    "llama_perf_context_print:        load time =     101.79 ms\n"
    "llama_perf_context_print: prompt eval time =       0.41 ms /     3 tokens (    0.14 ms per token,  7317.07 tokens per second)\n"
    "llama_perf_context_print:        eval time =      14.25 ms /     7 runs   (    2.04 ms per token,   491.19 tokens per second)\n"
    "llama_perf_context_print:       total time =      17.16 ms /    10 tokens\n"
)

# eval: 14.2511 ms prints as 14.25 and gives 7000 / 14.2511 = 491.19 tokens per second, as in the example
EXAMPLE_COUNTERS = PerfCounters(load_ms=101.79, prompt_ms=0.41, prompt_n=3, eval_ms=14.2511, eval_n=7,
                                sample_ms=0.32, sample_n=11, total_ms=17.16)

TIMED_LINE = re.compile(
    r"(?P<what>sampling|prompt eval|eval) time = +([\d.]+) ms / +(\d+) (?:runs|tokens) +\( +([\d.]+) ms per token,"
    r" +([\d.]+) tokens per second\)")


def test_spec_example_byte_for_byte():
    assert format_perf_report(EXAMPLE_COUNTERS) == SPEC_EXAMPLE


def test_lines_parse_with_llama_cpp_regexes():
    lines = format_perf_report(EXAMPLE_COUNTERS).splitlines()
    eval_match = re.search(r"eval time = +([\d.]+) ms / +(\d+) runs +\( +([\d.]+) ms per token, +([\d.]+) tokens "
                           r"per second\)", lines[3])
    assert eval_match.groups() == ("14.25", "7", "2.04", "491.19")
    parsed = {m["what"]: m.groups()[1:] for m in map(TIMED_LINE.search, lines) if m}
    assert parsed == {"sampling": ("0.32", "11", "0.03", "34375.00"),
                      "prompt eval": ("0.41", "3", "0.14", "7317.07"),
                      "eval": ("14.25", "7", "2.04", "491.19")}
    assert re.fullmatch(r"llama_perf_context_print: +load time = +101\.79 ms", lines[1])
    assert re.fullmatch(r"llama_perf_context_print: +total time = +17\.16 ms / +10 tokens", lines[4])


def test_all_zero_counters_print_like_c():
    report = format_perf_report(PerfCounters())
    assert report == (
        "llama_perf_sampler_print:    sampling time =       0.00 ms /     0 runs   (    -nan ms per token,     -nan tokens per second)\n"
        "llama_perf_context_print:        load time =       0.00 ms\n"
        "llama_perf_context_print: prompt eval time =       0.00 ms /     1 tokens (    0.00 ms per token,      inf tokens per second)\n"
        "llama_perf_context_print:        eval time =       0.00 ms /     1 runs   (    0.00 ms per token,      inf tokens per second)\n"
        "llama_perf_context_print:       total time =       0.00 ms /     2 tokens\n"
    )


def test_time_without_count_and_clamped_counts():
    report = format_perf_report(PerfCounters(sample_ms=1.5, sample_n=0, prompt_ms=4.0, prompt_n=0, eval_ms=2.0,
                                             eval_n=-3, total_ms=8.0))
    lines = report.splitlines()
    assert lines[0].endswith("1.50 ms /     0 runs   (     inf ms per token,     0.00 tokens per second)")
    assert lines[2].endswith("4.00 ms /     1 tokens (    4.00 ms per token,   250.00 tokens per second)")
    assert lines[3].endswith("2.00 ms /     1 runs   (    2.00 ms per token,   500.00 tokens per second)")
    assert lines[4].endswith("8.00 ms /     2 tokens")


def test_c_arithmetic_and_float_formatting():
    assert c_div(1.0, 0.0) == math.inf and c_div(-1.0, 0.0) == -math.inf
    assert math.isnan(c_div(0.0, 0.0)) and math.copysign(1.0, c_div(0.0, 0.0)) < 0
    assert math.isnan(c_mul(math.inf, 0)) and math.copysign(1.0, c_mul(math.inf, 0)) < 0
    assert c_float("%8.2f", c_div(0.0, 0.0)) == "    -nan"
    assert c_float("%8.2f", math.nan) == "     nan"
    assert c_float("%10.2f", math.inf) == "       inf"
    assert c_float("%8.2f", -math.inf) == "    -inf"
    assert c_float("%8.2f", 2.675) == "    2.67"  # the exact binary value, as C rounds it
    assert c_float("%8.2f", 123456789.0) == "123456789.00"


def test_timings_json_fields_and_values():
    timings = timings_json(EXAMPLE_COUNTERS)
    assert list(timings) == ["prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n",
                             "predicted_ms", "predicted_per_token_ms", "predicted_per_second", "load_ms",
                             "sample_ms", "sample_n", "total_ms"]
    assert timings["prompt_n"] == 3 and timings["predicted_n"] == 7
    assert math.isclose(timings["prompt_per_token_ms"], 0.41 / 3)
    assert math.isclose(timings["prompt_per_second"], 3000 / 0.41)
    assert math.isclose(timings["predicted_per_second"], 7000 / 14.2511)
    assert (timings["load_ms"], timings["sample_ms"], timings["total_ms"]) == (101.79, 0.32, 17.16)


def test_timings_json_is_json_safe_for_zero_counters():
    timings = timings_json(PerfCounters())
    assert timings["prompt_per_token_ms"] is None and timings["predicted_per_second"] is None
    assert json.loads(json.dumps(timings, allow_nan=False)) == timings
