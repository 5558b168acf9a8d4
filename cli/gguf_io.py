"""Opening GGUF files with the `gguf` package and checking them before the core sees a pointer.

GGUFFile memory-maps the file, reads metadata with typed accessors that name the
key at fault, and checks every tensor's type, dimensions and byte range against
the file size. Tensor data stays in the memory map: nothing is copied.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from .errors import ModelFileError

MAX_VERSION = 3


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str       # ggml type name, e.g. "Q4_K"
    type_id: int
    ne: tuple[int, ...]  # ggml order, padded to 4 with 1s
    data: np.ndarray     # read-only uint8 view of the tensor's bytes in the memory map


def _check_header(path: Path) -> None:
    """llama.cpp's container checks, with its messages: magic, then version."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ModelFileError(f"failed to open GGUF file '{path}' (no such file)") from None
    except OSError as e:
        raise ModelFileError(f"failed to open GGUF file '{path}' ({e.strerror})") from None
    if len(head) < 4:
        raise ModelFileError(f"{path}: failed to read magic")
    if head[:4] != b"GGUF":
        shown = head[:4].decode("latin-1").encode("unicode_escape").decode()
        raise ModelFileError(f"{path}: invalid magic characters: '{shown}', expected 'GGUF'")
    if len(head) < 8:
        raise ModelFileError(f"{path}: file is truncated (no version)")
    version = int.from_bytes(head[4:8], "little")
    if version == 1:
        raise ModelFileError(f"{path}: GGUFv1 is no longer supported, please use a more up-to-date version")
    if version not in (2, 3):
        raise ModelFileError(
            f"{path}: this GGUF file is version {version} but this software only supports up to version {MAX_VERSION}")


class _CheckedReader(GGUFReader):
    """GGUFReader that checks each tensor's type and byte range before viewing its data,
    so a bad tensor is reported by name instead of failing inside numpy."""

    def __init__(self, path: Path):
        self._path = path
        self._deferred_arrays: set[int] = set()  # value offsets of arrays whose elements are not parsed yet
        super().__init__(path)

    @property
    def data(self) -> np.ndarray:
        return self._data

    def _get(self, offset: int, dtype, count: int = 1, override_order=None) -> np.ndarray:
        """Every read is bounded by the file: the stock reader would loop over a corrupted
        array count of 2^60 elements past the end, collecting empty slices until memory runs out."""
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if offset < 0 or count < 0 or end > len(self._data):
            raise ValueError(f"a field at byte {offset} reads past the end of the file ({len(self._data)} bytes)")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        """An array is only measured here (its end found without a numpy object per element) and parsed
        once the whole header is known good (_parse_deferred_arrays): the stock reader would first build
        one view per element of a count that runs to the end of the file (minutes, gigabytes)."""
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        item = GGUFValueType(int(raw_itype[0]))
        end = self._array_end(orig_offs + 12, item, int(count[0]))
        self._deferred_arrays.add(orig_offs)
        return end - orig_offs, [raw_itype, count], [], [GGUFValueType.ARRAY, item]

    def _array_end(self, offs: int, item: GGUFValueType, count: int) -> int:
        """Where an array of count items starting at offs ends; ValueError if past the end of the file."""
        size = len(self._data)
        if item == GGUFValueType.ARRAY:
            raise ValueError(f"the array at byte {offs} holds arrays, which GGUF readers do not support")
        if item == GGUFValueType.STRING:
            if count > (size - offs) // 8:
                raise ValueError(f"the string array at byte {offs} declares {count} strings, more than the "
                                 f"{size - offs} bytes left in the file can hold")
            buf, unpack = memoryview(self._data), struct.Struct("<Q").unpack_from
            for _ in range(count):
                if offs + 8 > size:
                    raise ValueError(f"the string array at byte {offs} reads past the end of the file")
                offs += 8 + unpack(buf, offs)[0]
        else:
            offs += np.dtype(self.gguf_scalar_to_np[item]).itemsize * count
        if offs > size:
            raise ValueError(f"an array of {count} {item.name} reads past the end of the file ({size} bytes)")
        return offs

    def _parse_deferred_arrays(self) -> None:
        """Replaces each measured array field with the stock reader's parse of it."""
        for name, field in self.fields.items():
            key_parts = field.parts[:3]  # key length, key, value type
            value_offs = field.offset + sum(int(p.nbytes) for p in key_parts)
            if value_offs not in self._deferred_arrays:
                continue
            parts, idxs, types = self._array_parts(value_offs)
            self.fields[name] = type(field)(field.offset, name, key_parts + parts, [i + 3 for i in idxs], types)

    def _array_parts(self, offs: int) -> tuple[list[np.ndarray], list[int], list[GGUFValueType]]:
        """The stock reader's parts of a measured array ([item type, count, then each element's parts]), the data
        part indices and the types, built from one pass over the bytes: the stock parse costs a checked numpy
        read per element and string length (0.2 s for a 4096-token vocabulary, most of a short run's start-up)."""
        raw_itype, count = self._get(offs, np.uint32), self._get(offs + 4, np.uint64)
        item, n, offs = GGUFValueType(int(raw_itype[0])), int(count[0]), offs + 12
        parts: list[np.ndarray] = [raw_itype, count]
        types = [GGUFValueType.ARRAY] + ([item] if n else [])  # the stock reader types an empty array ARRAY only
        if item == GGUFValueType.STRING:
            buf = self._data  # uint8
            u64 = np.dtype(np.uint64).newbyteorder(self.byte_order)
            unpack = struct.Struct("=Q" if self.byte_order == "I" else (">Q" if np.little_endian else "<Q")).unpack_from
            for _ in range(n):
                length = unpack(buf, offs)[0]
                parts += [buf[offs:offs + 8].view(u64), buf[offs + 8:offs + 8 + length]]
                offs += 8 + length
            return parts, list(range(3, 2 + 2 * n, 2)), types
        values = self._get(offs, self.gguf_scalar_to_np[item], n)
        parts += [values[i:i + 1] for i in range(n)]
        return parts, list(range(2, 2 + n)), types

    @data.setter
    def data(self, mapped: np.ndarray) -> None:
        # A plain ndarray view of the memory map (it keeps the map alive): slicing np.memmap
        # costs ~1 µs more per slice, which the reader does per vocabulary string.
        self._data = mapped.view(np.ndarray)

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        file_size = len(self.data)
        ranges = []
        for field in fields:
            _name_len, name_data, _n_dims, dims, raw_dtype, offset = field.parts
            name = bytes(name_data).decode("utf-8", "replace")
            try:
                qtype = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise ModelFileError(f"{self._path}: tensor '{name}' has unknown type id {int(raw_dtype[0])}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            ne = [int(d) for d in dims]
            if not 1 <= len(ne) <= 4 or any(d < 0 or d > 1 << 40 for d in ne):
                raise ModelFileError(f"{self._path}: tensor '{name}' has invalid dimensions {ne}")
            if ne[0] % block:
                raise ModelFileError(f"{self._path}: tensor '{name}' row length {ne[0]} is not a multiple "
                                     f"of the {qtype.name} block size {block}")
            n_bytes = int(np.prod(ne, dtype=object)) // block * type_size
            begin = start_offs + int(offset[0])
            if int(offset[0]) % self.alignment:
                raise ModelFileError(f"{self._path}: tensor '{name}' data offset {int(offset[0])} "
                                     f"is not a multiple of the alignment {self.alignment}")
            if begin + n_bytes > file_size:
                raise ModelFileError(f"{self._path}: tensor '{name}' data (offset {begin}, {n_bytes} bytes) "
                                     f"extends past the end of the file ({file_size} bytes)")
            ranges.append((begin, begin + n_bytes, name))
        self._check_disjoint(ranges)
        super()._build_tensors(start_offs, fields)
        self._parse_deferred_arrays()

    def _check_disjoint(self, ranges: list[tuple[int, int, str]]) -> None:
        """No two tensors' bytes overlap (a type or offset edit would make them share data)."""
        ranges = sorted(r for r in ranges if r[1] > r[0])
        for (b0, e0, first), (b1, e1, second) in zip(ranges, ranges[1:]):
            if b1 < e0:
                raise ModelFileError(f"{self._path}: tensor '{second}' data [{b1}, {e1}) overlaps tensor "
                                     f"'{first}' data [{b0}, {e0})")


def _open_reader(path: Path) -> GGUFReader:
    _check_header(path)
    try:
        return _CheckedReader(path)
    except ModelFileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None


class GGUFFile:
    """A validated, memory-mapped GGUF file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.reader = _open_reader(self.path)
        self.tensors: dict[str, TensorInfo] = {}
        for t in self.reader.tensors:
            info = self._wrap_tensor(t)
            self.tensors[info.name] = info

    # ---- metadata -------------------------------------------------------------------------------
    def _value(self, key: str, types: tuple[GGUFValueType, ...], what: str, required: bool, default):
        field = self.reader.get_field(key)
        if field is None:
            if required:
                raise ModelFileError(f"{self.path}: key not found in model: {key}")
            return default
        if not field.types or field.types[0] not in types:
            got = field.types[0].name if field.types else "none"
            raise ModelFileError(f"{self.path}: key {key} has wrong type {got} but expected {what}")
        try:
            return field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise ModelFileError(f"{self.path}: key {key} cannot be read ({e})") from None

    def get_int(self, key: str, default: int | None = None, required: bool = False) -> int | None:
        ints = (GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
                GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64)
        value = self._value(key, ints, "an integer", required, default)
        return None if value is None else int(value)

    def get_float(self, key: str, default: float | None = None, required: bool = False) -> float | None:
        value = self._value(key, (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64), "a float", required, default)
        return None if value is None else float(value)

    def get_str(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        return self._value(key, (GGUFValueType.STRING,), "a string", required, default)

    def get_int_or_array(self, key: str, default: int | None = None, required: bool = False) -> list[int] | int | None:
        """A hyper-parameter that may be one value or one value per layer."""
        field = self.reader.get_field(key)
        if field is not None and field.types and field.types[0] == GGUFValueType.ARRAY:
            try:
                return [int(v) for v in field.contents()]
            except (TypeError, ValueError) as e:
                raise ModelFileError(f"{self.path}: key {key} is not an integer array ({e})") from None
        return self.get_int(key, default, required)

    # ---- tensors --------------------------------------------------------------------------------
    def _wrap_tensor(self, t) -> TensorInfo:
        """Wraps a tensor _CheckedReader already bounds-checked."""
        dims = [int(d) for d in t.shape]
        data = t.data.reshape(-1).view(np.uint8)
        return TensorInfo(t.name, t.tensor_type.name, int(t.tensor_type), tuple(dims + [1] * (4 - len(dims))), data)

    def tensor(self, name: str, required: bool = True) -> TensorInfo | None:
        info = self.tensors.get(name)
        if info is None and required:
            raise ModelFileError(f"{self.path}: tensor '{name}' not found")
        return info

    def release_pages(self, info: TensorInfo) -> None:
        """Takes the memory map's pages that lie wholly inside the tensor's bytes out of this process (they
        stay in the page cache, and a later read maps them again): for a tensor the core reads from a copy."""
        whole = self.reader.data
        mapped = whole.base
        while mapped is not None and not hasattr(mapped, "_mmap"):
            mapped = mapped.base
        if mapped is None:
            return
        page = mmap.PAGESIZE
        start = info.data.ctypes.data - whole.ctypes.data
        first, end = -(-start // page) * page, (start + info.data.nbytes) // page * page
        if end > first:
            mapped._mmap.madvise(mmap.MADV_DONTNEED, first, end - first)


# ---- writing ---------------------------------------------------------------------------------------

def copy_metadata(f: GGUFFile, writer, skip: tuple[str, ...] = ()) -> None:
    """Copies every key of f except general.architecture (GGUFWriter writes it) and those in skip."""
    for name, field in f.reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in skip:
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)


def dims_of(ne: tuple[int, ...]) -> tuple[int, ...]:
    """ne without its trailing 1s (at least one dimension)."""
    dims = list(ne)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def add_raw_tensor(writer, name: str, type_name: str, ne: tuple[int, ...], data: np.ndarray) -> None:
    """Adds a tensor from its bytes, of any ggml type, keeping its ggml shape ne."""
    qtype = GGMLQuantizationType[type_name]
    block, type_size = GGML_QUANT_SIZES[qtype]
    dims = dims_of(ne)
    byte_shape = list(reversed(dims[1:])) + [dims[0] // block * type_size]  # numpy order, last axis in bytes
    writer.add_tensor(name, np.ascontiguousarray(data).view(np.uint8).reshape(byte_shape), raw_dtype=qtype)
