"""The training loop: windows in a seeded order, gradient accumulation, clipping, AdamW, checkpoints.

One optimizer step takes `batch × grad_acc` windows from the data order (a fresh permutation of the training
windows every epoch, from the run's seeded PCG64 generator, which first initialises A), adds their gradients
(hotlora.train.gradients, the C core), divides by the number of loss positions (the loss is the mean over loss
tokens of the whole step), clips the global norm and applies AdamW at the schedule's learning rate.

A step is a transaction: the parameters, moments, step count and data position change together at its end,
with Ctrl-C held back for those few milliseconds, so a checkpoint is always the state after a whole step.
Ctrl-C anywhere else abandons the step in progress; `train` then writes the checkpoint and raises Interrupted
(a KeyboardInterrupt). Resuming from a checkpoint restores every array and the generator, so the run continues
bit for bit on the same build (the core's gradients do not depend on the thread count).
"""
from __future__ import annotations

import math
import resource
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HotLoraError
from . import checkpoint as ckpt
from .data import Dataset, Window
from .gradients import LoraGradients
from .optim import AdamW, Schedule, clip_grad_norm
from .params import TARGETS, LoraParams, parse_targets as check_targets


@dataclass
class TrainOptions:
    rank: int = 8
    alpha: float | None = None    # None: the rank (the adapter's scale alpha/rank is 1)
    targets: tuple[str, ...] = tuple(TARGETS)
    ctx: int | None = None        # None: 256, or the model's context length if shorter
    batch: int = 1
    grad_acc: int = 1
    epochs: int | None = None     # neither epochs nor steps: one epoch
    steps: int | None = None
    lr: float = 1e-3
    warmup: int | None = None     # None: a tenth of the steps
    weight_decay: float = 0.01
    clip: float = 1.0             # 0: no clipping
    seed: int = 0
    val_split: float = 0.0
    jsonl: bool = False
    chat_template: str | None = None

    def check(self) -> None:
        """One line naming the first option out of range."""
        for name, value, low in (("rank", self.rank, 1), ("ctx", 1 if self.ctx is None else self.ctx, 1), ("batch", self.batch, 1),
                                 ("grad-acc", self.grad_acc, 1), ("warmup", self.warmup or 0, 0), ("seed", self.seed, 0)):
            if value < low:
                raise HotLoraError(f"--{name} must be at least {low}, got {value}")
        for name, value in (("epochs", self.epochs), ("steps", self.steps)):
            if value is not None and value < 1:
                raise HotLoraError(f"--{name} must be at least 1, got {value}")
        if self.epochs is not None and self.steps is not None:
            raise HotLoraError("give --epochs or --steps, not both")
        for name, value, positive in (("alpha", self.lora_alpha, True), ("lr", self.lr, True),
                                      ("weight-decay", self.weight_decay, False), ("clip", self.clip, False)):
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise HotLoraError(f"--{name} must be a finite number {'above' if positive else 'at least'} 0, "
                                   f"got {value}")
        if not 0 <= self.val_split < 1:
            raise HotLoraError(f"--val-split must be in [0, 1), got {self.val_split}")
        try:
            check_targets(self.targets)
        except HotLoraError as e:
            raise HotLoraError(f"--targets: {e}") from None

    @property
    def lora_alpha(self) -> float:
        return float(self.rank) if self.alpha is None else float(self.alpha)

    @property
    def windows_per_step(self) -> int:
        return self.batch * self.grad_acc

    def total_steps(self, n_train: int) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil((self.epochs or 1) * n_train / self.windows_per_step)

    def to_json(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_json(cls, values: dict) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "targets" else v) for k, v in values.items() if k in known})


def parse_targets(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass
class StepReport:
    step: int          # 1-based: steps done
    total: int
    loss: float        # mean over the step's loss tokens
    lr: float
    grad_norm: float   # before clipping
    tokens: int        # input tokens of the step


@dataclass
class TrainResult:
    params: LoraParams
    steps: int
    losses: list[float]
    val_loss_before: float | None
    val_loss: float | None
    tokens: int                  # input tokens trained on in this run (not counting a resumed run's earlier part)
    seconds: float
    peak_rss_mib: float = field(default=0.0)
    activation_bytes: int = 0    # what the C core's trainer holds (activations, scratch)
    optimizer_bytes: int = 0     # A, B, their gradients and AdamW's two moments: 16 bytes per trained value

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _copy_generator(rng: np.random.Generator) -> np.random.Generator:
    out = np.random.Generator(np.random.PCG64())
    out.bit_generator.state = rng.bit_generator.state
    return out


@contextmanager
def _hold_ctrl_c():
    """Defers SIGINT until the block ends (main thread only; elsewhere Python delivers none)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint was written."""

    def __init__(self, checkpoint: Path):
        super().__init__()
        self.checkpoint = checkpoint


class Trainer:
    """The state of one training run and its steps."""

    def __init__(self, model, data: Dataset, options: TrainOptions, n_threads: int, keep_activations: bool = False):
        """keep_activations: the core keeps every layer's forward intermediates instead of recomputing each layer
        in the backward (faster, more memory; the same gradients bit for bit)."""
        options.check()
        self.model, self.data, self.options = model, data, options
        self.total = options.total_steps(len(data.train))
        warmup = self.total // 10 if options.warmup is None else min(options.warmup, self.total)
        self.schedule = Schedule(options.lr, warmup, self.total)
        self.rng = _generator(options.seed)
        self.params = LoraParams.init(model, options.targets, options.rank, options.lora_alpha, self.rng)
        self.optimizer = AdamW(self.params.a + self.params.b, weight_decay=options.weight_decay)
        self.order = self.rng.permutation(len(data.train))
        self.position = 0      # next index into order
        self.step_count = 0
        self.losses: list[float] = []
        self.val_before: float | None = None
        n_max = max(len(w.tokens) for w in data.train + data.val)
        self.gradients = LoraGradients(model, self.params, n_max, n_threads, keep_activations)
        self.grad_a, self.grad_b = self.params.zeros_like()

    def close(self) -> None:
        self.gradients.close()

    # ---- data order ---------------------------------------------------------------------------------------
    def _take(self, count: int) -> tuple[list[Window], tuple]:
        """The next count windows and the data position after them, without moving this run's position."""
        order, position, rng = self.order, self.position, self.rng
        taken = []
        for _ in range(count):
            if position == len(order):
                rng = _copy_generator(rng) if rng is self.rng else rng
                order, position = rng.permutation(len(self.data.train)), 0
            taken.append(self.data.train[order[position]])
            position += 1
        return taken, (order, position, rng)

    # ---- one step -----------------------------------------------------------------------------------------
    def step(self) -> StepReport:
        windows, after = self._take(self.options.windows_per_step)
        grads = self.grad_a + self.grad_b
        for g in grads:
            g.fill(0)
        loss_sum, count = 0.0, 0
        for w in windows:
            s, n = self.gradients.accumulate(w.tokens, w.targets, self.grad_a, self.grad_b)
            loss_sum, count = loss_sum + s, count + n
        for g in grads:
            g /= np.float32(count)
        lr = self.schedule.lr_at(self.step_count)
        with _hold_ctrl_c():
            norm = clip_grad_norm(grads, self.options.clip)
            self.optimizer.step(grads, lr)
            self.order, self.position, self.rng = after
            self.step_count += 1
            self.losses.append(loss_sum / count)
        return StepReport(self.step_count, self.total, loss_sum / count, lr, norm, sum(len(w.tokens) for w in windows))

    # ---- evaluation ---------------------------------------------------------------------------------------
    def val_loss(self) -> float | None:
        """Mean loss over every loss position of the validation windows (None without any)."""
        if not self.data.val:
            return None
        total, count = 0.0, 0
        for w in self.data.val:
            logits = self.gradients.logits(w.tokens).astype(np.float64)
            keep = w.targets >= 0
            rows = logits[keep]
            top = rows.max(axis=1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
            total += float((logz - rows[np.arange(len(rows)), w.targets[keep]]).sum())
            count += int(keep.sum())
        return total / count

    # ---- checkpoints --------------------------------------------------------------------------------------
    def checkpoint(self, base_id: dict, data_id: dict) -> ckpt.Checkpoint:
        meta = {"step": self.step_count, "position": self.position, "rng": self.rng.bit_generator.state,
                "adam_t": self.optimizer.t, "options": self.options.to_json(), "losses": self.losses,
                "val_before": self.val_before,
                "names": self.params.names, "base": base_id, "data": data_id}
        return ckpt.Checkpoint(meta, self.params.a, self.params.b, self.optimizer.m, self.optimizer.v,
                               np.asarray(self.order, np.int64))

    def restore(self, saved: ckpt.Checkpoint, path: Path) -> None:
        """Puts a checkpoint's arrays and counters in place (its base and data were checked by the caller)."""
        meta = saved.meta
        mine = self.params.a + self.params.b + self.optimizer.m + self.optimizer.v
        theirs = saved.a + saved.b + saved.m + saved.v
        if meta["names"] != self.params.names or len(saved.order) != len(self.data.train) or any(
                x.shape != y.shape or y.dtype != np.float32 for x, y in zip(mine, theirs)):
            raise HotLoraError(f"--resume: '{path}' does not hold the arrays of this run's options")
        for x, y in zip(mine, theirs):
            x[...] = y
        self.order, self.position = saved.order, int(meta["position"])
        self.rng.bit_generator.state = meta["rng"]
        self.optimizer.t, self.step_count, self.losses = int(meta["adam_t"]), int(meta["step"]), list(meta["losses"])
        self.val_before = meta["val_before"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(trainer: Trainer, save_checkpoint: Callable[[], Path], checkpoint_every: int = 0,
          on_step: Callable[[StepReport], None] | None = None) -> TrainResult:
    """Runs the remaining steps; a checkpoint every checkpoint_every steps, and on Ctrl-C, then Interrupted."""
    if trainer.step_count == 0:
        trainer.val_before = trainer.val_loss()
    start, tokens = time.perf_counter(), 0
    try:
        while trainer.step_count < trainer.total:
            report = trainer.step()
            tokens += report.tokens
            if checkpoint_every and report.step % checkpoint_every == 0 and report.step < trainer.total:
                save_checkpoint()
            if on_step is not None:
                on_step(report)
    except KeyboardInterrupt:
        raise Interrupted(save_checkpoint()) from None
    seconds = time.perf_counter() - start
    n_values = sum(x.size for x in trainer.params.a + trainer.params.b)
    return TrainResult(trainer.params, trainer.step_count, trainer.losses, trainer.val_before, trainer.val_loss(), tokens,
                       seconds, peak_rss_mib(), trainer.gradients.n_bytes, 16 * n_values)
