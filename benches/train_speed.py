"""Training throughput (tokens/s) of hotlora finetune against PyTorch + PEFT on the same model shape and threads.

hotlora trains on the GGUF as it is (e.g. the TinyLlama-shaped Q4_K_M bench model); PyTorch cannot read
Q4_K_M, so it trains on the same model dequantized to F32 (from --torch-base, default the same file), with
q/k rows un-permuted to Hugging Face's order. Both: LoRA rank --rank on every projection (q,k,v,o,gate,up,
down), alpha = rank, one window of --ctx random tokens per step, AdamW, clipping at 1.0, --threads threads.

Rounds are interleaved (hotlora, PyTorch, hotlora, ...), each in its own process (so neither's thread pool
sits beside the other); a round loads the model, takes one untimed warm-up step, then times --steps steps.
Reported: the median tokens/s over the rounds, and the peak RSS of each worker.

    python benches/make_bench_set.py --types Q4_K_M                  # /tmp/hotlora-bench/tinyllama-shaped-*.gguf
    python benches/train_speed.py --base /tmp/hotlora-bench/tinyllama-shaped-q4_k_m.gguf \\
        --torch-base /tmp/hotlora-bench/tinyllama-shaped-f16.gguf --threads 8 --rounds 3
    python benches/train_speed.py --optimizer-only                    # one AdamW step + clipping, TinyLlama r16

Needs torch, transformers and peft for the PyTorch side (pip install ".[train-compare]").
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
HF_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_TO_HF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _windows(n_vocab: int, ctx: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        seq = rng.integers(3, n_vocab, ctx + 1).astype(np.int32)
        out.append((seq[:-1].copy(), seq[1:].copy()))
    return out


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers (one process each) -----------------------------------------------------------------------------

def hotlora_worker(args) -> dict:
    from hotlora.model import Model
    from hotlora.train.data import Dataset, Window
    from hotlora.train.loop import Trainer, TrainOptions

    with Model(args.base, n_ctx=8, n_batch=8, n_threads=args.threads, repack=False) as model:
        windows = [Window(t, y, i) for i, (t, y) in enumerate(_windows(model.n_vocab, args.ctx, args.steps + 1))]
        options = TrainOptions(rank=args.rank, alpha=float(args.rank), targets=TARGETS, ctx=args.ctx,
                               steps=args.steps + 1, warmup=0, lr=1e-4, seed=0)
        trainer = Trainer(model, Dataset(Path(args.base), windows, [], 0), options, args.threads)
        trainer.step()                       # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step()
        seconds = time.perf_counter() - start
        trainer.close()
    return {"tokens_per_s": args.steps * args.ctx / seconds, "peak_rss_mib": _peak_rss_mib()}


def _hf_state(path: str) -> tuple[dict, dict]:
    """The GGUF's tensors dequantized to float32 in Hugging Face names and q/k row order, and its shape."""
    import gguf

    from hotlora.convert import unpermute_rows
    from hotlora.gguf_io import GGUFFile
    from hotlora.hparams import read_hparams

    file = GGUFFile(path)
    hp = read_hparams(file, file.tensors["token_embd.weight"].ne[1])
    state = {}
    for t in file.reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
            [int(d) for d in reversed(t.shape)])
        name = t.name
        if name == "token_embd.weight":
            state["model.embed_tokens.weight"] = values
        elif name == "output.weight":
            state["lm_head.weight"] = values
        elif name == "output_norm.weight":
            state["model.norm.weight"] = values
        else:
            _, layer, kind, _ = name.split(".")
            if kind in ("attn_q", "attn_k"):
                values = unpermute_rows(values, hp.n_head if kind == "attn_q" else hp.n_head_kv)
            state[f"model.layers.{layer}.{GGUF_TO_HF[kind]}.weight"] = values
    return state, {"vocab": hp.n_vocab, "hidden": hp.n_embd, "layers": hp.n_layer, "heads": hp.n_head,
                   "kv_heads": hp.n_head_kv, "ffn": hp.n_ff, "eps": hp.rms_eps, "theta": hp.rope_freq_base,
                   "tied": "lm_head.weight" not in state}


def torch_worker(args) -> dict:
    import peft
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    state, shape = _hf_state(args.torch_base or args.base)
    config = transformers.LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        rms_norm_eps=shape["eps"], rope_theta=shape["theta"], max_position_embeddings=max(2048, args.ctx),
        tie_word_embeddings=shape["tied"])
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=not shape["tied"])
    del state
    model = peft.get_peft_model(model.float(), peft.LoraConfig(r=args.rank, lora_alpha=args.rank, lora_dropout=0.0,
                                                               target_modules=list(HF_MODULES)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step(tokens: np.ndarray, targets: np.ndarray) -> None:
        opt.zero_grad()
        logits = model(input_ids=torch.from_numpy(tokens[None].astype(np.int64))).logits[0]
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets.astype(np.int64))).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    windows = _windows(shape["vocab"], args.ctx, args.steps + 1)
    step(*windows[0])
    start = time.perf_counter()
    for tokens, targets in windows[1:]:
        step(tokens, targets)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": args.steps * args.ctx / seconds, "peak_rss_mib": _peak_rss_mib()}


# ---- the comparison -----------------------------------------------------------------------------------------

def _round(worker: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--base", str(args.base), "--rank", str(args.rank),
           "--ctx", str(args.ctx), "--threads", str(args.threads), "--steps", str(args.steps)]
    if args.torch_base:
        cmd += ["--torch-base", str(args.torch_base)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{worker} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def optimizer_only() -> dict:
    """One AdamW step and one global-norm clip over rank-16 LoRA on every target of TinyLlama (12.6 M values)."""
    from hotlora.train.optim import AdamW, clip_grad_norm

    e, kv, ff, r = 2048, 256, 5632, 16
    shapes = [s for _ in range(22) for n_in, n_out in ((e, e), (e, kv), (e, kv), (e, e), (e, ff), (e, ff), (ff, e))
              for s in ((r, n_in), (n_out, r))]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    opt, clip_ms, adam_ms = AdamW(params), [], []
    for _ in range(7):
        t0 = time.perf_counter()
        clip_grad_norm(grads, 1.0)
        t1 = time.perf_counter()
        opt.step(grads, 1e-4)
        t2 = time.perf_counter()
        clip_ms.append((t1 - t0) * 1e3)
        adam_ms.append((t2 - t1) * 1e3)
    return {"values": sum(p.size for p in params), "clip_ms": statistics.median(clip_ms),
            "adamw_ms": statistics.median(adam_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, help="GGUF hotlora trains on (e.g. the Q4_K_M bench model)")
    ap.add_argument("--torch-base", type=Path, help="GGUF PyTorch trains on, dequantized to F32 (default: --base)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-torch", action="store_true", help="hotlora only")
    ap.add_argument("--optimizer-only", action="store_true", help="time one AdamW step + clipping (numpy)")
    ap.add_argument("--worker", choices=["hotlora", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.optimizer_only:
        print(json.dumps(optimizer_only()))
        return
    if args.base is None:
        ap.error("--base is required")
    if args.worker:
        print(json.dumps((hotlora_worker if args.worker == "hotlora" else torch_worker)(args)))
        return
    workers = ["hotlora"] + ([] if args.skip_torch else ["torch"])
    runs: dict[str, list[dict]] = {w: [] for w in workers}
    for _ in range(args.rounds):
        for worker in workers:
            runs[worker].append(_round(worker, args))
    print(f"| trainer | model | rank | ctx | threads | tokens/s (median of {args.rounds}) | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for worker, results in runs.items():
        model = args.base.name if worker == "hotlora" else f"{(args.torch_base or args.base).name} as F32"
        name = "hotlora finetune" if worker == "hotlora" else "PyTorch + PEFT"
        print(f"| {name} | {model} | {args.rank} | {args.ctx} | {args.threads} | "
              f"{statistics.median(r['tokens_per_s'] for r in results):.1f} | "
              f"{max(r['peak_rss_mib'] for r in results):.0f} |")


if __name__ == "__main__":
    main()
