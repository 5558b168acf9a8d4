"""Option types shared by commands: range-checked integers, thread counts, and adapters given as
--hot-lora PATH / --hot-lora-scaled PATH SCALE.

Every integer option is checked at parse time (a usage error naming the option, exit 2): the C core
takes int32 values, so nothing at or above 2^31 may reach it.

Typer has no repeatable two-value option, so app.main joins the two values of
each --hot-lora-scaled (or --lora-scaled) into one argument before parsing,
with a separator no path contains; adapter_list() takes them apart again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import HotLoraError
from ..scales import parse_scale

PAIR_OPTIONS = ("--hot-lora-scaled", "--lora-scaled")
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")  # click's, via typer
PAIR_SEPARATOR = "\x1f"  # ASCII unit separator

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
UINT32_MAX = (1 << 32) - 1
MAX_THREADS = 512      # ggml's GGML_MAX_N_THREADS: more threads than this is a usage error
MAX_TOKENS = 1 << 20   # per prompt, batch or generation test: far beyond any model's context, far below int32


def int_option(*names: str, help: str, low: int = INT32_MIN, high: int = INT32_MAX, **kwargs):
    """An integer option checked against [low, high] at parse time (int32 unless narrower)."""
    return typer.Option(*names, help=help, min=low, max=high, **kwargs)


Threads = Annotated[Optional[int], int_option(
    "-t", "--threads", help=f"threads, 1 to {MAX_THREADS} (default: physical cores)", low=1, high=MAX_THREADS)]
NoRepack = Annotated[bool, typer.Option(
    "-nr", "--no-repack", help="keep the weights as the file stores them (no load-time repacking for this CPU)")]
HotLora = Annotated[Optional[list[Path]], typer.Option(
    "--hot-lora", "--lora", help="LoRA adapter (GGUF or ggla) at scale 1; repeatable", metavar="PATH")]
HotLoraScaled = Annotated[Optional[list[str]], typer.Option(
    "--hot-lora-scaled", "--lora-scaled", help="LoRA adapter at a scale; repeatable", metavar="PATH SCALE")]


def join_pairs(argv: list[str]) -> list[str]:
    """['--hot-lora-scaled', 'a.gguf', '0.5'] -> ['--hot-lora-scaled', 'a.gguf<US>0.5']."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in PAIR_OPTIONS:
            if i + 2 >= len(argv):
                raise UsageError(f"{argv[i]} needs two values: PATH SCALE")
            out += [argv[i], argv[i + 1] + PAIR_SEPARATOR + argv[i + 2]]
            i += 3
        else:
            out.append(argv[i])
            i += 1
    return out


def _scale(path: str, text: str) -> float:
    """A scale the core can hold: a finite float32 ('nan', 'inf', '1e39' are refused, naming the adapter)."""
    try:
        return parse_scale(text, path)
    except HotLoraError as e:
        raise typer.BadParameter(str(e), param_hint="--hot-lora-scaled") from None


def adapter_list(plain: list[Path] | None, scaled: list[str] | None) -> list[tuple[Path, float]]:
    """(path, scale) for every adapter option, plain ones first, each in command-line order."""
    pairs = [(p, 1.0) for p in plain or []]
    for joined in scaled or []:
        path, _, scale = joined.partition(PAIR_SEPARATOR)
        pairs.append((Path(path), _scale(path, scale)))
    return pairs
