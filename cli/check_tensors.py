"""`--check-tensors` (llama.cpp's option): every tensor of a model or adapter scanned for NaN/inf values and
NaN/inf quant block scales, in the core (hl_check_tensor, rows split over threads), before anything runs."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from gguf import GGMLQuantizationType

from ._native import check, ffi, lib
from .adapters import AdapterFile, read_adapter_file
from .errors import ModelFileError
from .gguf_io import GGUFFile

CHECKABLE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def first_bad_row(type_name: str, ne: tuple[int, ...], data: np.ndarray, n_threads: int) -> int:
    """The first row (of ne[1] * ne[2] * ne[3] rows of ne[0] elements) of a CHECKABLE tensor holding a NaN/inf
    value or block scale; -1 if none."""
    bad = ffi.new("int64_t *")
    n_rows = int(np.prod(ne[1:], dtype=np.int64))
    type_id = int(GGMLQuantizationType[type_name])
    check(lib.hl_check_tensor(type_id, ffi.from_buffer(data), ne[0], n_rows, n_threads, bad), "check tensors")
    return int(bad[0])


def check_tensors(path: Path, tensors: Iterable[tuple[str, object]], n_threads: int) -> None:
    """tensors: (name, anything with type_name, ne, data). Raises ModelFileError naming the first bad tensor
    and row, in the order given."""
    for name, t in tensors:
        if t.type_name not in CHECKABLE:
            raise ModelFileError(f"{path}: tensor '{name}' has type {t.type_name}, which --check-tensors cannot check")
        row = first_bad_row(t.type_name, t.ne, t.data, n_threads)
        if row >= 0:
            raise ModelFileError(f"{path}: tensor '{name}' has invalid data (NaN or infinity) in row {row}")


def check_model_file(f: GGUFFile, n_threads: int) -> None:
    check_tensors(f.path, f.tensors.items(), n_threads)


def check_adapter_file(a: AdapterFile, n_threads: int) -> None:
    check_tensors(a.path, ((f"{p.base}.{half}", m) for p in a.pairs for half, m in (("lora_a", p.a), ("lora_b", p.b))),
                  n_threads)


def check_any_file(path: Path, n_threads: int) -> None:
    """A model, vocabulary or adapter GGUF, or a ggla adapter, as `hotlora inspect` takes it."""
    with open(path, "rb") as fh:
        is_ggla = fh.read(4) == b"algg"
    if is_ggla:
        check_adapter_file(read_adapter_file(path, "", 1 << 30), n_threads)
    else:
        check_model_file(GGUFFile(path), n_threads)


def check_run_files(model_file: GGUFFile, adapter_paths: Iterable[Path], n_threads: int) -> None:
    """`hotlora run` and `serve --check-tensors`: the model's tensors, then each adapter's."""
    check_model_file(model_file, n_threads)
    for path in adapter_paths:
        check_any_file(path, n_threads)
