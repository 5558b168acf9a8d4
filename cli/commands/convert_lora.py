"""`hotlora convert-lora`: a PEFT adapter directory (or a legacy ggla .bin) to llama.cpp's adapter GGUF.

The work is in hotlora.convert; this prints a summary table to stderr (one row per group of pairs with the
same target, rank, alpha, scale, folded factor, types and permutation), the log notes, and
`wrote OUT (N tensors, X MiB)` last.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..convert import OUTTYPES, ConvertReport, convert_ggla, convert_peft, is_ggla
from ..errors import HotLoraError

Opt = typer.Option


def _target(base: str) -> str:
    """blk.7.attn_q.weight -> blk.*.attn_q (rows of the summary group layers together)."""
    parts = base.split(".")
    return f"blk.*.{parts[2]}" if parts[0] == "blk" and len(parts) > 2 else base.removesuffix(".weight")


def summary_table(report: ConvertReport) -> Table:
    table = Table(title=f"convert-lora: {report.source} -> {report.out} ({report.arch}, alpha {report.alpha:g}, "
                        f"outtype {report.outtype})", title_justify="left")
    # columns: pairs of that kind, rank, module alpha, PEFT scale, factor folded into lora_b, tensor types, q/k permuted
    for column in ("target", "pairs", "rank", "alpha", "scale", "folded", "types a/b", "permuted"):
        table.add_column(column, justify="right" if column in ("pairs", "rank", "alpha", "scale") else "left",
                         no_wrap=True)
    groups: dict[tuple, int] = {}
    for t in report.tensors:
        key = (_target(t.base), t.rank, t.alpha, t.scale, t.factor, f"{t.type_a}/{t.type_b}", t.permuted)
        groups[key] = groups.get(key, 0) + 1
    for (target, rank, alpha, scale, factor, types, permuted), count in groups.items():
        table.add_row(target, str(count), str(rank), f"{alpha:g}", f"{scale:.6g}",
                      "-" if factor == 1.0 else f"x{factor:.6g}", types, "yes" if permuted else "no")
    return table


def convert_lora(
    source: Annotated[Path, typer.Argument(help="PEFT adapter directory (adapter_config.json + "
                                                "adapter_model.safetensors) or a legacy ggla .bin file",
                                           metavar="PEFT_DIR|GGLA.bin")],
    model: Annotated[Path, Opt("-m", "--model", help="base model GGUF: arch, head counts and tensor shapes")],
    output: Annotated[Optional[Path], Opt("-o", "--output", "--outfile", help=(
        "output GGUF (default: PEFT_DIR/<dirname>-<OUTTYPE>-LoRA.gguf, or the ggla path with .gguf)"))] = None,
    outtype: Annotated[str, Opt("--outtype", help="type of the LoRA tensors: f32, f16, bf16 or q8_0 (q8_0: rows "
                                "not a multiple of 32 long are stored F16, and the log says so)")] = "f32",
    ggla_from_peft: Annotated[bool, Opt("--ggla-from-peft", help="ggla input came from the old PEFT converter: "
                                        "apply llama's q/k permutation to lora_b of attn_q/attn_k")] = False,
) -> None:
    """Convert a PEFT LoRA (or a legacy ggla file) to a llama.cpp adapter GGUF, keeping PEFT's scaling exactly."""
    if outtype.lower() not in OUTTYPES:
        raise typer.BadParameter(f"'{outtype}' is not one of {', '.join(OUTTYPES)}", param_hint="--outtype")
    if source.is_file() and (source.name == "adapter_config.json" or source.suffix == ".safetensors"):
        source = source.parent
    if source.is_dir():
        if ggla_from_peft:
            raise HotLoraError("--ggla-from-peft applies to ggla files only (PEFT directories are always "
                               "permuted as the base needs)")
        report = convert_peft(source, model, output, outtype)
    elif is_ggla(source):
        report = convert_ggla(source, model, output, outtype, from_peft=ggla_from_peft)
    elif source.exists():
        raise HotLoraError(f"'{source}' is neither a PEFT adapter directory nor a legacy ggla file")
    else:
        raise HotLoraError(f"'{source}' does not exist")
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    console.print(summary_table(report))
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {report.out} ({report.n_tensors} tensors, {report.n_bytes / 2**20:.2f} MiB)",
                  markup=False, highlight=False, soft_wrap=True)
