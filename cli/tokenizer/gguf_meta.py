"""GGUF metadata (key/value section) as plain Python values, read either from a file or from an open
`gguf.GGUFReader`.

`gguf.GGUFReader` parses every element of every array into its own numpy view, which costs about 2 s for a
50k-token vocabulary; `read_fields` walks only the header and the key/value section with `struct` and stops
before the tensor infos, so loading a vocabulary stays well under a second (tokenizers.md §1).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGUF_MAGIC, GGUFReader, GGUFValueType

from hotlora.errors import ModelFileError

_NUMPY_TYPES = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Field:
    """One metadata value. `kind` is its GGUF type; for an ARRAY, `item` is the element type (None when the
    array is empty and came from a GGUFReader, which does not record it). `value` is a str, int, float or bool
    for scalars, a list[str] for string arrays and a numpy array for numeric arrays."""

    kind: GGUFValueType
    item: GGUFValueType | None
    value: Any

    def type_name(self) -> str:
        """The type as error messages print it, e.g. `uint32` or `array[string]`."""
        if self.kind != GGUFValueType.ARRAY:
            return self.kind.name.lower()
        return f"array[{self.item.name.lower() if self.item is not None else '?'}]"


def read_fields(path: str | os.PathLike) -> dict[str, Field]:
    """All key/value pairs of the GGUF file at `path` (little-endian, version 2 or 3)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Cursor(buf).fields()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read file: {e.strerror or e}") from None
    except (ValueError, struct.error, IndexError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise ModelFileError(f"{path}: not a valid GGUF file ({type(e).__name__}: {e})") from None


def fields_from_reader(reader: GGUFReader) -> dict[str, Field]:
    """The `tokenizer.*` and `general.*` key/value pairs of an open GGUFReader."""
    return {
        name: _reader_field(field)
        for name, field in reader.fields.items()
        if name.startswith(("tokenizer.", "general.")) and field.types
    }


def _reader_field(field) -> Field:
    """Convert one `gguf.ReaderField` without going through its slow per-element `contents()`."""
    kind = field.types[0]
    if kind != GGUFValueType.ARRAY:
        return Field(kind, None, _decode(field.parts[-1].tobytes()) if kind == GGUFValueType.STRING
                     else field.parts[-1].tolist()[0])
    item = field.types[1] if len(field.types) > 1 else None
    parts = [field.parts[i] for i in field.data]
    if item is None:
        return Field(kind, None, np.empty(0))
    if item == GGUFValueType.STRING:
        return Field(kind, item, [_decode(p.tobytes()) for p in parts])
    if item in _NUMPY_TYPES:
        return Field(kind, item, np.concatenate(parts))
    return Field(kind, item, None)  # nested arrays: no tokenizer key uses them


def _decode(raw: bytes) -> str:
    """GGUF strings are UTF-8; invalid bytes survive as lone surrogates so texts round-trip to bytes."""
    return raw.decode("utf-8", "surrogateescape")


class _Cursor:
    """Sequential reader over the mapped file."""

    def __init__(self, buf: mmap.mmap):
        self.buf = buf
        self.pos = 0

    def fields(self) -> dict[str, Field]:
        if self.buf[:4] != GGUF_MAGIC.to_bytes(4, "little"):
            raise ValueError("bad magic")
        self.pos = 4
        version = self.u32()
        if version not in (2, 3):
            raise ValueError(f"unsupported version {version}")
        self.u64()  # tensor count
        n_kv = self.u64()
        result = {}
        for _ in range(n_kv):
            key = self.string()
            result[key] = self.value(GGUFValueType(self.u32()))
        return result

    def u32(self) -> int:
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self) -> int:
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self) -> str:
        n = self.u64()
        end = self.pos + n
        if end > len(self.buf):
            raise ValueError("string runs past the end of the file")
        s = _decode(self.buf[self.pos:end])
        self.pos = end
        return s

    def value(self, kind: GGUFValueType) -> Field:
        if kind == GGUFValueType.STRING:
            return Field(kind, None, self.string())
        if kind == GGUFValueType.ARRAY:
            item = GGUFValueType(self.u32())
            return Field(kind, item, self.array(item, self.u64()))
        dtype = _NUMPY_TYPES[kind]
        (v,) = struct.unpack_from("<" + dtype.char, self.buf, self.pos)
        self.pos += dtype.itemsize
        return Field(kind, None, v)

    def array(self, item: GGUFValueType, count: int) -> Any:
        if count > len(self.buf) - self.pos:
            raise ValueError("array runs past the end of the file")
        if item == GGUFValueType.STRING:
            return self.strings(count)
        if item == GGUFValueType.ARRAY:
            return [self.value(GGUFValueType.ARRAY).value for _ in range(count)]
        dtype = _NUMPY_TYPES[item]
        values = np.frombuffer(self.buf, dtype, count, self.pos).copy()
        self.pos += count * dtype.itemsize
        return values

    def strings(self, count: int) -> list[str]:
        """A string array, decoded in one tight loop (the hot path of vocabulary loading)."""
        buf, pos, out = self.buf, self.pos, []
        unpack, append = _U64.unpack_from, out.append
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8
            append(buf[pos:pos + n].decode("utf-8", "surrogateescape"))
            pos += n
        if pos > len(buf):
            raise ValueError("string array runs past the end of the file")
        self.pos = pos
        return out
