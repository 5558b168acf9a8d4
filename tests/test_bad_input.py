"""Bad input: one `error: ...` line naming the file, tensor or option; exit 1 (2 for usage errors); no traceback."""
from __future__ import annotations


import gguf
import numpy as np
import pytest

from factory import TinySpec, write_tiny_model
from gguf_edit import rewrite
from cli_util import assert_one_line_error, hotlora

V = gguf.GGUFValueType


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m") / "valid.gguf", TinySpec(n_layer=1))


def run_on(model, *extra):
    return hotlora("run", "-m", model, "-p", "hi", "-n", "2", "--temp", "0", *extra)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    assert_one_line_error(run_on(missing), 1, str(missing), "failed to open")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("hello, I am not a model")
    assert_one_line_error(run_on(path), 1, str(path), "invalid magic characters: 'hell', expected 'GGUF'")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    assert_one_line_error(run_on(path), 1, str(path), "failed to read magic")


def test_future_version(tmp_path, valid):
    data = bytearray(valid.read_bytes())
    data[4:8] = (4).to_bytes(4, "little")
    path = tmp_path / "v4.gguf"
    path.write_bytes(bytes(data))
    assert_one_line_error(run_on(path), 1, "version 4")


def test_truncated_metadata(tmp_path, valid):
    path = tmp_path / "trunc.gguf"
    path.write_bytes(valid.read_bytes()[:200])
    assert_one_line_error(run_on(path), 1, str(path))


def test_tensor_data_past_end_of_file(tmp_path, valid):
    path = tmp_path / "short.gguf"
    path.write_bytes(valid.read_bytes()[:-1000])
    assert_one_line_error(run_on(path), 1, str(path), "extends past the end of the file")


def test_wrong_shape(tmp_path, valid):
    def shrink_q(name, data, qtype):
        return (data[:-4], qtype) if name == "blk.0.attn_q.weight" else (data, qtype)
    path = rewrite(valid, tmp_path / "shape.gguf", tensors=shrink_q)
    assert_one_line_error(run_on(path), 1, "blk.0.attn_q.weight", "wrong shape")


def test_missing_tensor(tmp_path, valid):
    path = rewrite(valid, tmp_path / "missing.gguf", tensors=lambda n, d, q: None if n == "blk.0.ffn_up.weight" else (d, q))
    assert_one_line_error(run_on(path), 1, "blk.0.ffn_up.weight", "not found")


def test_unsupported_arch(tmp_path, valid):
    path = rewrite(valid, tmp_path / "arch.gguf", kv={"general.architecture": ("gptj", V.STRING)})
    assert_one_line_error(run_on(path), 1, "unknown model architecture: 'gptj'")


def test_unsupported_weight_type(tmp_path, valid):
    def to_iq4_nl(name, data, qtype):
        if name != "blk.0.ffn_gate.weight":
            return data, qtype
        rows, cols = data.shape
        blocks = np.zeros((rows, cols // 32 * 18), dtype=np.uint8)  # IQ4_NL: 32 elements in 18 bytes
        return blocks, gguf.GGMLQuantizationType.IQ4_NL
    path = rewrite(valid, tmp_path / "type.gguf", tensors=to_iq4_nl)
    assert_one_line_error(run_on(path), 1, "blk.0.ffn_gate.weight", "IQ4_NL")


def test_missing_required_key(tmp_path, valid):
    path = rewrite(valid, tmp_path / "key.gguf", drop_keys=("llama.embedding_length",))
    assert_one_line_error(run_on(path), 1, "llama.embedding_length")


def test_prompt_longer_than_context(valid):
    proc = hotlora("run", "-m", valid, "-c", "8", "-p", "many words here make a long prompt", "-n", "1")
    assert_one_line_error(proc, 1, "prompt is too long")


@pytest.mark.parametrize("args, option", [
    (["-n", "abc"], "-n"),
    (["-c", "-5"], "-c"),
    (["-t", "0"], "-t"),
    (["--cache-type", "q9"], "--cache-type"),
    (["--temp", "warm"], "--temp"),
    (["--no-such-option"], "--no-such-option"),
])
def test_invalid_option_value(valid, args, option):
    proc = hotlora("run", "-m", valid, *args)
    assert_one_line_error(proc, 2, option)


def test_unreadable_prompt_file(tmp_path, valid):
    missing = tmp_path / "prompt.txt"
    assert_one_line_error(hotlora("run", "-m", valid, "-f", missing), 1, str(missing))
