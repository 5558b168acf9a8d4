"""Merging LoRA adapters into a base model, as llama-export-lora does (lora.md §7).

W' = W + Σ_i s_i · B_i · A_i per adapted tensor, computed in float64 on the
dequantised base, then encoded back into the base tensor's own type (or the
requested one). Tensors without a delta are copied byte for byte. On a tied
model an output or token_embd pair unties it: output.weight is written from the
original embedding (plus the output delta), as the runtime semantics require.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize

from .adapters import AdapterFile, LoraPair
from .errors import HotLoraError
from .gguf_io import GGUFFile, TensorInfo, add_raw_tensor, copy_metadata
from .output_file import write_gguf
from .quantize import encode


@dataclass
class Delta:
    pair: LoraPair
    scale: float  # user scale · alpha / rank


def _floats(m) -> np.ndarray:
    """A Matrix or TensorInfo as float64, numpy orientation (rows, ne[0])."""
    ne = m.ne
    values = dequantize(np.asarray(m.data), GGMLQuantizationType[m.type_name])
    return values.astype(np.float64).reshape(ne[1], ne[0])


def _delta(d: Delta) -> np.ndarray:
    """s·B·A in the base tensor's orientation: (n_out, n_in); token_embd: (n_vocab, n_embd) = s·a·bᵀ."""
    a, b = _floats(d.pair.a), _floats(d.pair.b)  # projections: a (r, n_in), b (n_out, r)
    if d.pair.base == "token_embd.weight":      # a (n_vocab, r), b (n_embd, r)
        return d.scale * (a @ b.T)
    return d.scale * (b @ a)


def collect_deltas(adapters: list[tuple[AdapterFile, float]]) -> dict[str, list[Delta]]:
    deltas: dict[str, list[Delta]] = {}
    for file, user_scale in adapters:
        for pair in file.pairs:
            deltas.setdefault(pair.base, []).append(Delta(pair, user_scale * file.scale(pair)))
    return deltas


@dataclass
class MergedTensor:
    name: str
    info: TensorInfo        # the base tensor it comes from
    deltas: list[Delta]
    type_name: str          # type written


def plan(base: GGUFFile, adapters: list[tuple[AdapterFile, float]], outtype: str | None) -> list[MergedTensor]:
    """Every output tensor in base order, with its deltas; a tied model gets output.weight when adapted."""
    deltas = collect_deltas(adapters)
    tied = "output.weight" not in base.tensors
    out = []
    for name, info in base.tensors.items():
        d = deltas.get(name, [])
        out.append(MergedTensor(name, info, d, (outtype or info.type_name) if d else info.type_name))
    if tied and ("output.weight" in deltas or "token_embd.weight" in deltas):
        info = base.tensors["token_embd.weight"]
        d = deltas.get("output.weight", [])
        out.append(MergedTensor("output.weight", info, d, (outtype or info.type_name) if d else info.type_name))
    return out


def merged_data(t: MergedTensor, n_threads: int) -> np.ndarray:
    """The bytes of one output tensor: the base bytes, or base + deltas encoded."""
    if not t.deltas:
        return t.info.data
    values = _floats(t.info)
    for d in t.deltas:
        values += _delta(d)
    if not np.all(np.isfinite(values)):
        raise HotLoraError(f"merging into '{t.name}' gives non-finite values")
    return encode(values, t.type_name, n_threads)


def write_merged(out: Path, base: GGUFFile, tensors: list[MergedTensor], n_threads: int) -> Iterator[MergedTensor]:
    """Writes the merged model to out (a temporary path from output_file.atomic_output), yielding each tensor as
    it is done (for progress)."""
    writer = GGUFWriter(out, base.get_str("general.architecture"), use_temp_file=False)
    copy_metadata(base, writer)
    data = {}
    for t in tensors:
        data[t.name] = merged_data(t, n_threads)
        yield t
    for t in tensors:
        add_raw_tensor(writer, t.name, t.type_name, t.info.ne, data[t.name])
    write_gguf(writer)
