"""Writes a random LoRA adapter GGUF for the TinyLlama-shaped bench model (all 7 projections of every block).

    python benches/make_bench_adapter.py OUT.gguf --rank 16 [--type F16|F32|Q8_0] [--layers 22] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

from make_bench_model import SHAPE

Q = gguf.GGMLQuantizationType


def projections() -> dict[str, tuple[int, int]]:
    """(n_out, n_in) of each adapted projection of a block."""
    e, ff = SHAPE["n_embd"], SHAPE["n_ff"]
    kv = e // SHAPE["n_head"] * SHAPE["n_head_kv"]
    return {"attn_q": (e, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, e),
            "ffn_gate": (ff, e), "ffn_up": (ff, e), "ffn_down": (e, ff)}


def encode(values: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q | None]:
    """values in qtype; a block type whose block does not divide the rows (lora_b of rank < 32) falls back
    to F16, as llama.cpp's convert_lora_to_gguf does."""
    if qtype not in (Q.F32, Q.F16) and values.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = Q.F16
    if qtype == Q.F32:
        return values.astype(np.float32), None
    if qtype == Q.F16:
        return values.astype(np.float16), None
    return gguf.quants.quantize(values.astype(np.float32), qtype), qtype


def write(path: Path, rank: int, qtype: Q, n_layer: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for il in range(n_layer):
        for name, (n_out, n_in) in projections().items():
            a = rng.standard_normal((rank, n_in), dtype=np.float32) / np.sqrt(n_in)    # ne [n_in, r]
            b = rng.standard_normal((n_out, rank), dtype=np.float32) * 0.01            # ne [r, n_out]
            for half, values in (("lora_a", a), ("lora_b", b)):
                data, raw = encode(values, qtype)
                w.add_tensor(f"blk.{il}.{name}.weight.{half}", data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--type", default="F16", choices=["F16", "F32", "Q8_0"])
    ap.add_argument("--layers", type=int, default=SHAPE["n_layer"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write(args.out, args.rank, Q[args.type], args.layers, args.seed)


if __name__ == "__main__":
    main()
