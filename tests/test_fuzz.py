"""The suite's bounded fuzz campaign (benches/fuzz.py): mutated models, adapters and vocabularies never crash,
hang, raise anything but a one-line HotLoraError or take over 1 GB; and the fuzzer itself finds what it must."""
import json
import re
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

import fuzz_mutations
from factory import TinySpec, write_tiny_model

FUZZ = Path(__file__).resolve().parent.parent / "benches" / "fuzz.py"
COUNTS = re.compile(r"loaded (\d+), refused (\d+), crashes (\d+), tracebacks (\d+), timeouts (\d+), "
                    r"over-memory (\d+)")


def fuzz(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[int]]:
    proc = subprocess.run([sys.executable, str(FUZZ), "--out", str(out), "--workers", "2", *args],
                          capture_output=True, text=True, timeout=300)
    match = COUNTS.search(proc.stdout)
    assert match, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc, [int(n) for n in match.groups()]


@pytest.mark.parametrize("kind, n_cases, min_loaded", [("model", 2000, 30), ("adapter", 1500, 100),
                                                        ("tokenizer", 500, 20)])
def test_bounded_campaign_has_no_bad_case(tmp_path, kind, n_cases, min_loaded):
    proc, (loaded, refused, *bad) = fuzz(tmp_path, "--kind", kind, "--cases", str(n_cases), "--seed", "1234")
    assert proc.returncode == 0 and bad == [0, 0, 0, 0], f"{proc.stdout}\n{proc.stderr[-3000:]}"
    assert loaded + refused == n_cases
    assert loaded >= min_loaded and refused >= n_cases // 5, proc.stdout   # both paths exercised


def test_a_hanging_case_is_saved_and_replays(tmp_path):
    """A case timeout far below a load's time: every case is a timeout, saved with its seed, and the workers
    are restarted for each; replayed without the fuzzer's timeout, the saved case loads or is refused."""
    proc, (loaded, refused, crashes, tracebacks, timeouts, over) = fuzz(
        tmp_path, "--kind", "adapter", "--cases", "3", "--seed", "7", "--timeout", "0.000001")
    assert proc.returncode == 1 and timeouts == 3 and loaded + refused == 0, proc.stdout
    saved = sorted(tmp_path.glob("adapter-timeout-seed7-case*.json"))
    assert [json.loads(p.read_text())["index"] for p in saved] == [0, 1, 2]
    case = saved[0].with_name(saved[0].name.removesuffix(".json"))
    replay = subprocess.run([sys.executable, str(FUZZ), "--replay", str(case)], capture_output=True, text=True,
                            timeout=120)
    assert replay.returncode == 0 and re.match(r"(loaded|refused) in ", replay.stdout), replay.stdout + replay.stderr


def test_layout_finds_every_header_field(tmp_path):
    """The walker's fields match gguf's reader: counts, one n_dims/type/offset per tensor, ne per dimension."""
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_embd=32, n_layer=1, n_ff=32, n_head=2, n_head_kv=1))
    reader = gguf.GGUFReader(path)
    fields = fuzz_mutations.layout(path.read_bytes())
    roles = [f.role for f in fields]
    assert roles[:2] == ["n_tensors", "n_kv"]
    assert roles.count("vtype") == len(reader.fields) - 3   # GGUF.version, tensor_count, kv_count are not KVs
    assert roles.count("ttype") == roles.count("toffset") == roles.count("n_dims") == len(reader.tensors)
    assert roles.count("ne") == sum(len(t.shape) for t in reader.tensors)
    offsets = [int.from_bytes(path.read_bytes()[f.offset:f.offset + 8], "little") for f in fields
               if f.role == "toffset"]
    assert offsets == [int(t.data_offset - reader.data_offset) for t in reader.tensors]
