"""What a GGUF or ggla file holds, and whether an adapter fits a model: the data behind `hotlora inspect`."""
from __future__ import annotations

from pathlib import Path

from gguf import GGUFValueType

from .adapters import AdapterFile, read_adapter_file
from .gguf_io import GGUFFile
from .model import Model

MAX_ARRAY_SHOWN = 8


def _value(field):
    """A metadata value for display: long arrays are summarised."""
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        n = len(field.data)
        if n > MAX_ARRAY_SHOWN:
            return f"[{n} × {field.types[-1].name.lower()}]"
    value = field.contents()
    return value if isinstance(value, (int, float, str, bool, list)) else str(value)


def _tensor_rows(f: GGUFFile) -> list[dict]:
    return [{"name": t.name, "type": t.type_name, "shape": [d for d in t.ne if d != 1] or [1],
             "bytes": int(t.data.nbytes)} for t in f.tensors.values()]


def _adapter_summary(a: AdapterFile) -> dict:
    modules: dict[str, int] = {}
    for pair in a.pairs:
        kind = pair.base.split(".")[-2] if pair.base.startswith("blk.") else pair.base.removesuffix(".weight")
        modules[kind] = modules.get(kind, 0) + 1
    return {"alpha": a.alpha, "ranks": {p.base: p.rank for p in a.pairs}, "modules": modules,
            "adapter_bytes": sum(p.a.data.nbytes + p.b.data.nbytes for p in a.pairs)}


def describe(path: str | Path) -> dict:
    """Metadata and tensors of a model, vocabulary or adapter file (GGUF), or a ggla adapter."""
    path = Path(path)
    with open(path, "rb") as fh:
        is_ggla = fh.read(4) == b"algg"
    if is_ggla:
        a = read_adapter_file(path, "", 1 << 30)
        rows = [{"name": f"{p.base}.{h}", "type": m.type_name, "shape": list(m.ne), "bytes": int(m.data.nbytes)}
                for p in a.pairs for h, m in (("lora_a", p.a), ("lora_b", p.b))]
        return {"path": str(path), "kind": "adapter", "format": "ggla", "arch": None, "metadata": {},
                "tensors": rows, **_adapter_summary(a)}
    f = GGUFFile(path)
    kind = "adapter" if f.get_str("general.type", "") == "adapter" else "model" if f.tensors else "vocabulary"
    info = {"path": str(path), "kind": kind, "format": "gguf", "arch": f.get_str("general.architecture", None),
            "metadata": {k: _value(v) for k, v in f.reader.fields.items() if not k.startswith("GGUF.")},
            "tensors": _tensor_rows(f)}
    info["total_bytes"] = sum(t["bytes"] for t in info["tensors"])
    if kind == "adapter":
        info |= _adapter_summary(read_adapter_file(path, info["arch"] or "", 1 << 30))
    return info


def check_fit(adapter_path: str | Path, model_path: str | Path) -> dict:
    """Whether an adapter fits a model: every problem the loader finds, pair by pair."""
    with Model(model_path, n_ctx=1, n_threads=1, n_batch=1, repack=False) as m:
        problems = m.adapter_problems(adapter_path)
        ratio = None
        if not problems:
            file = read_adapter_file(adapter_path, m.hparams.arch, m.n_layer)
            ratio = sum(p.a.data.nbytes + p.b.data.nbytes for p in file.pairs) / m.weight_bytes
        return {"compatible": not problems, "problems": problems, "byte_ratio": ratio}
