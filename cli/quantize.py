"""Encoding float tensors into ggml types with the core's multithreaded quantizer (hl_quantize)."""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from ._native import TYPE_IDS, check, ffi, lib
from .errors import HotLoraError


def encode(values: np.ndarray, type_name: str, n_threads: int = 1) -> np.ndarray:
    """Rows of `values` (numpy shape (..., n), float) as the bytes of `type_name`; shape (..., row bytes)."""
    if type_name not in TYPE_IDS:
        raise HotLoraError(f"cannot encode to type {type_name} (supported: {', '.join(TYPE_IDS)})")
    src = np.ascontiguousarray(values, dtype=np.float32)
    n_cols = src.shape[-1]
    n_rows = src.size // n_cols if n_cols else 0
    row_bytes = lib.hl_row_size(TYPE_IDS[type_name], n_cols)
    if row_bytes == 0 and n_cols:
        raise HotLoraError(f"row length {n_cols} is not a multiple of the {type_name} block size")
    dst = np.empty((*src.shape[:-1], row_bytes), dtype=np.uint8)
    check(lib.hl_quantize(TYPE_IDS[type_name], ffi.cast("float *", ffi.from_buffer(src)), ffi.from_buffer(dst),
                          n_rows, n_cols, n_threads), f"quantize to {type_name}")
    return dst


def requantize(info, type_name: str, n_threads: int) -> np.ndarray:
    """A tensor's bytes in another type (dequantised first; copied when the type is unchanged)."""
    if info.type_name == type_name:
        return info.data
    values = dequantize(np.asarray(info.data), GGMLQuantizationType[info.type_name])
    return encode(values.reshape(-1, info.ne[0]), type_name, n_threads)
