"""`hotlora run -i` through the CLI with input on stdin: the banner and `> ` marker, llama-cli's line editing, the
sampler's run count over the whole session, and /lora commands that check every argument before doing anything
and name the adapter as the user typed it."""
from __future__ import annotations

import json
import re

import pytest

from cli_util import hotlora
from hf_llama import HFConfig, make_peft_adapter, random_model, write_gguf
from hotlora import Tokenizer
from hotlora.model import default_adapter_paths, default_model_path

MODEL = str(default_model_path())
ADAPTER = str(next(p for p in default_adapter_paths() if p.name == "hotlora-tiny-numbers.lora.gguf"))
BANNER = ("main: interactive mode on.\n"
          "Reverse prompt: 'User:'\n"
          "== Running in interactive mode. ==\n"
          " - Press Ctrl+C to end the session (hotlora does not interject).\n"
          " - Press Return to return control to the AI.\n"
          " - To return control without starting a new line, end your input with '/'.\n"
          " - If you want to submit another line, end your input with '\\'.\n")


def interactive(stdin: str, *args: str, model: str = MODEL):
    proc = hotlora("run", "-m", model, "-p", "hello", "--temp", "0", "-i", *args, stdin=stdin)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def sampling_runs(stderr: str) -> int:
    return int(re.search(r"sampling time = +[\d.]+ ms / +(\d+) runs", stderr).group(1))


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_banner_and_input_marker():
    """The banner on stderr; `\\n> ` on stdout before each read (here: two inputs, then end of input)."""
    proc = interactive("more text\n/lora\n", "-n", "0", "--no-display-prompt", "-r", "User:")
    assert proc.stdout == "\n> " * 3 + "\n\n"
    assert proc.stderr.startswith(BANNER)


def test_sampling_runs_span_the_session():
    """prompt + input tokens (all accepted) + 3 sampled per turn, over three turns; the second input uses the
    line editing: a trailing '\\' continues (keeping the newline), a trailing '/' drops the newline."""
    proc = interactive("more text\nline one\\\nline two/\n", "-n", "3", "--ignore-eos")
    tok = Tokenizer(MODEL)
    fed = [tok.tokenize("hello"), tok.tokenize("more text\n", add_bos=False),
           tok.tokenize("line one\nline two", add_bos=False)]
    assert sampling_runs(proc.stderr) == sum(map(len, fed)) + 3 * 3
    single = hotlora("run", "-m", MODEL, "-p", "hello", "--temp", "0", "-n", "3", "--ignore-eos", "--json")
    assert json.loads(single.stdout)["timings"]["sample_n"] == len(fed[0]) + 3


def test_lora_commands_check_arguments_before_acting():
    """Each refused command changes nothing (the listing stays empty) and names the adapter as typed."""
    bad = [f"/lora load {ADAPTER} abc", f"/lora load {ADAPTER} nan", f"/lora load {ADAPTER} inf",
           f"/lora load {ADAPTER} -1e39", "/lora load ./no/such.gguf 0.5", f"/lora load {MODEL}",
           "/lora scale 7 1", "/lora unload x"]
    after = [f"/lora load {ADAPTER} 0.5", "/lora scale 0 nan", "/lora unload 3", "/lora"]
    proc = interactive("\n".join(bad + ["/lora"] + after) + "\n", "-n", "0")
    lines = errors(proc.stderr)
    assert lines[:5] == [f"error: /lora load {ADAPTER}: scale 'abc' is not a number"] + [
        f"error: /lora load {ADAPTER}: scale '{s}' must be finite and within float32 range (|scale| <= 3.4e38)"
        for s in ("nan", "inf", "-1e39")] + ["error: /lora load ./no/such.gguf: no such file or directory"]
    assert lines[5] == f"error: /lora load {MODEL}: {MODEL}: expect general.type to be 'adapter', but got: 'model'"
    assert lines[6:8] == ["error: /lora scale 7: no adapter with id '7' (loaded: none)",
                          "error: /lora unload x: no adapter with id 'x' (loaded: none)"]
    assert lines[8] == ("error: /lora scale 0 (hotlora-tiny-numbers.lora.gguf): scale 'nan' must be finite and "
                        "within float32 range (|scale| <= 3.4e38)")
    assert lines[9] == "error: /lora unload 3: no adapter with id '3' (loaded: 0 (hotlora-tiny-numbers.lora.gguf))"
    tables = proc.stderr.split("LoRA adapters")[1:]
    assert len(tables) == 3 and "hotlora-tiny" not in tables[0]   # the listing after the refused commands
    assert re.search(r"│ +0 │ hotlora-tiny-numbers\S* +│ +0\.5 │ yes", tables[2])


@pytest.fixture(scope="module")
def peft_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interactive_peft")
    cfg = HFConfig()
    base = write_gguf(tmp / "base.gguf", cfg, random_model(cfg, seed=1))
    peft = make_peft_adapter(cfg, ["model.layers.0.self_attn.q_proj", "lm_head"], seed=2).save(tmp / "my-peft")
    return base, peft


def test_lora_load_peft_directory(peft_world, tmp_path):
    base, peft = peft_world
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    proc = interactive(f"/lora load {broken}\n/lora load {peft} 0.5\n", "-n", "0", model=str(base))
    assert errors(proc.stderr) == [f"error: /lora load {broken}: {broken}/adapter_config.json: lora_alpha is "
                                   f"missing"]
    tables = proc.stderr.split("LoRA adapters")[1:]
    assert len(tables) == 1 and re.search(r"│ +0 │ my-peft +│ +0\.5 │ yes +│ +2 │ 8 ", tables[0])
