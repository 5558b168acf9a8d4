"""`finetune()`: train a LoRA adapter on a base GGUF and write it; what `hotlora finetune` runs.

With `resume`, the run's options are the checkpoint's: the base model and the training data must be the same
files (checked by their identities), and the options given now are ignored except the outputs, threads,
checkpointing and keep_activations (which change no result). Without it, `options` are checked and a new run starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import HotLoraError
from ..model import Model
from ..output_file import refuse_same_file
from ..system import physical_cores
from . import checkpoint as ckpt
from .data import Dataset, load_dataset
from .export import write_gguf_adapter, write_peft_dir
from .loop import StepReport, Trainer, TrainOptions, TrainResult, train


DEFAULT_CTX = 256


@dataclass
class Outputs:
    adapter: Path                      # llama.cpp adapter GGUF
    checkpoint: Path                   # written every checkpoint_every steps and on Ctrl-C
    peft_dir: Path | None = None
    checkpoint_every: int = 0


def default_checkpoint(adapter: Path) -> Path:
    return Path(f"{adapter}.ckpt")


def _check_outputs(outputs: Outputs, inputs: list[Path]) -> None:
    """Refuses outputs that could not be written before any training time is spent."""
    for what, path in (("-o", outputs.adapter), ("checkpoint", outputs.checkpoint)):
        if Path(path).is_dir():
            raise HotLoraError(f"{what} '{path}' is a folder; give a file name")
        if not Path(path).parent.is_dir():
            raise HotLoraError(f"{what} '{path}': folder '{Path(path).parent}' does not exist")
        refuse_same_file(Path(path), [("input", p) for p in inputs])
    if outputs.peft_dir is not None and Path(outputs.peft_dir).exists() and not Path(outputs.peft_dir).is_dir():
        raise HotLoraError(f"--peft-dir '{outputs.peft_dir}' exists and is not a folder")


def finetune(base: Path | None, train_data: Path, outputs: Outputs, options: TrainOptions,
             n_threads: int | None = None, resume: Path | None = None,
             on_start: Callable[[Trainer], None] | None = None,
             on_step: Callable[[StepReport], None] | None = None,
             keep_activations: bool = False) -> tuple[TrainResult, Dataset]:
    n_threads = n_threads or physical_cores()
    _check_outputs(outputs, [p for p in (base, train_data) if p is not None])
    with Model(base, n_ctx=8, n_batch=8, n_threads=n_threads, repack=False) as model:  # the backward reads W by rows
        base_id, data_id = ckpt.base_identity(model.file), ckpt.data_identity(train_data)
        saved = None
        if resume is not None:
            saved = ckpt.load(resume)
            ckpt.check_same(resume, "base model", saved.meta["base"], base_id, model.path)
            ckpt.check_same(resume, "training data", saved.meta["data"], data_id, train_data)
            options = TrainOptions.from_json(saved.meta["options"])
        if options.ctx is None:
            options = dataclasses.replace(options, ctx=min(DEFAULT_CTX, model.hparams.n_ctx_train))
        options.check()
        data = load_dataset(train_data, model, options.ctx, options.jsonl, options.val_split, options.seed,
                            options.chat_template)
        trainer = Trainer(model, data, options, n_threads, keep_activations)
        try:
            if saved is not None:
                trainer.restore(saved, resume)
            if on_start is not None:
                on_start(trainer)
            def save_checkpoint() -> Path:
                ckpt.save(outputs.checkpoint, trainer.checkpoint(base_id, data_id))
                return outputs.checkpoint
            result = train(trainer, save_checkpoint, outputs.checkpoint_every, on_step)
        finally:
            trainer.close()
        write_gguf_adapter(result.params, model, outputs.adapter)
        if outputs.peft_dir is not None:
            write_peft_dir(result.params, model, outputs.peft_dir)
    return result, data
