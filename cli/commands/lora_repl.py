"""Interactive mode's input side: the banner, the `> ` input marker, llama-cli's line editing, and the /lora
commands (list, load, rescale, switch off/on and unload adapters).

Command results are shown as a Rich table on stderr; a change takes effect at the next
evaluated token (the model recomputes cache cells made under another set). A command
either does all it says or nothing: every argument is parsed and checked first, and
errors name the command and the adapter as the user typed them.
"""
from __future__ import annotations

import os
import shlex
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import HotLoraError
from ..scales import parse_scale
from ..model import Model

USAGE = ("/lora | /lora load PATH|PEFT_DIR [SCALE] | /lora scale ID SCALE | /lora off | /lora on | /lora unload ID")
INPUT_MARKER = "\n> "  # on stdout before each read, as llama-cli in conversation mode (cli-surface.md §3.2)


def banner(reverse_prompts: list[str]) -> str:
    """llama-cli's interactive banner (cli-surface.md §3.2) for what hotlora implements, then the /lora line."""
    return ("main: interactive mode on.\n"
            + "".join(f"Reverse prompt: '{r}'\n" for r in reverse_prompts)
            + "== Running in interactive mode. ==\n"
            " - Press Ctrl+C to end the session (hotlora does not interject).\n"
            " - Press Return to return control to the AI.\n"
            " - To return control without starting a new line, end your input with '/'.\n"
            " - If you want to submit another line, end your input with '\\'.\n"
            f" - Adapters: {USAGE}\n\n")


def read_user_input() -> str | None:
    """One user turn, read after the input marker with llama-cli's line editing: a trailing '\\' continues on
    the next line (keeping the newline), a trailing '/' submits without the newline, else the line and its
    newline. A partial line before end of input is submitted; None once input has ended."""
    sys.stdout.write(INPUT_MARKER)
    sys.stdout.flush()
    buffer = ""
    while True:
        line = sys.stdin.readline()
        if not line:
            return buffer or None
        line = line.removesuffix("\n")
        if line.endswith("/"):
            return buffer + line[:-1]
        if not line.endswith("\\"):
            return buffer + line + "\n"
        buffer += line[:-1] + "\n"


class LoraCommands:
    def __init__(self, model: Model, console: Console | None = None):
        self.model = model
        self.console = console or Console(stderr=True)
        self._before_off: dict = {}  # the set /lora off saved for /lora on

    def run(self, line: str) -> None:
        """Runs one command line; errors are shown, never raised."""
        try:
            try:
                words = shlex.split(line)
            except ValueError as e:
                raise HotLoraError(f"{line}: {e}") from None
            handler = {"load": self._load, "scale": self._scale, "off": self._off, "on": self._on,
                       "unload": self._unload}.get(words[1] if len(words) > 1 else "list", None)
            if words[0] != "/lora" or (handler is None and len(words) > 1):
                raise HotLoraError(f"{line}: unknown command; usage: {USAGE}")
            if handler:
                handler(words[2:])
            self.console.print(self.table())
        except HotLoraError as e:
            self.console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)  # one line, however long

    def _adapter(self, command: str, text: str):
        """The loaded adapter with the id the user typed."""
        for adapter in self.model.loaded_adapters:
            if str(adapter.id) == text:
                return adapter
        loaded = ", ".join(f"{a.id} ({a.path.name})" for a in self.model.loaded_adapters) or "none"
        raise HotLoraError(f"{command} {text}: no adapter with id '{text}' (loaded: {loaded})")

    def _load(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise HotLoraError("usage: /lora load PATH|PEFT_DIR [SCALE]")
        command = f"/lora load {args[0]}"
        scale = parse_scale(args[1], command) if len(args) == 2 else 1.0
        if not os.path.exists(args[0]):
            raise HotLoraError(f"{command}: no such file or directory")
        try:
            adapter = self.model.load_adapter(args[0])
        except HotLoraError as e:
            raise HotLoraError(f"{command}: {e}") from None
        try:
            self.model.set_adapters({**self.model.adapters, adapter: scale})
        except HotLoraError as e:
            self.model.unload_adapter(adapter)
            raise HotLoraError(f"{command}: {e}") from None

    def _scale(self, args: list[str]) -> None:
        if len(args) != 2:
            raise HotLoraError("usage: /lora scale ID SCALE")
        adapter = self._adapter("/lora scale", args[0])
        scale = parse_scale(args[1], f"/lora scale {args[0]} ({adapter.path.name})")
        self.model.set_adapters({**self.model.adapters, adapter: scale})

    def _off(self, args: list[str]) -> None:
        self._before_off = self.model.adapters or self._before_off
        self.model.set_adapters({})

    def _on(self, args: list[str]) -> None:
        live = [a for a in self._before_off if a in self.model.loaded_adapters]
        self.model.set_adapters({a: self._before_off[a] for a in live})

    def _unload(self, args: list[str]) -> None:
        if len(args) != 1:
            raise HotLoraError("usage: /lora unload ID")
        self.model.unload_adapter(self._adapter("/lora unload", args[0]))

    def table(self) -> Table:
        table = Table(title="LoRA adapters", title_justify="left")
        for column in ("id", "file", "scale", "active", "targets", "ranks", "MiB"):
            table.add_column(column, justify="right" if column in ("id", "scale", "targets", "MiB") else "left")
        active = self.model.adapters
        for a in self.model.loaded_adapters:
            ranks = sorted(set(a.ranks.values()))
            table.add_row(str(a.id), escape(a.path.name), f"{active.get(a, 0.0):g}", "yes" if active.get(a) else "no",
                          str(len(a.targets)), ",".join(map(str, ranks)), f"{a.n_bytes / 2**20:.2f}")
        return table
