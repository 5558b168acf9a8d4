"""Writes a TinyLlama-1.1B-shaped LLaMA GGUF with random weights, for benchmarks.

Shapes are TinyLlama's (n_embd 2048, 22 layers, 32 heads, 4 KV heads, n_ff 5632,
vocab 32000, SPM vocabulary with byte tokens). Weights are N(0, 1/sqrt(n_in)),
so speed is realistic and the text is noise. Deterministic for a given seed.

    python benches/make_bench_model.py OUT.gguf [--type Q4_0|Q8_0|F16|F32] [--layers 22]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

SHAPE = dict(n_vocab=32000, n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_ctx=2048)
Q = gguf.GGMLQuantizationType


def spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, the 256 byte tokens, then '▁t<i>' pieces with descending scores."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    types += [1] * (n_vocab - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(n_vocab - 259)]
    return tokens, scores, types


def matrix(rng: np.random.Generator, n_out: int, n_in: int, qtype: Q) -> tuple[np.ndarray, Q | None]:
    w = (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)).astype(np.float32)
    if qtype == Q.F32:
        return w, None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    return gguf.quants.quantize(w, qtype), qtype


def write(path: Path, qtype: Q, n_layer: int, seed: int = 0) -> None:
    s = dict(SHAPE, n_layer=n_layer)
    e, ff, hd = s["n_embd"], s["n_ff"], s["n_embd"] // s["n_head"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("bench-tinyllama-shaped")
    w.add_context_length(s["n_ctx"])
    w.add_embedding_length(e)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ff)
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_tokenizer_model("llama")
    tokens, scores, types = spm_vocab(s["n_vocab"])
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name, shape_out_in):
        data, raw = matrix(rng, *shape_out_in, qtype)
        w.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", (s["n_vocab"], e))
    w.add_tensor("output_norm.weight", np.ones(e, np.float32))
    add("output.weight", (s["n_vocab"], e))
    kv = hd * s["n_head_kv"]
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", np.ones(e, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(e, np.float32))
        for name, shape in (("attn_q", (e, e)), ("attn_k", (kv, e)), ("attn_v", (kv, e)), ("attn_output", (e, e)),
                            ("ffn_gate", (ff, e)), ("ffn_up", (ff, e)), ("ffn_down", (e, ff))):
            add(p + name + ".weight", shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--type", default="Q4_0", choices=["Q4_0", "Q8_0", "F16", "F32"])
    ap.add_argument("--layers", type=int, default=SHAPE["n_layer"])
    args = ap.parse_args()
    write(args.out, Q[args.type], args.layers)


if __name__ == "__main__":
    main()
