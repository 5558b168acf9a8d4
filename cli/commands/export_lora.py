"""`hotlora export-lora`: merge adapters into the base model, like llama-export-lora."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress

from ..merge import plan, write_merged
from ..model import Model
from ..output_file import atomic_output, refuse_same_file
from ..system import physical_cores
from .options import HotLora, HotLoraScaled, Threads, adapter_list

Opt = typer.Option
OUTTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def export_lora(
    model: Annotated[Path, Opt("-m", "--model", help="base GGUF model")],
    output: Annotated[Path, Opt("-o", "--output", help="merged GGUF to write")],
    hot_lora: HotLora = None,
    hot_lora_scaled: HotLoraScaled = None,
    outtype: Annotated[Optional[str], Opt("--outtype", help="type of the merged tensors (default: each base tensor's own)")] = None,
    threads: Threads = None,
) -> None:
    """Merge LoRA adapters into a base model: W' = W + s·B·A; untouched tensors are copied byte for byte."""
    if outtype is not None and outtype.upper() not in OUTTYPES:
        raise typer.BadParameter(f"'{outtype}' is not one of {', '.join(OUTTYPES)}", param_hint="--outtype")
    adapters = adapter_list(hot_lora, hot_lora_scaled)
    if not adapters:
        raise typer.BadParameter("give at least one adapter", param_hint="--hot-lora")
    refuse_same_file(output, [("base model", model)] + [("adapter", path) for path, _ in adapters])
    console = Console(stderr=True)
    with Model(model, n_ctx=1, n_threads=1, n_batch=1, repack=False) as m:  # checks the adapters as run would
        files = [(m.load_adapter(path).file, scale) for path, scale in adapters]
        tensors = plan(m.file, files, outtype.upper() if outtype else None)
        merged = [t for t in tensors if t.deltas]
        with atomic_output(output) as tmp, Progress(console=console, transient=True) as progress:
            task = progress.add_task("merging", total=len(tensors))
            for _ in write_merged(tmp, m.file, tensors, threads or physical_cores()):
                progress.advance(task)
    for t in merged:
        console.print(f"merge_tensor : {t.name} {list(t.info.ne[:2])} {t.info.type_name} -> {t.type_name}, "
                      f"{len(t.deltas)} adapter{'s' if len(t.deltas) > 1 else ''}", markup=False)
    console.print(f"run_merge : merged {len(merged)} tensors with lora adapters")
    console.print(f"run_merge : wrote {len(tensors)} tensors to output file")
    sys.stderr.write(f"done, output file is {output}\n")
