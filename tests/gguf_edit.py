"""Rewrites a GGUF with edited metadata or tensors, for tests of bad input."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import gguf
import numpy as np

TensorEdit = Callable[[str, np.ndarray, gguf.GGMLQuantizationType], tuple[np.ndarray, gguf.GGMLQuantizationType] | None]


def rewrite(src: Path, dst: Path, kv: dict | None = None, drop_keys=(), tensors: TensorEdit | None = None) -> Path:
    """Copies src to dst; kv maps key -> (value, GGUFValueType) to set; tensors(name, data, type)
    returns (new data, new type), or None to drop the tensor."""
    reader = gguf.GGUFReader(src)
    arch = kv.get("general.architecture", (None,))[0] if kv else None
    arch = arch or reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys or (kv and name in kv):
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for name, (value, vtype) in (kv or {}).items():
        if name != "general.architecture":
            writer.add_key_value(name, value, vtype)
    for t in reader.tensors:
        data, qtype = np.array(t.data), t.tensor_type
        if tensors is not None:
            edited = tensors(t.name, data, qtype)
            if edited is None:
                continue
            data, qtype = edited
        raw = qtype if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else None
        writer.add_tensor(t.name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


F16_NAN = np.array([0x7E00], dtype=np.uint16).view(np.uint8)  # the two bytes of an F16 NaN


def with_nan_bytes(src: Path, dst: Path, tensor: str, row: int, byte: int) -> Path:
    """A copy of src whose `tensor` has an F16 NaN at bytes [byte, byte + 2) of row `row` (e.g. a block scale)."""
    def poison(name, data, qtype):
        if name == tensor:
            data = data.copy()
            data[row, byte:byte + 2] = F16_NAN
        return data, qtype
    return rewrite(src, dst, tensors=poison)
