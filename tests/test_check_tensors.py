"""--check-tensors: the first tensor and row holding a NaN/inf value or quant block scale, found by the core."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from cli_util import assert_one_line_error, hotlora
from factory import random_kquant, write_adapter_file
from gguf_edit import F16_NAN, with_nan_bytes
from hotlora.check_tensors import first_bad_row
from hotlora.model import default_model_path

N_ROWS, N_COLS = 10, 512
F16_INF = np.array([0x7C00], dtype=np.uint16).view(np.uint8)


def _float_rows(type_name: str, values: np.ndarray) -> np.ndarray:
    """values [N_ROWS, N_COLS] float32 as the type's bytes, one row per line."""
    if type_name == "BF16":
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    return values.astype(np.float16 if type_name == "F16" else np.float32).view(np.uint8)


def _blocks(type_name: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if type_name == "Q8_0":
        return gguf.quants.quantize(rng.normal(0, 1, (N_ROWS, N_COLS)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    return random_kquant(rng, N_ROWS, N_COLS, type_name, 0.1).data


def _check(type_name: str, data: np.ndarray, n_threads: int = 4) -> int:
    return first_bad_row(type_name, (N_COLS, N_ROWS, 1, 1), np.ascontiguousarray(data).reshape(-1), n_threads)


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_types(type_name, bad):
    values = np.random.default_rng(0).normal(0, 1, (N_ROWS, N_COLS)).astype(np.float32)
    assert _check(type_name, _float_rows(type_name, values)) == -1
    values[8, 1] = bad   # a later thread's slice
    values[3, 100] = bad
    assert _check(type_name, _float_rows(type_name, values)) == 3
    assert _check(type_name, _float_rows(type_name, values), n_threads=1) == 3


@pytest.mark.parametrize("type_name,scale_offset,block_bytes", [("Q8_0", 0, 34), ("Q4_K", 0, 144), ("Q4_K", 2, 144),
                                                                ("Q6_K", 208, 210)])
@pytest.mark.parametrize("bad", [F16_NAN, F16_INF])
def test_quant_block_scales(type_name, scale_offset, block_bytes, bad):
    """A NaN/inf d (or Q4_K's dmin) in the second block of row 3; the quants themselves are never invalid."""
    data = _blocks(type_name).copy()
    assert _check(type_name, data) == -1
    data[3, block_bytes + scale_offset:block_bytes + scale_offset + 2] = bad
    assert _check(type_name, data) == 3


@pytest.fixture(scope="module")
def nan_row_model(tmp_path_factory):
    """The bundled model with a NaN Q8_0 scale in row 3 of blk.1.attn_v.weight (its second block's scale)."""
    return with_nan_bytes(default_model_path(), tmp_path_factory.mktemp("m") / "nan_row.gguf",
                          "blk.1.attn_v.weight", 3, 34)


def test_clean_model_passes():
    proc = hotlora("inspect", "--check-tensors", default_model_path())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", [("inspect", "--check-tensors"),
                                     ("run", "--check-tensors", "-p", "hi", "-n", "1", "--temp", "0", "-m"),
                                     ("serve", "--port", "0", "--check-tensors", "-m")])  # refused before listening
def test_bad_row_named(nan_row_model, command):
    assert_one_line_error(hotlora(*command, nan_row_model), 1, str(nan_row_model), "'blk.1.attn_v.weight'", "row 3")


def test_without_the_option_inspect_does_not_scan(nan_row_model):
    assert hotlora("inspect", nan_row_model).returncode == 0


def test_adapter_bad_row_named_by_run(tmp_path):
    rng = np.random.default_rng(0)
    b = rng.normal(0, 0.1, (128, 4)).astype(np.float32)
    b[5, 2] = np.nan  # numpy row 5 is ggml row 5 of lora_b [ne 4, 128]
    path = write_adapter_file(tmp_path / "nan.lora.gguf", "llama", {
        "blk.0.attn_k.weight.lora_a": rng.normal(0, 0.1, (4, 256)).astype(np.float32),
        "blk.0.attn_k.weight.lora_b": b})
    assert_one_line_error(hotlora("run", "--check-tensors", "--lora", path, "-p", "hi", "-n", "1"), 1, str(path),
                          "'blk.0.attn_k.weight.lora_b'", "row 5")
