"""Option types shared by commands: adapters given as --hot-lora PATH / --hot-lora-scaled PATH SCALE.

Typer has no repeatable two-value option, so app.main joins the two values of
each --hot-lora-scaled (or --lora-scaled) into one argument before parsing,
with a separator no path contains; split_scaled() takes them apart again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


PAIR_OPTIONS = ("--hot-lora-scaled", "--lora-scaled")
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")  # click's, via typer
PAIR_SEPARATOR = "\x1f"  # ASCII unit separator

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


def adapter_list(plain: list[Path] | None, scaled: list[str] | None) -> list[tuple[Path, float]]:
    """(path, scale) for every adapter option, plain ones first, each in command-line order."""
    pairs = [(p, 1.0) for p in plain or []]
    for joined in scaled or []:
        path, _, scale = joined.partition(PAIR_SEPARATOR)
        try:
            pairs.append((Path(path), float(scale)))
        except ValueError:
            raise typer.BadParameter(f"'{scale}' is not a number", param_hint="--hot-lora-scaled") from None
    return pairs
