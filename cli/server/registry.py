"""The server's adapters: those given at launch and those loaded at run time from --lora-dir.

Each has an id (the model's load order, as llama-server numbers them), a name (`"model": NAME` selects it at
scale 1, vLLM's convention), the path as given and a global scale (what a request without a `lora` field uses;
`POST /lora-adapters` sets them all). Every method runs on the engine's worker thread, which owns the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HotLoraError
from ..lora import Adapter
from ..model import Model
from .errors import APIError


@dataclass
class Entry:
    adapter: Adapter
    name: str
    path: str          # as the user gave it
    scale: float       # global scale
    in_use: int = 0    # requests running with it


@dataclass
class Registry:
    model: Model
    lora_dir: Path | None = None
    entries: dict[int, Entry] = field(default_factory=dict)

    def add(self, path: str, name: str, scale: float, field: str = "lora_path") -> Entry:
        """Loads an adapter; errors name it by `field` (the request field, or the command-line option)."""
        if self.by_name(name) is not None:
            raise APIError(400, f"lora_name '{name}': an adapter with this name is already loaded")
        try:
            adapter = self.model.load_adapter(path)
        except HotLoraError as e:
            raise APIError(400, f"{field} '{path}': {e}") from None
        entry = Entry(adapter, name, path, scale)
        self.entries[adapter.id] = entry
        return entry

    def load_from_dir(self, name: str, relative: str) -> Entry:
        """vLLM's load_lora_adapter, confined to --lora-dir: a relative path, no '..', nothing that resolves
        (symlinks included) outside the folder. Its global scale is 0: requests choose it (vLLM's behaviour)."""
        return self.add(str(self.confined(relative)), name, 0.0)

    def confined(self, relative: str) -> Path:
        if self.lora_dir is None:
            raise APIError(403, "runtime adapter loading is off: start the server with --lora-dir DIR")
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or "\0" in relative:
            raise APIError(403, f"lora_path '{relative}': must be a path relative to --lora-dir, without '..'")
        root = Path(os.path.realpath(self.lora_dir))
        target = Path(os.path.realpath(root / relative))
        if target != root and root not in target.parents:
            raise APIError(403, f"lora_path '{relative}': resolves outside --lora-dir")
        if not target.exists():
            raise APIError(404, f"lora_path '{relative}': no such file or directory in --lora-dir")
        return target

    def unload(self, name: str) -> None:
        entry = self.by_name(name)
        if entry is None:
            raise APIError(404, f"lora_name '{name}': no adapter with this name is loaded")
        if entry.in_use:
            raise APIError(409, f"lora_name '{name}': {entry.in_use} request(s) are using it; try again later")
        self.model.unload_adapter(entry.adapter)
        del self.entries[entry.adapter.id]

    def by_name(self, name: str) -> Entry | None:
        return next((e for e in self.entries.values() if e.name == name), None)

    def scales_for(self, lora: list | None, model_name: str | None, base_name: str) -> dict[int, float]:
        """Adapter id -> scale of one request: its `lora` list (unlisted: 0), else the adapter its `model`
        names at scale 1, else the global scales. Zero scales are dropped."""
        if lora is not None:
            for item in lora:
                if item.id not in self.entries:
                    raise APIError(400, f"lora: invalid adapter id {item.id}")
            scales = {item.id: item.scale for item in lora}
        elif model_name not in (None, "", base_name) and (entry := self.by_name(model_name)) is not None:
            scales = {entry.adapter.id: 1.0}
        elif model_name not in (None, "", base_name):
            raise APIError(404, f"model: '{model_name}' is neither the base model nor a loaded adapter")
        else:
            scales = {i: e.scale for i, e in self.entries.items()}
        return {i: s for i, s in scales.items() if s != 0.0}

    def set_global(self, items: list) -> None:
        """POST /lora-adapters: every listed id gets its scale, every other 0."""
        for item in items:
            if item.id not in self.entries:
                raise APIError(400, f"invalid adapter id {item.id}")
        for entry in self.entries.values():
            entry.scale = 0.0
        for item in items:
            self.entries[item.id].scale = item.scale

    def listing(self) -> list[dict]:
        """GET /lora-adapters, llama-server's shape plus the name."""
        return [{"id": i, "path": e.path, "scale": e.scale, "name": e.name} for i, e in self.entries.items()]
