"""`hotlora graph`: the compute graph of one decode as Graphviz DOT (and SVG when `dot` is installed),
with the LoRA nodes marked, to show where adapters enter and how many nodes they add."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import HotLoraError
from ..model import Model
from .options import HotLora, HotLoraScaled, adapter_list

Opt = typer.Option


def _print_stats(m: Model, tokens: int, layer: int | None) -> None:
    """Nodes and barriers of the drawn part, and of the whole graph."""
    nodes, barriers = m.graph_stats(tokens, layer)
    total_nodes, total_barriers = m.graph_stats(tokens, None)
    where = "all blocks and the head" if layer is None else f"block {layer}"
    print(f"{where}: {nodes} nodes, {barriers} barriers")
    print(f"whole graph ({m.n_layer} blocks, {tokens} token{'s' if tokens != 1 else ''}): "
          f"{total_nodes} nodes, {total_barriers} barriers")


def graph(
    model: Annotated[Optional[Path], Opt("-m", "--model", help="GGUF model (default: the bundled tiny model)")] = None,
    hot_lora: HotLora = None,
    hot_lora_scaled: HotLoraScaled = None,
    output: Annotated[Optional[Path], Opt("-o", "--output", help="write DOT here (and FILE.svg if dot is installed)")] = None,
    tokens: Annotated[int, Opt("--tokens", help="batch size of the decode drawn", min=1)] = 1,
    layer: Annotated[int, Opt("--layer", help="the block to draw", min=0)] = 0,
    all_layers: Annotated[bool, Opt("--all", help="draw every block")] = False,
    stats: Annotated[bool, Opt("--stats", help="print node and barrier counts instead of the graph")] = False,
) -> None:
    """Write the compute graph as Graphviz DOT, LoRA nodes marked (or, with --stats, count its nodes and barriers)."""
    with Model(model, n_ctx=max(tokens, 1), n_threads=1, n_batch=max(tokens, 1)) as m:
        m.set_adapters({m.load_adapter(path): scale for path, scale in adapter_list(hot_lora, hot_lora_scaled)})
        if stats:
            _print_stats(m, tokens, None if all_layers else layer)
            return
        dot = m.graph_dot(tokens, None if all_layers else layer)
    n_lora = dot.count("lora=1")
    if output is None:
        sys.stdout.write(dot)
        return
    try:
        output.write_text(dot)
    except OSError as e:
        raise HotLoraError(f"cannot write '{output}' ({e.strerror})") from None
    svg = output.with_suffix(".svg")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(output), "-o", str(svg)], check=False)
    drawn = f" and {svg}" if svg.exists() else " (install graphviz for SVG)"
    sys.stderr.write(f"graph: wrote {output}{drawn}; {n_lora} LoRA node{'s' if n_lora != 1 else ''}\n")
