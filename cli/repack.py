"""Load-time repacking of weight matrices into the core's panel layouts (hl_repack), where this CPU's kernels
for the repacked layout are faster: Q4_0, Q8_0, Q4_K and Q6_K become their HL_TYPE_*_R16 layouts on AVX-512
VNNI.

The repacked copy has the size of the rows it replaces (Q4_K: 148 bytes per super-block instead of 144); the
memory map's pages of those rows are then released (GGUFFile.release_pages), so the process holds about the
file's size, as without repacking.
"""
from __future__ import annotations

import numpy as np

from ._native import check, ffi, lib
from .gguf_io import GGUFFile, TensorInfo


def repack_rows(type_id: int, data: np.ndarray, n_cols: int, n_rows: int,
                what: str = "repack") -> tuple[np.ndarray, int] | None:
    """n_rows rows of n_cols elements of type_id (bytes) in their repacked layout (bytes, type id), or None
    when they stay as they are: no faster layout on this CPU, or a row count that is not a whole number of
    panels. what: the prefix of an error's message."""
    layout = lib.hl_repack_type(type_id, n_rows)
    if layout == type_id:
        return None
    out = np.empty(n_rows * lib.hl_row_size(layout, n_cols), dtype=np.uint8)
    kind = ffi.new("int32_t *")
    check(lib.hl_repack(type_id, ffi.from_buffer(data), ffi.from_buffer(out), n_cols, n_rows, kind), what)
    return out, kind[0]


def repack(f: GGUFFile, info: TensorInfo) -> tuple[np.ndarray, int] | None:
    """A file's matrix repacked (repack_rows), its memory map's pages then released."""
    packed = repack_rows(info.type_id, info.data, info.ne[0], info.ne[1], f"{f.path}: tensor '{info.name}'")
    if packed is not None:
        f.release_pages(info)
    return packed
