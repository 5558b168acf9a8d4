#!/usr/bin/env python3
"""Make the bundled demo adapter ``data/hotlora-tiny-hot-lora.lora.gguf`` with ``hotlora finetune``.

The original llama.cpp workflow: write a few lines into a text file, fine-tune a LoRA on a base model, and
hot-swap it in. Here the text is ``data/hot-lora.txt`` and the base is the bundled ``hotlora-tiny.gguf``; this
script runs hotlora's own trainer (``hotlora.train.finetune``, the library function behind ``hotlora
finetune``) with fixed options, the same as::

    hotlora finetune -m data/hotlora-tiny.gguf --train-data data/hot-lora.txt \\
        -o data/hotlora-tiny-hot-lora.lora.gguf --rank 8 --ctx 128 --steps 400 --lr 0.01 --seed 0

The whole text is one window (93 tokens after BOS), so the adapter learns to write it after BOS: greedy
decoding with the adapter reproduces every line, and without it the model writes its usual bigram prose.
Training is deterministic (the C core's gradients do not depend on the thread count, checked with 1 and 2
threads; the optimizer is elementwise numpy), so the file is the same on every run of the same build.

    python data/make_hot_lora.py [--out-dir data] [--threads N] [--check]

``--check`` prints the greedy continuation of BOS without and with the adapter, and fails unless the
adapter reproduces the text and the base does not. ``data/make_default.py`` calls this after the model.
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
import tempfile
import time

TEXT_FILE = "hot-lora.txt"
MODEL_FILE = "hotlora-tiny.gguf"
ADAPTER_FILE = "hotlora-tiny-hot-lora.lora.gguf"
OPTIONS = dict(rank=8, alpha=8.0, ctx=128, steps=400, lr=1e-2, seed=0)


def make_hot_lora_adapter(out_dir: pathlib.Path, threads: int = 2) -> pathlib.Path:
    from hotlora.train.finetune import Outputs, finetune
    from hotlora.train.loop import TrainOptions

    out = out_dir / ADAPTER_FILE
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result, _ = finetune(out_dir / MODEL_FILE, out_dir / TEXT_FILE,
                             Outputs(out, pathlib.Path(tmp) / "hot-lora.ckpt"), TrainOptions(**OPTIONS), threads)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {digest}): loss {result.losses[0]:.3f} -> "
          f"{result.losses[-1]:.3f} in {result.steps} steps, {time.perf_counter() - start:.1f} s")
    return out


def greedy(model, n_tokens: int) -> str:
    """The greedy continuation of BOS alone."""
    return "".join(piece for _, piece in model.generate([model.tokenizer.bos_id], n_predict=n_tokens, temp=0))


def check(out_dir: pathlib.Path) -> None:
    from hotlora.model import Model

    text = (out_dir / TEXT_FILE).read_text(encoding="utf-8")
    with Model(out_dir / MODEL_FILE, n_ctx=256, n_threads=1, repack=False) as model:
        n = len(model.tokenize(text, add_bos=False))
        base = greedy(model, n)
        model.set_adapters({model.load_adapter(out_dir / ADAPTER_FILE): 1.0})
        adapted = greedy(model, n)
    print(f"greedy without the adapter: {base!r}\ngreedy with the adapter:    {adapted!r}")
    if adapted != text or base.startswith(text.splitlines()[0]):
        sys.exit("check failed: the adapter does not reproduce the text, or the base already does")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent,
                        help="folder holding hotlora-tiny.gguf and hot-lora.txt, receiving the adapter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="compare greedy text without and with the adapter")
    args = parser.parse_args()
    make_hot_lora_adapter(args.out_dir, args.threads)
    if args.check:
        check(args.out_dir)


if __name__ == "__main__":
    main()
