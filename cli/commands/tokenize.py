"""`hotlora tokenize`: mirrors llama-tokenize (one `id -> 'piece'` line per token, or --ids; --show-count)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import HotLoraError
from ..text import unescape
from ..tokenizer import Tokenizer
from .options import UsageError


def _prompt_text(prompt: Optional[str], file: Optional[Path], escape: bool) -> str:
    """The text of -p (escapes processed unless --no-escape) or of -f, read as is, as llama-tokenize does."""
    if (prompt is None) == (file is None):
        raise UsageError("give exactly one of -p/--prompt and -f/--file")
    if prompt is not None:
        return unescape(prompt) if escape else prompt
    try:
        return file.read_bytes().decode("utf-8")
    except OSError as e:
        raise HotLoraError(f"could not open file '{file}' for reading ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise HotLoraError(f"file '{file}' is not UTF-8 text (byte {e.start})") from None


def tokenize(
    model: Annotated[Path, typer.Option("-m", "--model", help="any GGUF with a vocabulary (vocab-only files too)")],
    prompt: Annotated[Optional[str], typer.Option("-p", "--prompt", help="text to tokenize")] = None,
    file: Annotated[Optional[Path], typer.Option("-f", "--file", help="read the text to tokenize from a file")] = None,
    ids: Annotated[bool, typer.Option("--ids", help="print only the ids, as a Python list")] = False,
    show_count: Annotated[bool, typer.Option("--show-count", help="print the total number of tokens")] = False,
    no_bos: Annotated[bool, typer.Option("--no-bos", help="do not add BOS")] = False,
    no_parse_special: Annotated[bool, typer.Option("--no-parse-special", help="treat special-token text as plain text")] = False,
    no_escape: Annotated[bool, typer.Option("--no-escape", help="do not process escapes in the prompt")] = False,
) -> None:
    """Tokenize text with a model's vocabulary."""
    text = _prompt_text(prompt, file, not no_escape)
    tok = Tokenizer(model)
    tokens = tok.tokenize(text, add_bos=not no_bos, special=not no_parse_special)
    if ids:
        typer.echo("[" + ", ".join(str(t) for t in tokens) + "]")
    else:
        for t in tokens:
            piece = tok.token_to_piece(t, special=True).decode("utf-8", "replace")
            typer.echo(f"{t:6d} -> '{piece}'")
    if show_count:
        typer.echo(f"Total number of tokens: {len(tokens)}")
