"""Seeded mutation campaign: corrupted GGUF files never crash, hang or raise anything but HotLoraError."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory import TinySpec, tiny_adapter_pairs, write_ggla_adapter, write_tiny_adapter, write_tiny_model

N_CASES = 4000


@pytest.mark.parametrize("weight_type", ["Q8_0"])
def test_mutated_gguf_files_fail_cleanly(tmp_path, weight_type):
    valid = write_tiny_model(tmp_path / "valid.gguf", TinySpec(n_embd=32, n_layer=1, n_ff=32, n_head=2,
                                                             n_head_kv=1, weight_type=weight_type))
    driver = Path(__file__).with_name("fuzz_gguf.py")
    proc = subprocess.run([sys.executable, str(driver), str(valid), str(tmp_path), str(N_CASES), "1234"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    loaded, refused = map(int, re.search(r"cases ok: (\d+) loaded, (\d+) refused", proc.stdout).groups())
    assert loaded >= N_CASES // 20 and refused >= N_CASES // 2, proc.stdout  # both paths exercised


N_ADAPTER_CASES = 1000


@pytest.mark.parametrize("kind", ["gguf", "ggla"])
def test_mutated_adapter_files_fail_cleanly(tmp_path, kind):
    spec = TinySpec(n_embd=32, n_layer=1, n_ff=32, n_head=2, n_head_kv=1)
    model = write_tiny_model(tmp_path / "model.gguf", spec)
    targets = ["attn_q", "ffn_down", "output", "token_embd"]
    if kind == "gguf":
        valid = write_tiny_adapter(tmp_path / "valid.gguf", spec, targets, rank=4, alpha=8.0)
    else:
        valid = write_ggla_adapter(tmp_path / "valid.bin", tiny_adapter_pairs(spec, targets, rank=4), alpha=8,
                                   rank_header=4)
    driver = Path(__file__).with_name("fuzz_gguf.py")
    proc = subprocess.run([sys.executable, str(driver), str(valid), str(tmp_path), str(N_ADAPTER_CASES), "99",
                           str(model)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    loaded, refused = map(int, re.search(r"cases ok: (\d+) loaded, (\d+) refused", proc.stdout).groups())
    assert loaded >= 1 and refused >= N_ADAPTER_CASES // 5, proc.stdout  # both paths exercised


def test_mutated_vocabularies_fail_cleanly(tmp_path):
    """hotlora.Tokenizer(path) reads metadata with its own fast reader: the same campaign on it."""
    valid = write_tiny_model(tmp_path / "valid.gguf", TinySpec(n_embd=32, n_layer=1, n_ff=32, n_head=2, n_head_kv=1))
    driver = Path(__file__).with_name("fuzz_gguf.py")
    proc = subprocess.run([sys.executable, str(driver), str(valid), str(tmp_path), "1000", "5", "--tokenizer"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    loaded, refused = map(int, re.search(r"cases ok: (\d+) loaded, (\d+) refused", proc.stdout).groups())
    assert loaded >= 1 and refused >= 100, proc.stdout
