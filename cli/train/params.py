"""The trainable LoRA weights (A, B per adapted projection), in llama.cpp adapter / PEFT orientation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..adapters import LAYER_TARGETS
from ..errors import HotLoraError

if TYPE_CHECKING:
    from ..model import Model

TARGETS = dict(zip(("q", "k", "v", "o", "gate", "up", "down"), LAYER_TARGETS))
"""Short target names (--targets) -> the projection's tensor name inside a block (adapters.LAYER_TARGETS, in
its order: attn_q .. ffn_down), in the order pairs are kept."""


def parse_targets(targets: Sequence[str]) -> list[str]:
    """The short names in TARGETS order, checked: known, none twice, at least one."""
    names = [t.strip() for t in targets]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise HotLoraError(f"unknown LoRA target '{unknown[0]}' (choose from {','.join(TARGETS)})")
    if len(set(names)) != len(names):
        raise HotLoraError(f"LoRA targets name a projection twice: {','.join(names)}")
    if not names:
        raise HotLoraError("no LoRA targets given")
    return [t for t in TARGETS if t in names]


def projection_shape(model: "Model", name: str) -> tuple[int, int]:
    """(n_in, n_out) of the base projection `name` (e.g. "blk.0.attn_q.weight")."""
    info = model.file.tensors.get(name)
    if info is None:
        raise HotLoraError(f"{model.path}: the model has no tensor '{name}'")
    return int(info.ne[0]), int(info.ne[1])


@dataclass
class LoraParams:
    """Trainable LoRA weights, float32 C-contiguous numpy arrays in llama.cpp adapter orientation."""
    names: list[str]        # base tensor names, e.g. "blk.0.attn_q.weight", in a fixed order
    a: list[np.ndarray]     # [rank, n_in] each   (PEFT lora_A.weight orientation)
    b: list[np.ndarray]     # [n_out, rank] each  (PEFT lora_B.weight orientation)
    rank: int
    alpha: float

    @property
    def lora_scale(self) -> float:
        """alpha / rank: the adapter's own scale (PEFT's `scaling`)."""
        return self.alpha / self.rank

    @classmethod
    def init(cls, model: "Model", targets: Sequence[str], rank: int, alpha: float,
             rng: np.random.Generator) -> "LoraParams":
        """PEFT's initialisation on every block's targets: A ~ U(-1/sqrt(n_in), 1/sqrt(n_in)) (kaiming_uniform
        with a = sqrt(5)), B = 0. Blocks in order, targets in TARGETS order within a block."""
        if not isinstance(rank, (int, np.integer)) or rank < 1:
            raise HotLoraError(f"LoRA rank must be a positive integer, got {rank}")
        if not math.isfinite(alpha) or alpha <= 0:
            raise HotLoraError(f"LoRA alpha must be a positive number, got {alpha}")
        short = parse_targets(targets)
        names, a, b = [], [], []
        for il in range(model.n_layer):
            for t in short:
                name = f"blk.{il}.{TARGETS[t]}.weight"
                n_in, n_out = projection_shape(model, name)
                bound = 1.0 / math.sqrt(n_in)
                names.append(name)
                a.append(rng.uniform(-bound, bound, size=(rank, n_in)).astype(np.float32))
                b.append(np.zeros((n_out, rank), dtype=np.float32))
        return cls(names, a, b, int(rank), float(alpha))

    def zeros_like(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gradient buffers: zeros shaped as a and b."""
        return [np.zeros_like(x) for x in self.a], [np.zeros_like(x) for x in self.b]
