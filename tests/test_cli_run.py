"""`hotlora run` and `hotlora tokenize` end to end, in subprocesses as a user runs them."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from hotlora import Tokenizer

from factory import TinySpec, write_tiny_model
from cli_util import hotlora

PERF_LINES = [
    r"llama_perf_sampler_print:    sampling time = +[\d.]+ ms / +\d+ runs   \( +[\d.]+ ms per token, +[\d.]+ tokens per second\)",
    r"llama_perf_context_print:        load time = +[\d.]+ ms",
    r"llama_perf_context_print: prompt eval time = +[\d.]+ ms / +\d+ tokens \( +[\d.]+ ms per token, +[\d.]+ tokens per second\)",
    r"llama_perf_context_print:        eval time = +[\d.]+ ms / +\d+ runs   \( +[\d.]+ ms per token, +[\d.]+ tokens per second\)",
    r"llama_perf_context_print:       total time = +[\d.]+ ms / +\d+ tokens",
]
JSON_TIMINGS = ["prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                "predicted_per_token_ms", "predicted_per_second", "load_ms", "sample_ms", "total_ms"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("cli") / "tiny.gguf", TinySpec())


def test_bundled_model_prints_text_and_the_five_perf_lines():
    """No --model: the bundled model runs without, then with, its first bundled adapter; each pass ends
    with llama.cpp's five perf lines."""
    proc = hotlora("run", "-p", "Hello", "-n", "16", "-s", "7", "--ignore-eos")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello") and proc.stdout.count("Hello") == 2
    assert "main: without adapters" in proc.stderr and "main: with adapter 'hotlora-tiny-" in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("llama_perf")]
    assert len(lines) == 10
    for pattern, line in zip(PERF_LINES * 2, lines):
        assert re.fullmatch(pattern, line), line
    assert len(re.findall(r"eval time = +[\d.]+ ms / +15 runs", proc.stderr)) == 2  # the last token is never evaluated


def test_one_model_one_pass():
    from hotlora.model import default_model_path
    proc = hotlora("run", "-m", default_model_path(), "-p", "Hello", "-n", "4", "--ignore-eos")
    assert proc.returncode == 0, proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.startswith("llama_perf")]) == 5


def test_json_output_has_every_field(tiny):
    proc = hotlora("run", "-m", tiny, "-p", "hello", "-n", "5", "--json", "-s", "3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) >= {"model", "prompt_tokens", "tokens", "text", "timings"}
    assert len(result["tokens"]) == 5 and result["prompt_tokens"] == Tokenizer(tiny).tokenize("hello")
    assert set(result["timings"]) >= set(JSON_TIMINGS)
    assert result["timings"]["predicted_n"] == 4 and result["timings"]["prompt_n"] == len(result["prompt_tokens"])


def test_same_seed_same_tokens_other_seed_other_tokens(tiny):
    def tokens(seed):
        proc = hotlora("run", "-m", tiny, "-p", "hello", "-n", "24", "--json", "-s", seed, "--temp", "1.5",
                       "--top-k", "0", "--min-p", "0")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["tokens"]
    assert tokens(11) == tokens(11)
    assert tokens(11) != tokens(12)


def test_greedy_is_deterministic_and_matches_library(tiny):
    import hotlora as hl
    proc = hotlora("run", "-m", tiny, "-p", "hello", "-n", "8", "--json", "--temp", "0")
    ours = json.loads(proc.stdout)["tokens"]
    with hl.Model(tiny, n_ctx=64) as m:
        expected = [t for t, _ in m.generate("hello", n_predict=8, temp=0.0)]
    assert ours == expected


def test_no_display_prompt_and_reverse_prompt(tiny):
    proc = hotlora("run", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0", "--no-display-prompt")
    assert proc.returncode == 0 and not proc.stdout.startswith("hello")
    first = json.loads(hotlora("run", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0", "--json").stdout)
    stop_text = first["text"][:3]
    if stop_text.strip():
        proc = hotlora("run", "-m", tiny, "-p", "hello", "-n", "8", "--temp", "0", "-r", stop_text, "--json")
        assert json.loads(proc.stdout)["stop"] == "reverse_prompt"


def test_interactive_reads_turns_and_exits_at_eof(tiny):
    proc = hotlora("run", "-m", tiny, "-p", "hello", "-n", "3", "--temp", "0", "-i", stdin="more text\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("llama_perf_context_print:        eval time") == 1


def test_tokenize_mirrors_llama_tokenize(tiny):
    proc = hotlora("tokenize", "-m", tiny, "-p", "hello", "--ids")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == Tokenizer(tiny).tokenize("hello")
    pieces = hotlora("tokenize", "-m", tiny, "-p", "hello", "--no-bos").stdout.splitlines()
    assert [re.fullmatch(r" +(\d+) -> '(.*)'", line).group(2) for line in pieces] == ["he", "l", "l", "o"]


def test_help_from_module_and_console_script(tmp_path):
    module = hotlora("run", "--help")
    assert module.returncode == 0 and "--n-predict" in module.stdout
    script = subprocess.run(["hotlora", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 0 and "run" in script.stdout


def test_penalty_options_reach_the_sampler(tiny):
    """--presence-penalty 100 at temp 0: no token seen in the window (prompt or generated) comes again."""
    proc = hotlora("run", "-m", tiny, "-p", "hello hello", "-n", "12", "--json", "--temp", "0", "--ignore-eos",
                   "--presence-penalty", "100", "--repeat-last-n", "64")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    seen = result["prompt_tokens"] + result["tokens"]
    assert len(set(result["tokens"])) == 12 and not set(result["tokens"]) & set(result["prompt_tokens"]), seen
    help_text = hotlora("run", "--help").stdout
    for option in ("--typical", "--frequency-penalty", "--xtc-probability", "--xtc-threshold", "--dynatemp-range",
                   "--dynatemp-exp"):
        assert option in help_text
