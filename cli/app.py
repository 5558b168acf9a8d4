"""The `hotlora` command line: Typer commands, with errors turned into one line and an exit code.

Exit codes: 0 success, 1 a bad input (`error: ...` naming the file, tensor or
option), 2 a usage error, 130 interrupted.
"""
from __future__ import annotations

import sys

import typer

from . import __version__
from .commands.bench import bench
from .commands.convert_lora import convert_lora
from .commands.export_lora import export_lora
from .commands.graph import graph
from .commands.inspect import inspect
from .commands.options import UsageError, join_pairs
from .commands.quantize import quantize
from .commands.run import run
from .commands.tokenize import tokenize
from .errors import HotLoraError

app = typer.Typer(
    name="hotlora",
    help="Run LLaMA-family GGUF models on the CPU, with LoRA adapters applied at run time.",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("run")(run)
app.command("tokenize")(tokenize)
app.command("bench")(bench)
app.command("graph")(graph)
app.command("convert-lora")(convert_lora)
app.command("export-lora")(export_lora)
app.command("inspect")(inspect)
app.command("quantize")(quantize)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hotlora {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="print the version and exit")) -> None:
    """Run LLaMA-family GGUF models on the CPU, with LoRA adapters applied at run time."""


def _fail(message: str, code: int) -> None:
    first_line = " ".join(str(message).split())  # one line, always
    sys.stderr.write(f"error: {first_line}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        args = join_pairs(sys.argv[1:] if argv is None else argv)
        code = app(args=args, prog_name="hotlora", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except UsageError as e:
        _fail(e.format_message(), 2)
    except HotLoraError as e:
        _fail(str(e), 1)
    except (KeyboardInterrupt, typer.Abort):
        sys.stdout.write("\nInterrupted by user\n")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
