"""`hotlora bench` as a user runs it: llama-bench's options, columns and fields, adapters interleaved with the
base, and one `error:` line for bad input. Tiny sizes on the bundled model keep every run short; the read
probe is made small (--probe-mib) or turned off."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from factory import TinySpec, write_tiny_model
from cli_util import assert_one_line_error, hotlora

from hotlora.bench import first_token, random_prompt, run_once
from hotlora.model import Model, default_adapter_paths

NUMBERS, CONCURRENCY = (next(p for p in default_adapter_paths() if topic in p.name) for topic in ("numbers", "concurrency"))
TINY = ("-p", "4", "-n", "2", "-r", "2", "-t", "1", "--probe-mib", "0")
MD_COLUMNS = ["model", "size", "params", "backend", "threads", "test", "t/s"]
LLAMA_BENCH_FIELDS = ["build_commit", "build_number", "cpu_info", "backends", "model_filename", "model_type",
                      "model_size", "model_n_params", "n_batch", "n_threads", "type_k", "type_v", "n_prompt",
                      "n_gen", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts"]
HOTLORA_FIELDS = ["build_flags", "kernel_set", "test", "adapter", "median_ts", "overhead_pct", "decode_gb_per_s",
                  "probe_gb_per_s", "pct_of_probe", "python_ms_per_token", "peak_rss_bytes"]


def bench(*args):
    proc = hotlora("bench", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def bench_json(*args):
    return json.loads(bench(*args, "-o", "json").stdout)


def table(stdout: str) -> tuple[list[str], list[dict[str, str]]]:
    """The markdown table's header cells and its rows as {column: cell}."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], [dict(zip(cells[0], row)) for row in cells[2:]]


@pytest.mark.parametrize("n_prompt", [0, 6])
def test_a_run_decodes_as_llama_bench(n_prompt):
    """The prompt in one batch, then n_gen single-token decodes (BOS, then sampled tokens), whatever is sampled."""
    with Model(n_ctx=n_prompt + 6, n_threads=1) as m:  # the runner adds one cell: generation stops before the last fills
        rng = np.random.default_rng(0)
        prompt, start = random_prompt(m, n_prompt, rng), first_token(m, rng)
        for _ in range(3):
            before = (m.perf.prompt_n, m.perf.eval_n)
            run = run_once(m, prompt, start, 5)
            assert (m.perf.prompt_n - before[0], m.perf.eval_n - before[1]) == (n_prompt, 5)
            assert m.n_past == n_prompt + 5  # the start token and 4 of the 5 sampled (the last is not fed)
            assert 0 < run.decode_ns < run.total_ns


def test_markdown_has_llama_bench_columns_and_footer():
    proc = bench(*TINY)
    header, rows = table(proc.stdout)
    assert header == MD_COLUMNS + ["GB/s"]  # no "% of probe" with the probe off
    assert [r["test"] for r in rows] == ["pp4", "tg2"]
    assert all(r["backend"] == "CPU" and r["threads"] == "1" and " ± " in r["t/s"] for r in rows)
    assert "\nbuild: " in proc.stdout
    assert "peak RSS" in proc.stdout and "ms per generated token" in proc.stdout
    assert proc.stderr == ""  # no progress lines unless asked for (stderr is not a terminal here)


def test_markdown_without_generation_tests_has_no_bandwidth_column():
    header, _ = table(bench("-p", "4", "-n", "0", "-r", "1", "-t", "1").stdout)
    assert header == MD_COLUMNS


def test_markdown_shows_n_batch_and_probe_columns_when_they_apply():
    header, rows = table(bench("-p", "4", "-n", "2", "-r", "1", "-t", "1", "-b", "2,4", "--probe-mib", "8").stdout)
    assert header == MD_COLUMNS[:5] + ["n_batch"] + MD_COLUMNS[5:] + ["GB/s", "% of probe"]
    assert [(r["n_batch"], r["test"]) for r in rows] == [("2", "pp4"), ("2", "tg2"), ("4", "pp4"), ("4", "tg2")]
    assert rows[0]["GB/s"] == "" and float(rows[1]["GB/s"]) > 0 and float(rows[1]["% of probe"]) > 0


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_records_parse_and_carry_the_fields(fmt):
    out = bench(*TINY, "-o", fmt).stdout
    if fmt == "json":
        records = json.loads(out)
    elif fmt == "jsonl":
        records = [json.loads(line) for line in out.splitlines()]
    else:
        records = list(csv.DictReader(io.StringIO(out)))
    assert len(records) == 2
    for r in records:
        assert set(LLAMA_BENCH_FIELDS + HOTLORA_FIELDS) <= set(r)
        assert ("samples_ns" in r) == (fmt != "csv")
    pp, tg = records
    assert (pp["test"], tg["test"]) == ("pp4", "tg2")
    assert str(pp["n_prompt"]) == "4" and str(tg["n_gen"]) == "2" and str(tg["n_threads"]) == "1"
    assert float(tg["python_ms_per_token"]) > 0 and pp["python_ms_per_token"] in (None, "")


def test_json_statistics_follow_the_samples():
    pp, tg = bench_json(*TINY)
    for r in (pp, tg):
        n_tokens = r["n_prompt"] + r["n_gen"]
        assert len(r["samples_ns"]) == 2
        assert r["samples_ts"] == pytest.approx([1e9 * n_tokens / ns for ns in r["samples_ns"]])
        assert r["avg_ts"] == pytest.approx(sum(r["samples_ts"]) / 2)
        assert r["median_ts"] == pytest.approx(r["avg_ts"])  # two samples: median = mean
        assert r["avg_ns"] == pytest.approx(sum(r["samples_ns"]) / 2, abs=1)
    assert tg["decode_gb_per_s"] == pytest.approx(tg["median_ts"] * tg["model_size"] / 1e9)
    assert pp["decode_gb_per_s"] is None and tg["probe_gb_per_s"] is None  # --probe-mib 0


def test_comma_lists_multiply_the_tests():
    records = bench_json("-p", "2,4", "-n", "1,2", "-t", "1,2", "-r", "1", "--probe-mib", "0")
    assert [(r["n_threads"], r["test"]) for r in records] == [
        (t, name) for t in (1, 2) for name in ("pp2", "pp4", "tg1", "tg2")]


def test_repeated_options_add_values_like_commas():
    records = bench_json("-p", "2", "-p", "4", "-n", "0", "-r", "1", "-t", "1", "--probe-mib", "0")
    assert [r["test"] for r in records] == ["pp2", "pp4"]


def test_pg_runs_prompt_then_generation():
    records = bench_json("-p", "0", "-n", "0", "-pg", "4,2", "-pg", "2,3", "-r", "1", "-t", "1", "--probe-mib", "0")
    assert [(r["test"], r["n_prompt"], r["n_gen"]) for r in records] == [("pp4+tg2", 4, 2), ("pp2+tg3", 2, 3)]
    assert all(r["decode_gb_per_s"] is None and r["python_ms_per_token"] is None for r in records)


def test_several_models(tmp_path):
    other = write_tiny_model(tmp_path / "other.gguf", TinySpec())
    records = bench_json("-m", other, "-m", default_adapter_paths()[0].parent / "hotlora-tiny.gguf", *TINY)
    assert [(r["model_filename"].rsplit("/", 1)[-1], r["test"]) for r in records] == [
        ("other.gguf", "pp4"), ("other.gguf", "tg2"), ("hotlora-tiny.gguf", "pp4"), ("hotlora-tiny.gguf", "tg2")]
    assert records[0]["model_size"] != records[2]["model_size"]


def test_adapters_interleaved_with_the_base():
    proc = bench(*TINY, "--hot-lora", NUMBERS, "--hot-lora-scaled", CONCURRENCY, "0.5", "-o", "json", "--progress")
    records = json.loads(proc.stdout)
    assert [(r["test"], r["adapter"], r["adapter_scale"]) for r in records] == [
        (test, adapter, scale) for test in ("pp4", "tg2")
        for adapter, scale in (("none", None), (NUMBERS.name, 1.0), (CONCURRENCY.name, 0.5))]
    for base, *with_adapter in (records[:3], records[3:]):
        assert base["overhead_pct"] is None and base["adapter_size"] == 0
        for r in with_adapter:
            assert r["overhead_pct"] == pytest.approx((base["median_ts"] / r["median_ts"] - 1) * 100)
            assert r["adapter_size"] > 0
    tg_numbers = records[4]
    assert tg_numbers["decode_bytes_per_token"] == tg_numbers["model_size"] + tg_numbers["adapter_size"]
    # progress, on stderr only: each repetition runs the base, then each adapter, before the next repetition
    progress = proc.stderr.splitlines()
    assert progress[:6] == [
        f"bench: test {i}/6 pp4 adapter {name} rep {rep}/2" for rep in (1, 2)
        for i, name in ((1, "none"), (2, NUMBERS.name), (3, f"{CONCURRENCY.name} @0.5"))]
    assert len(progress) == 12


def test_markdown_adapter_columns():
    header, rows = table(bench(*TINY, "--hot-lora", NUMBERS).stdout)
    assert header == MD_COLUMNS[:5] + ["adapter"] + MD_COLUMNS[5:] + ["overhead %", "GB/s"]
    assert [(r["test"], r["adapter"]) for r in rows] == [
        ("pp4", "none"), ("pp4", NUMBERS.name), ("tg2", "none"), ("tg2", NUMBERS.name)]
    assert rows[0]["overhead %"] == "" and float(rows[1]["overhead %"]) > -100


@pytest.mark.parametrize("args, needles", [
    (["-p", "12,x"], ["-p", "'x'", "not an integer"]),
    (["-n", "1,,2"], ["-n", "not an integer"]),
    (["-t", "0"], ["-t", "0 is not between 1 and"]),
    (["-t", "100000"], ["-t", "100000"]),
    (["-p", "3000000000"], ["-p", "3000000000"]),
    (["-b", "0"], ["-b"]),
    (["-r", "0"], ["-r"]),
    (["-pg", "5"], ["-pg", "PP,TG"]),
    (["-o", "xml"], ["-o", "xml"]),
    (["--hot-lora-scaled", "a.gguf", "x"], ["--hot-lora-scaled", "'x'"]),
])
def test_usage_errors(args, needles):
    assert_one_line_error(hotlora("bench", *TINY, *args), 2, *needles)


def test_all_sizes_zero_is_a_usage_error():
    assert_one_line_error(hotlora("bench", "-p", "0", "-n", "0"), 2, "nothing to run")


def test_missing_files(tmp_path):
    assert_one_line_error(hotlora("bench", *TINY, "-m", tmp_path / "none.gguf"), 1, "--model", "none.gguf")
    assert_one_line_error(hotlora("bench", *TINY, "--hot-lora", tmp_path / "no.gguf"), 1, "--hot-lora", "no.gguf")


def test_adapter_that_does_not_fit_the_model(tmp_path):
    other = write_tiny_model(tmp_path / "other.gguf", TinySpec())
    proc = hotlora("bench", "-m", other, *TINY, "--hot-lora", NUMBERS)
    assert_one_line_error(proc, 1, NUMBERS.name)
    assert proc.stdout == ""


def test_probe_does_not_count_in_peak_rss():
    """The probe reads a buffer of its own in a child process; the record's peak RSS is the engine's."""
    (tg,) = bench_json("-p", "0", "-n", "2", "-r", "1", "-t", "1", "--probe-mib", "256")
    assert tg["probe_gb_per_s"] > 0 and tg["pct_of_probe"] == pytest.approx(
        100 * tg["decode_gb_per_s"] / tg["probe_gb_per_s"])
    assert 0 < tg["peak_rss_bytes"] < 256 * 2**20
