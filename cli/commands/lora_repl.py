"""The /lora commands of interactive mode: list, load, rescale, switch off/on and unload adapters.

Results are shown as a Rich table on stderr; a change takes effect at the next
evaluated token (the model recomputes cache cells made under another set).
"""
from __future__ import annotations

import shlex

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import HotLoraError
from ..model import Model

USAGE = ("/lora | /lora load PATH [SCALE] | /lora scale ID SCALE | /lora off | /lora on | /lora unload ID")


class LoraCommands:
    def __init__(self, model: Model, console: Console | None = None):
        self.model = model
        self.console = console or Console(stderr=True)
        self._before_off: dict = {}  # the set /lora off saved for /lora on

    def run(self, line: str) -> None:
        """Runs one command line; errors are shown, never raised."""
        try:
            words = shlex.split(line)
            handler = {"load": self._load, "scale": self._scale, "off": self._off, "on": self._on,
                       "unload": self._unload}.get(words[1] if len(words) > 1 else "list", None)
            if words[0] != "/lora" or (handler is None and len(words) > 1):
                raise HotLoraError(f"unknown command; usage: {USAGE}")
            if handler:
                handler(words[2:])
            self.console.print(self.table())
        except (HotLoraError, ValueError) as e:
            self.console.print(f"[red]error:[/red] {escape(str(e))}")

    def _adapter(self, text: str):
        for adapter in self.model.loaded_adapters:
            if adapter.id == int(text):
                return adapter
        raise HotLoraError(f"no adapter with id {text}")

    def _load(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            raise HotLoraError("usage: /lora load PATH [SCALE]")
        adapter = self.model.load_adapter(args[0])
        self.model.set_adapters({**self.model.adapters, adapter: float(args[1]) if len(args) == 2 else 1.0})

    def _scale(self, args: list[str]) -> None:
        if len(args) != 2:
            raise HotLoraError("usage: /lora scale ID SCALE")
        self.model.set_adapters({**self.model.adapters, self._adapter(args[0]): float(args[1])})

    def _off(self, args: list[str]) -> None:
        self._before_off = self.model.adapters or self._before_off
        self.model.set_adapters({})

    def _on(self, args: list[str]) -> None:
        live = [a for a in self._before_off if a in self.model.loaded_adapters]
        self.model.set_adapters({a: self._before_off[a] for a in live})

    def _unload(self, args: list[str]) -> None:
        if len(args) != 1:
            raise HotLoraError("usage: /lora unload ID")
        self.model.unload_adapter(self._adapter(args[0]))

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
