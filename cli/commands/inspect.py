"""`hotlora inspect`: a file's metadata and tensor table; for adapters, what they adapt and whether they fit."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import HotLoraError
from ..inspect_file import check_fit, describe

Opt = typer.Option


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _render(info: dict, fit: dict | None, console: Console) -> None:
    console.print(f"[bold]{escape(info['path'])}[/bold]: {info['kind']} ({info['format']}), arch {info['arch']}")
    if info["metadata"]:
        meta = Table("key", "value", title="metadata", title_justify="left")
        for key, value in info["metadata"].items():
            meta.add_row(escape(key), escape(str(value)))  # file contents are text, never markup
        console.print(meta)
    tensors = Table("name", "type", "shape", "bytes", title=f"{len(info['tensors'])} tensors", title_justify="left")
    for t in info["tensors"]:
        tensors.add_row(escape(t["name"]), t["type"], str(t["shape"]), f"{t['bytes']:,}")
    console.print(tensors)
    if info["kind"] == "adapter":
        ranks = sorted(set(info["ranks"].values()))
        modules = ", ".join(f"{k} ×{n}" for k, n in sorted(info["modules"].items()))
        console.print(f"alpha {info['alpha']:g}; ranks {ranks}; targets {modules}; {_mib(info['adapter_bytes'])}",
                      markup=False)
    if fit is not None:
        if fit["compatible"]:
            console.print(f"[green]fits the model[/green]; adds {fit['byte_ratio']:.2%} of the base's bytes")
        else:
            console.print(f"[red]does not fit the model[/red] ({len(fit['problems'])} problems):")
            for problem in fit["problems"]:
                console.print(f"  - {problem}", soft_wrap=True, markup=False)  # one line each, as printed


def _check_readable(path: Path) -> None:
    """A missing file or a folder is one error line naming it, before anything parses it."""
    try:
        open(path, "rb").close()
    except OSError as e:
        raise HotLoraError(f"failed to open '{path}' ({e.strerror})") from None


def inspect(
    file: Annotated[Path, typer.Argument(help="a GGUF model, vocabulary or adapter, or a ggla adapter")],
    model: Annotated[Optional[Path], Opt("-m", "--model", help="check that the adapter fits this base model")] = None,
    as_json: Annotated[bool, Opt("--json", help="print one JSON object")] = False,
    check_tensors: Annotated[bool, Opt("--check-tensors", help="scan every tensor for NaN/inf values and scales")] = False,
) -> None:
    """Show a file's metadata and tensors; with --model, check an adapter against a base."""
    for path in filter(None, (file, model)):
        _check_readable(path)
    info = describe(file)
    if check_tensors:
        from ..check_tensors import check_any_file
        from ..system import physical_cores
        check_any_file(file, physical_cores())
    fit = check_fit(file, model) if model is not None else None
    if as_json:
        sys.stdout.write(json.dumps({**info, "fit": fit}, default=str) + "\n")
    else:
        _render(info, fit, Console())
    if fit is not None and not fit["compatible"]:
        raise typer.Exit(1)
