"""`hotlora finetune`: train a LoRA adapter on a text (or JSONL) file, on the CPU, with the engine that serves it.

The work is in hotlora.train.finetune; this parses the options, shows a Rich progress bar on stderr (loss,
tokens/s, ETA), then a table of the train and validation loss on stderr, or with --json one JSON object on
stdout. Ctrl-C writes the checkpoint (--checkpoint, default OUTPUT.ckpt) and exits 130.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Threads, int_option

Opt = typer.Option


def _progress_reporter():
    """(on_start, on_step, stop, console): a Rich progress bar on stderr and its console."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                        TextColumn("{task.fields[speed]} tok/s"), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console)
    state = {}

    def on_start(trainer) -> None:
        progress.start()
        state["task"] = progress.add_task("train", total=trainer.total, completed=trainer.step_count,
                                          loss="-", speed="-")
        state["tokens"], state["start"] = 0, time.perf_counter()

    def on_step(report) -> None:
        state["tokens"] += report.tokens
        speed = state["tokens"] / max(time.perf_counter() - state["start"], 1e-9)
        progress.update(state["task"], completed=report.step, loss=f"{report.loss:.4f}", speed=f"{speed:.0f}")

    return on_start, on_step, progress.stop, console


def _table(result, data, output: Path, peft_dir: Optional[Path]):
    from rich.table import Table

    table = Table(title=f"finetune: {data.path} -> {output}", title_justify="left")
    for column in ("", "windows", "loss tokens", "loss before", "loss after"):
        table.add_column(column, justify="left" if not column else "right")
    first = f"{result.losses[0]:.4f}" if result.losses else "-"
    last = f"{result.losses[-1]:.4f}" if result.losses else "-"
    table.add_row("train (first / last step)", str(len(data.train)), str(data.train_loss_tokens), first, last)
    if data.val:
        before = "-" if result.val_loss_before is None else f"{result.val_loss_before:.4f}"
        table.add_row("validation", str(len(data.val)), str(sum(w.n_loss for w in data.val)), before,
                      f"{result.val_loss:.4f}")
    table.caption = (f"{result.steps} steps, {result.tokens_per_s:.0f} tokens/s; activations "
                     f"{result.activation_bytes / 2**20:.1f} MiB, optimizer {result.optimizer_bytes / 2**20:.1f} MiB, "
                     f"peak RSS {result.peak_rss_mib:.0f} MiB"
                     + (f"; PEFT directory {peft_dir}" if peft_dir else ""))
    return table


def _json(result, data, output: Path, peft_dir: Optional[Path], checkpoint: Path) -> str:
    return json.dumps({
        "adapter": str(output), "peft_dir": str(peft_dir) if peft_dir else None, "checkpoint": str(checkpoint),
        "steps": result.steps, "train_windows": len(data.train), "val_windows": len(data.val),
        "train_loss_first": result.losses[0] if result.losses else None,
        "train_loss": result.losses[-1] if result.losses else None, "losses": result.losses,
        "val_loss_before": result.val_loss_before, "val_loss": result.val_loss,
        "tokens": result.tokens, "seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
        "peak_rss_mib": result.peak_rss_mib, "activation_bytes": result.activation_bytes,
        "optimizer_bytes": result.optimizer_bytes,
    })


def finetune(
    train_data: Annotated[Path, Opt("--train-data", help="UTF-8 text file (or JSONL with --jsonl) to train on")],
    output: Annotated[Path, Opt("-o", "--output", help="the adapter GGUF to write (llama.cpp's LoRA format)")],
    model: Annotated[Optional[Path], Opt("-m", "--model", help="base model GGUF (default: the bundled tiny model)")] = None,
    rank: Annotated[int, int_option("--rank", help="LoRA rank r (at least 1)")] = 8,
    alpha: Annotated[Optional[float], Opt("--alpha", help="LoRA alpha; the adapter's scale is alpha/rank "
                                          "(default: the rank, scale 1)")] = None,
    targets: Annotated[str, Opt("--targets", help="projections to adapt, comma-separated among "
                                "q,k,v,o,gate,up,down")] = "q,k,v,o,gate,up,down",
    ctx: Annotated[Optional[int], int_option("--ctx", help="tokens per training window (default: 256, or the "
                                             "model's context if shorter)")] = None,
    batch: Annotated[int, int_option("--batch", help="windows per step before accumulation")] = 1,
    grad_acc: Annotated[int, int_option("--grad-acc", help="batches accumulated per optimizer step")] = 1,
    epochs: Annotated[Optional[int], int_option("--epochs", help="passes over the training windows (default 1)")] = None,
    steps: Annotated[Optional[int], int_option("--steps", help="optimizer steps (instead of --epochs)")] = None,
    lr: Annotated[float, Opt("--lr", help="peak learning rate (AdamW)")] = 1e-3,
    warmup: Annotated[Optional[int], int_option("--warmup", help="linear warm-up steps before the cosine decay "
                                                "(default: a tenth of the steps)")] = None,
    weight_decay: Annotated[float, Opt("--weight-decay", help="AdamW's decoupled weight decay")] = 0.01,
    clip: Annotated[float, Opt("--clip", help="clip the gradients' global norm to this (0: off)")] = 1.0,
    seed: Annotated[int, int_option("--seed", help="seed of A's initialisation, the data order and the split")] = 0,
    val_split: Annotated[float, Opt("--val-split", help="fraction of the windows (JSONL: records) held out "
                                    "for the validation loss")] = 0.0,
    checkpoint_every: Annotated[int, int_option("--checkpoint-every", help="write the checkpoint every N steps "
                                                "(0: only on Ctrl-C)", low=0)] = 0,
    checkpoint: Annotated[Optional[Path], Opt("--checkpoint", help="checkpoint file (default: OUTPUT.ckpt)")] = None,
    resume: Annotated[Optional[Path], Opt("--resume", help="continue from a checkpoint, bit for bit, with its "
                                          "options")] = None,
    threads: Threads = None,
    keep_activations: Annotated[bool, Opt("--keep-activations", help="keep every layer's activations instead of "
                                          "recomputing them in the backward: faster, more memory, same result")] = False,
    jsonl: Annotated[bool, Opt("--jsonl", help="the data is JSONL: {\"prompt\", \"completion\"} or "
                               "{\"messages\": [...]} records, loss on the completion / assistant turns")] = False,
    chat_template: Annotated[Optional[str], Opt("--chat-template", help="chat template for JSONL messages: "
                                                "chatml, llama2, llama3, zephyr, mistral-v7 or a Jinja file "
                                                "(default: the model's)")] = None,
    peft_dir: Annotated[Optional[Path], Opt("--peft-dir", help="also write a PEFT adapter directory here")] = None,
    as_json: Annotated[bool, Opt("--json", help="print one JSON object with the results on stdout")] = False,
) -> None:
    """Train a LoRA adapter on a text file (or JSONL records) on the CPU, for run --hot-lora."""
    from ..train.finetune import Outputs, default_checkpoint, finetune as run_finetune
    from ..train.loop import Interrupted, TrainOptions, parse_targets

    options = TrainOptions(rank=rank, alpha=alpha, targets=parse_targets(targets),
                           ctx=ctx, batch=batch, grad_acc=grad_acc, epochs=epochs, steps=steps, lr=lr, warmup=warmup,
                           weight_decay=weight_decay, clip=clip, seed=seed, val_split=val_split, jsonl=jsonl,
                           chat_template=chat_template)
    if resume is None:
        options.check()
    outputs = Outputs(output, checkpoint or default_checkpoint(output), peft_dir, checkpoint_every)
    on_start, on_step, stop, console = _progress_reporter()
    try:
        result, data = run_finetune(model, train_data, outputs, options, threads, resume, on_start, on_step,
                                    keep_activations)
    except Interrupted as e:
        stop()
        sys.stderr.write(f"finetune: interrupted; checkpoint written to {e.checkpoint} "
                         f"(continue with --resume {e.checkpoint})\n")
        raise
    stop()
    if as_json:
        sys.stdout.write(_json(result, data, output, peft_dir, outputs.checkpoint) + "\n")
    else:
        console.print(_table(result, data, output, peft_dir))
        console.print(f"wrote {output}" + (f" and {peft_dir}" if peft_dir else ""), markup=False, highlight=False)
