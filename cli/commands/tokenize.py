"""`hotlora tokenize`: mirrors llama-tokenize (one `id -> 'piece'` line per token, or --ids)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..text import unescape
from ..tokenizer import Tokenizer


def tokenize(
    model: Annotated[Path, typer.Option("-m", "--model", help="any GGUF with a vocabulary (vocab-only files too)")],
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="text to tokenize")],
    ids: Annotated[bool, typer.Option("--ids", help="print only the ids, as a Python list")] = False,
    no_bos: Annotated[bool, typer.Option("--no-bos", help="do not add BOS")] = False,
    no_parse_special: Annotated[bool, typer.Option("--no-parse-special", help="treat special-token text as plain text")] = False,
    no_escape: Annotated[bool, typer.Option("--no-escape", help="do not process escapes in the prompt")] = False,
) -> None:
    """Tokenize text with a model's vocabulary."""
    tok = Tokenizer(model)
    text = prompt if no_escape else unescape(prompt)
    tokens = tok.tokenize(text, add_bos=not no_bos, special=not no_parse_special)
    if ids:
        typer.echo("[" + ", ".join(str(t) for t in tokens) + "]")
        return
    for t in tokens:
        piece = tok.token_to_piece(t, special=True).decode("utf-8", "replace")
        typer.echo(f"{t:6d} -> '{piece}'")
