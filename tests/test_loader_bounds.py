"""Loading is bounded by the file: huge metadata counts refused fast, tensors' bytes disjoint, int32 fields range-checked."""
from __future__ import annotations

import shutil
import struct
import time

import gguf
import pytest

from cli_util import assert_one_line_error, hotlora
from factory import TinySpec, write_tiny_model
from gguf_edit import rewrite
from hotlora.errors import ModelFileError
from hotlora.gguf_io import GGUFFile
from hotlora.model import default_model_path

V = gguf.GGUFValueType


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m") / "valid.gguf", TinySpec(n_layer=1))


def _value_type_offset(path, key: str) -> int:
    """Byte offset of the value type of a metadata key."""
    field = gguf.GGUFReader(path).get_field(key)
    return field.offset + int(field.parts[0].nbytes + field.parts[1].nbytes)


def _retype_as_array(src, dst, key: str, item: V, count_to_end: bool) -> None:
    """Rewrites key's value header in place as an array of item whose count runs to the end of the file."""
    shutil.copy(src, dst)
    at = _value_type_offset(src, key)
    item_size = 8 if item == V.STRING else 1
    count = (dst.stat().st_size - (at + 16)) // item_size if count_to_end else 2**62
    with open(dst, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<IIQ", V.ARRAY, item, count))


@pytest.mark.parametrize("item,count_to_end", [(V.UINT8, True), (V.STRING, True), (V.UINT8, False)])
def test_array_count_to_end_of_file_refused_fast(tmp_path, item, count_to_end):
    """The bundled 3.9 MB model with a string key retyped as an array reaching the end of the file: the stock
    reader walked it element by element (36 s, 1.4 GB)."""
    path = tmp_path / "long_array.gguf"
    _retype_as_array(default_model_path(), path, "general.architecture", item, count_to_end)
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=str(path)):
        GGUFFile(path)
    assert time.perf_counter() - start < 2.0


def test_array_count_refused_by_cli(tmp_path):
    path = tmp_path / "long_array.gguf"
    _retype_as_array(default_model_path(), path, "general.name", V.UINT8, True)
    assert_one_line_error(hotlora("inspect", path, timeout=30), 1, str(path), "past the end of the file")


@pytest.mark.parametrize("which", ["factory", "bundled"])
def test_arrays_still_parse_like_the_stock_reader(valid, which):
    path = valid if which == "factory" else default_model_path()
    ours, stock = GGUFFile(path).reader, gguf.GGUFReader(path)
    assert list(ours.fields) == list(stock.fields)
    for name, field in stock.fields.items():
        mine = ours.fields[name]
        assert mine.types == field.types and mine.data == field.data and mine.contents() == field.contents(), name
        assert [(p.dtype, p.tobytes()) for p in mine.parts] == [(p.dtype, p.tobytes()) for p in field.parts], name


def _tensor_offset_positions(path) -> dict[str, int]:
    """Byte offset of each tensor's data-offset field in the tensor info section."""
    reader = gguf.GGUFReader(path)
    return {t.name: t.field.offset + sum(int(p.nbytes) for p in t.field.parts[:-1]) for t in reader.tensors}


def test_tensor_offset_moved_onto_another_tensor(tmp_path, valid):
    path = tmp_path / "overlap.gguf"
    shutil.copy(valid, path)
    positions = _tensor_offset_positions(valid)
    data = bytearray(path.read_bytes())
    first = data[positions["token_embd.weight"]:positions["token_embd.weight"] + 8]
    data[positions["output_norm.weight"]:positions["output_norm.weight"] + 8] = first
    path.write_bytes(bytes(data))
    assert_one_line_error(hotlora("run", "-m", path, "-p", "hi", "-n", "1"), 1, str(path), "overlaps",
                          "'token_embd.weight'", "'output_norm.weight'")


def test_tensor_type_grown_into_the_next_tensor(tmp_path, valid):
    """An F32 norm vector retyped as F64 covers twice its bytes: the next tensor's."""
    reader = gguf.GGUFReader(valid)
    info = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    type_at = info.field.offset + sum(int(p.nbytes) for p in info.field.parts[:-2])
    path = tmp_path / "retyped.gguf"
    data = bytearray(valid.read_bytes())
    data[type_at:type_at + 4] = struct.pack("<I", gguf.GGMLQuantizationType.F64)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="'blk.0.attn_norm.weight'.*overlaps|overlaps.*'blk.0.attn_norm.weight'"):
        GGUFFile(path)


@pytest.mark.parametrize("key", ["llama.feed_forward_length", "llama.context_length", "llama.embedding_length",
                                 "llama.attention.head_count"])
def test_int32_fields_out_of_range(tmp_path, valid, key):
    path = rewrite(valid, tmp_path / "big.gguf", kv={key: (0xFFFFFFFF, V.UINT32)})
    assert_one_line_error(hotlora("run", "-m", path, "-p", "hi", "-n", "1", "-c", "0"), 1, str(path), key,
                          "out of range")
