"""The command line's surface under hostile input (issue 8): integer ranges, adapter scales, missing files and
folders, Ctrl-C during start-up, lazy imports, the demo's fixed seed, graph's default view and SVG, and
tokenize -f / --show-count.

Parse-time checks run in-process (hotlora.app.main) to keep the suite fast; start-up, Ctrl-C and the demo run
`python -m hotlora` in a subprocess, as a user does.
"""
from __future__ import annotations

import ast
import inspect as pyinspect
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hotlora.app import COMMANDS, command_function
from hotlora.model import default_adapter_paths, default_model_path

from cli_util import assert_one_line_error, hotlora

BIG = 3_000_000_000  # above 2^31: an OverflowError in the C binding before issue 8
MODEL = default_model_path()
ADAPTER = default_adapter_paths()[0]


@pytest.mark.parametrize("args, option", [
    (("run", "-m", MODEL, "-c", BIG), "'-c'"),
    (("run", "-m", MODEL, "-b", BIG), "'-b'"),
    (("run", "-m", MODEL, "-t", BIG), "'-t'"),
    (("run", "-m", MODEL, "-n", BIG), "'-n'"),
    (("run", "-m", MODEL, "-s", 1 << 32), "'-s'"),
    (("run", "-m", MODEL, "--top-k", BIG), "'--top-k'"),
    (("run", "-m", MODEL, "--repeat-last-n", BIG), "'--repeat-last-n'"),
    (("bench", "-p", f"8,{BIG}"), "'-p'"),
    (("bench", "-n", BIG), "'-n'"),
    (("bench", "-b", BIG), "'-b'"),
    (("bench", "-t", f"1,{BIG}"), "'-t'"),
    (("bench", "-r", BIG), "'-r'"),
    (("bench", "--probe-mib", BIG), "'--probe-mib'"),
    (("graph", "--tokens", BIG), "'--tokens'"),
    (("graph", "--layer", BIG), "'--layer'"),
    (("quantize", MODEL, "out.gguf", "Q8_0", "-t", BIG), "'-t'"),
    (("export-lora", "-m", MODEL, "-o", "out.gguf", "-t", BIG), "'-t'"),
])
def test_integer_at_or_above_2_31_is_a_usage_error_naming_the_option(cli, args, option):
    assert_one_line_error(cli(*args), 2, option)


@pytest.mark.parametrize("command", [("run", "-m", MODEL, "-p", "hi"), ("bench",)])
def test_more_threads_than_the_cap_is_a_usage_error_naming_t(cli, command):
    assert_one_line_error(cli(*command, "-t", 1000), 2, "'-t'", "512")


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "1e39", "-1e39", "abc"])
@pytest.mark.parametrize("option", ["--hot-lora-scaled", "--lora-scaled"])
def test_scale_that_is_not_a_finite_float32_is_refused_naming_the_adapter(cli, option, scale):
    proc = cli("run", "-m", MODEL, option, ADAPTER, scale, "-p", "hi", "-n", "1")
    assert_one_line_error(proc, 2, str(ADAPTER), f"'{scale}'")


def test_largest_float32_scale_passes_the_parse(cli):
    """3.4e38 is a float32: parsed, then the run either works or stops on non-finite logits (exit 1)."""
    proc = cli("run", "-m", MODEL, "--hot-lora-scaled", ADAPTER, "3.4e38", "-p", "hi", "-n", "1", "--temp", "0")
    assert proc.returncode == 0 or (proc.returncode == 1 and "non-finite logits" in proc.stderr), proc.stderr


@pytest.mark.parametrize("command", [
    ("inspect", "{}"), ("inspect", ADAPTER, "-m", "{}"), ("run", "-m", "{}", "-p", "hi"),
    ("tokenize", "-m", "{}", "-p", "hi"), ("graph", "-m", "{}"), ("bench", "-m", "{}"),
    ("run", "-m", MODEL, "--hot-lora", "{}", "-p", "hi"),
])
@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_missing_file_or_folder_is_one_error_line_naming_it(cli, tmp_path, command, kind):
    path = tmp_path / "nothing.gguf"
    if kind == "folder":
        path.mkdir()
    proc = cli(*[str(path) if a == "{}" else a for a in command])
    assert_one_line_error(proc, 1, str(path))


# ---- start-up: lazy imports, Ctrl-C ------------------------------------------------------------------

def test_help_lists_every_command_with_its_docstring_and_imports_nothing_heavy():
    """The short help in COMMANDS is the first line of each command's docstring (so they cannot drift), and
    `hotlora --help` lists it without importing numpy, gguf, rich, pydantic or the C core."""
    for name, (_, _, short_help) in COMMANDS.items():
        assert pyinspect.getdoc(command_function(name)).splitlines()[0] == short_help, name
    probe = ("import sys\nfrom hotlora.app import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('numpy', 'gguf', 'rich', 'pydantic', 'hotlora._core') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    *help_lines, loaded = proc.stdout.strip().splitlines()
    assert ast.literal_eval(loaded) == [], loaded
    listed = " ".join(" ".join(help_lines).split())
    for name, (_, _, short_help) in COMMANDS.items():
        assert f"{name} {' '.join(short_help.split())}".replace("- ", "-") in listed.replace("- ", "-"), name


@pytest.mark.parametrize("module", ["typer", "numpy", "gguf"])
def test_ctrl_c_while_importing_exits_130_without_a_traceback(module):
    """KeyboardInterrupt raised by the import of `module`: typer (the command line itself), numpy or gguf (the
    run command's dependencies), exactly as a Ctrl-C landing in that import would."""
    script = ("import builtins, runpy, sys\n"
              "real = builtins.__import__\n"
              "def hook(name, *args, **kwargs):\n"
              f"    if name == {module!r}:\n"
              "        raise KeyboardInterrupt\n"
              "    return real(name, *args, **kwargs)\n"
              "builtins.__import__ = hook\n"
              "sys.argv = ['hotlora', 'run', '-m', sys.argv[1], '-p', 'hi', '-n', '2']\n"
              "runpy.run_module('hotlora', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(MODEL)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Interrupted by user" in proc.stdout


@pytest.mark.parametrize("delay", [0.02, 0.1, 0.25, 0.5])
def test_sigint_at_any_point_of_a_run_is_never_a_traceback(delay):
    """A real Ctrl-C `delay` seconds after the interpreter is up: exit 130, or 0 (or death by SIGINT, at exit)
    when the run was already over.
    (A Ctrl-C inside CPython's own start-up, while it imports `site`, is CPython's fatal error, before any
    code of ours runs; so the clock starts once the child says it is running.)"""
    start = ("import runpy, sys\nsys.stderr.write('up\\n'); sys.stderr.flush()\n"
             "runpy.run_module('hotlora', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", start, "run", "-m", str(MODEL), "-p", "hi", "-n", "32",
                             "--temp", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "up\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # -SIGINT: the signal landed while the interpreter was exiting after a finished run; CPython then ends by
    # the signal itself, which a shell reports as 130, as for any Ctrl-C'd program
    assert proc.returncode in (130, 0, -signal.SIGINT), (proc.returncode, err)
    assert "Traceback" not in err, err
    assert proc.returncode != 130 or "Interrupted by user" in out


# ---- the demo ----------------------------------------------------------------------------------------

def test_demo_uses_a_fixed_seed_so_its_passes_differ_only_by_the_adapter():
    first, second = hotlora("run"), hotlora("run")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and "main: seed 42 for both passes" in first.stderr
    base, adapted = [json.loads(line) for line in hotlora("run", "--json").stdout.splitlines()]
    assert base["adapters"] == [] and Path(adapted["adapters"][0]["path"]).name == "hotlora-tiny-hot-lora.lora.gguf"
    assert base["tokens"] != adapted["tokens"]
    assert "main: seed" not in hotlora("run", "-s", "7", "-n", "2").stderr  # the user's seed is kept


# ---- graph -------------------------------------------------------------------------------------------

def test_graph_default_view_shows_the_lora_nodes_of_an_output_only_adapter(cli):
    proc = cli("graph", "--hot-lora", ADAPTER)
    assert proc.returncode == 0, proc.stderr
    assert "lora=1" in proc.stdout and "drawing all blocks and the head" in proc.stderr
    assert "lora=1" not in cli("graph", "--hot-lora", ADAPTER, "--layer", "0").stdout  # asked for: kept


def test_graph_svg_without_graphviz_is_an_error_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    out = tmp_path / "g.svg"
    assert_one_line_error(cli("graph", "-o", out), 1, str(out), "graphviz")
    assert not out.exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_graph_svg_is_real_svg(cli, tmp_path):
    out = tmp_path / "g.svg"
    assert cli("graph", "--hot-lora", ADAPTER, "-o", out).returncode == 0
    assert "<svg" in out.read_text() and "digraph" not in out.read_text()


# ---- tokenize -f / --show-count ----------------------------------------------------------------------

def test_tokenize_file_equals_prompt_and_show_count_is_llama_tokenizes_line(cli, tmp_path):
    text = "hello\nworld, twice: hello"
    path = tmp_path / "prompt.txt"
    path.write_text(text)
    from_file = cli("tokenize", "-m", MODEL, "-f", path, "--ids", "--show-count")
    ids_line, count_line = from_file.stdout.splitlines()
    assert ids_line == cli("tokenize", "-m", MODEL, "-p", text, "--no-escape", "--ids").stdout.strip()
    assert count_line == f"Total number of tokens: {len(json.loads(ids_line))}"
    pieces = cli("tokenize", "-m", MODEL, "-f", path, "--show-count").stdout
    assert pieces.startswith(" " * 2 + ids_line[1:5] + " -> '") and pieces.endswith(f"\n{count_line}\n")


def test_tokenize_needs_exactly_one_prompt_source(cli, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hi")
    assert_one_line_error(cli("tokenize", "-m", MODEL, "-p", "hi", "-f", path), 2, "-f")
    assert_one_line_error(cli("tokenize", "-m", MODEL), 2, "-p")
