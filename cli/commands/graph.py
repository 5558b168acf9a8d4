"""`hotlora graph`: the compute graph of one decode as Graphviz DOT (or SVG, through graphviz's `dot`),
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
from .options import MAX_TOKENS, HotLora, HotLoraScaled, adapter_list, int_option

Opt = typer.Option
LORA_MARK = "lora=1"  # the attribute the core puts on every node with adapter terms


def _print_stats(m: Model, tokens: int, layer: int | None) -> None:
    """Nodes and barriers of the drawn part, and of the whole graph."""
    nodes, barriers = m.graph_stats(tokens, layer)
    total_nodes, total_barriers = m.graph_stats(tokens, None)
    where = "all blocks and the head" if layer is None else f"block {layer}"
    print(f"{where}: {nodes} nodes, {barriers} barriers")
    print(f"whole graph ({m.n_layer} blocks, {tokens} token{'s' if tokens != 1 else ''}): "
          f"{total_nodes} nodes, {total_barriers} barriers")


def _default_view(m: Model, tokens: int) -> int | None:
    """Block 0, unless adapters are loaded and none of their nodes is in it (an adapter of the output head
    only): then the whole graph, which holds the head."""
    if m.adapters and LORA_MARK not in m.graph_dot(tokens, 0):
        sys.stderr.write("graph: block 0 has no LoRA nodes; drawing all blocks and the head\n")
        return None
    return 0


def _svg(dot: str, output: Path) -> str:
    """DOT rendered by graphviz's `dot -Tsvg`; an error naming the output when graphviz is missing or fails."""
    program = shutil.which("dot")
    if program is None:
        raise HotLoraError(f"cannot write SVG '{output}': graphviz is missing ('dot' is not on PATH); "
                           "write a .dot file instead")
    done = subprocess.run([program, "-Tsvg"], input=dot, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HotLoraError(f"cannot write SVG '{output}': dot failed ({done.stderr.strip()})")
    return done.stdout


def _write(output: Path, dot: str) -> None:
    """SVG when the name ends in .svg, DOT text otherwise."""
    text = _svg(dot, output) if output.suffix.lower() == ".svg" else dot
    try:
        output.write_text(text)
    except OSError as e:
        raise HotLoraError(f"cannot write '{output}' ({e.strerror})") from None


def graph(
    model: Annotated[Optional[Path], Opt("-m", "--model", help="GGUF model (default: the bundled tiny model)")] = None,
    hot_lora: HotLora = None,
    hot_lora_scaled: HotLoraScaled = None,
    output: Annotated[Optional[Path], Opt("-o", "--output", help="write DOT here, or SVG if it ends in .svg (needs graphviz)")] = None,
    tokens: Annotated[int, int_option("--tokens", help="batch size of the decode drawn", low=1, high=MAX_TOKENS)] = 1,
    layer: Annotated[Optional[int], int_option("--layer", help="the block to draw (default: block 0, or the "
                                               "whole graph when block 0 has no LoRA node)", low=0)] = None,
    all_layers: Annotated[bool, Opt("--all", help="draw every block")] = False,
    stats: Annotated[bool, Opt("--stats", help="print node and barrier counts instead of the graph")] = False,
) -> None:
    """Write the compute graph as Graphviz DOT, LoRA nodes marked (or, with --stats, count its nodes and barriers)."""
    with Model(model, n_ctx=tokens, n_threads=1, n_batch=tokens) as m:
        m.set_adapters({m.load_adapter(path): scale for path, scale in adapter_list(hot_lora, hot_lora_scaled)})
        view = None if all_layers else layer if layer is not None else _default_view(m, tokens)
        if stats:
            _print_stats(m, tokens, view)
            return
        dot = m.graph_dot(tokens, view)
    if output is None:
        sys.stdout.write(dot)
        return
    _write(output, dot)
    n_lora = dot.count(LORA_MARK)
    sys.stderr.write(f"graph: wrote {output}; {n_lora} LoRA node{'s' if n_lora != 1 else ''}\n")
