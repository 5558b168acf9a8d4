"""`hotlora quantize IN OUT TYPE`: re-encode a model's (or an adapter's) matrices, like llama-quantize."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from gguf import GGUFWriter
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import HotLoraError
from ..gguf_io import GGUFFile, add_raw_tensor, copy_metadata
from ..output_file import atomic_output, refuse_same_file, write_gguf
from ..quant_mix import FILE_TYPES, MIXES, PLAIN, tensor_type
from ..quantize import requantize
from ..system import physical_cores
from .options import Threads

TYPES = PLAIN + tuple(MIXES)


def _plan(f: GGUFFile, target: str) -> dict[str, str]:
    """Tensor name -> type written. Adapters: every matrix gets the plain type (mixes are for models)."""
    if f.get_str("general.type", "") == "adapter":
        if target in MIXES:
            raise HotLoraError(f"{f.path}: {target} is a model mix; quantize adapters to a plain type such as Q8_0")
        return {n: tensor_type(t, target, 0, True) for n, t in f.tensors.items()}
    arch = f.get_str("general.architecture", required=True)
    n_layer = f.get_int(f"{arch}.block_count", required=True)
    has_output = "output.weight" in f.tensors
    return {n: tensor_type(t, target, n_layer, has_output) for n, t in f.tensors.items()}


def quantize(
    source: Annotated[Path, typer.Argument(help="GGUF model or adapter to quantize")],
    output: Annotated[Path, typer.Argument(help="GGUF file to write")],
    type_name: Annotated[str, typer.Argument(metavar="TYPE", help=f"one of {', '.join(TYPES)}")],
    threads: Threads = None,
) -> None:
    """Quantize a model's (or adapter's) 2-D tensors; 1-D tensors stay as they are."""
    target = type_name.upper()
    if target not in TYPES:
        raise typer.BadParameter(f"'{type_name}' is not one of {', '.join(TYPES)}", param_hint="TYPE")
    refuse_same_file(output, [("input", source)])
    f = GGUFFile(source)
    types = _plan(f, target)
    with atomic_output(output) as tmp:
        _write(f, tmp, target, types, threads or physical_cores())
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    sys.stderr.write(f"quantize: wrote {output} ({output.stat().st_size / 2**20:.2f} MiB; tensors: {summary})\n")


def _write(f: GGUFFile, path: Path, target: str, types: dict[str, str], n_threads: int) -> None:
    """The quantized file at path, with a progress bar on stderr."""
    writer = GGUFWriter(path, f.get_str("general.architecture", required=True), use_temp_file=False)
    copy_metadata(f, writer, skip=("general.file_type",))
    if f.get_str("general.type", "") != "adapter":
        writer.add_uint32("general.file_type", FILE_TYPES[target])
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"quantizing to {target}", total=len(f.tensors))
        for name, info in f.tensors.items():
            progress.update(task, description=f"{escape(name)} -> {types[name]}")
            add_raw_tensor(writer, name, types[name], info.ne, requantize(info, types[name], n_threads))
            progress.advance(task)
        write_gguf(writer)
