"""The `hotlora` command line: Typer commands, with errors turned into one line and an exit code.

Exit codes: 0 success, 1 a bad input (`error: ...` naming the file, tensor or
option), 2 a usage error, 130 interrupted (Ctrl-C at any time, start-up included).

Start-up is kept short: each command's module (and numpy, gguf, rich, the C core
behind it) is imported only when that command runs or shows its own help; `hotlora
--help` lists the commands from COMMANDS without importing any of them.
"""
from __future__ import annotations

import sys


def _interrupted() -> None:
    sys.stdout.write("\nInterrupted by user\n")
    sys.exit(130)


try:  # Ctrl-C while the imports run is an interruption like any other
    import importlib
    from contextlib import contextmanager

    import typer
    from typer.core import TyperGroup

    from . import __version__
    from .commands.options import UsageError, join_pairs
    from .errors import HotLoraError
except KeyboardInterrupt:
    _interrupted()

# name -> (module in hotlora.commands, function, its one-line help: the first line of the function's docstring)
COMMANDS = {
    "run": ("run", "run", "Generate text from a prompt, like llama-cli, with LoRA adapters applied at run time."),
    "tokenize": ("tokenize", "tokenize", "Tokenize text with a model's vocabulary."),
    "bench": ("bench", "bench",
              "Measure prompt processing and generation speed like llama-bench, with and without each adapter."),
    "graph": ("graph", "graph", "Write the compute graph as Graphviz DOT, LoRA nodes marked "
              "(or, with --stats, count its nodes and barriers)."),
    "convert-lora": ("convert_lora", "convert_lora", "Convert a PEFT LoRA (or a legacy ggla file) to a llama.cpp "
                     "adapter GGUF, keeping PEFT's scaling exactly."),
    "export-lora": ("export_lora", "export_lora", "Merge LoRA adapters into a base model: W' = W + s·B·A; "
                    "untouched tensors are copied byte for byte."),
    "inspect": ("inspect", "inspect", "Show a file's metadata and tensors; with --model, check an adapter against a base."),
    "quantize": ("quantize", "quantize", "Quantize a model's (or adapter's) 2-D tensors; 1-D tensors stay as they are."),
    "finetune": ("finetune", "finetune", "Train a LoRA adapter on a text file (or JSONL records) on the CPU, "
                 "for run --hot-lora."),
    "serve": ("serve", "serve", "Serve the model over HTTP (OpenAI and llama-server endpoints), each request choosing "
              "its adapters."),
}
CONTEXT = {"help_option_names": ["-h", "--help"]}


def command_function(name: str):
    """The Typer function of a command, importing its module now."""
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(f".commands.{module}", __package__), function)


@contextmanager
def _ctrl_c_as_abort():
    """Ctrl-C while the command line parses, loads or runs a command reaches main() as an Abort (Typer
    would turn it into a silent exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        raise typer.Abort() from None


class LazyCommands(TyperGroup):
    """The subcommands, each built from its module only when it is the one invoked."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        if name not in COMMANDS:
            return None
        single = typer.Typer(add_completion=False, rich_markup_mode=None, context_settings=CONTEXT)
        single.command(name)(command_function(name))
        return typer.main.get_command(single)

    def make_context(self, *args, **kwargs):
        with _ctrl_c_as_abort():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _ctrl_c_as_abort():
            return super().invoke(ctx)

    def format_commands(self, ctx, formatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short_help) for name, (_, _, short_help) in COMMANDS.items()])


app = typer.Typer(
    name="hotlora",
    cls=LazyCommands,
    help="Run LLaMA-family GGUF models on the CPU, with LoRA adapters applied at run time.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: the rich renderer alone costs more than the whole start-up target
    context_settings=CONTEXT,
)


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
        _interrupted()
    except BrokenPipeError:
        sys.exit(1)
