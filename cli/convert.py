"""Converting LoRA adapters to llama.cpp's adapter GGUF (lora.md §2): PEFT directories and legacy `ggla` files.

`convert_peft(peft_dir, base_gguf, out, outtype)` reads `adapter_config.json` and `adapter_model.safetensors`
and writes the GGUF keys and tensors `convert_lora_to_gguf.py` writes (lora.md §2.1, §6), but does better
where llama.cpp's converter is wrong or silent (lora.md §6.4, §10):

* Everything it needs about the base comes from the base GGUF (`--model`): the architecture, the head counts
  for llama's q/k row permutation (lora.md §6.3: only `lora_b` rows of `attn_q` / `attn_k` are permuted, with
  `n_head` / `n_head_kv`; qwen2 is never permuted) and every base tensor's shape, which each pair must fit.
  No HF base directory or network.
* PEFT scaling is kept exactly. A GGUF adapter has one alpha and the runtime scale is `alpha / rank` with
  `rank = lora_b.ne[0]` (lora.md §2.3). We write `adapter.lora.alpha = lora_alpha` from the config and, per
  pair, fold `factor = true_scale / (alpha / r_t)` into `lora_b`, where `true_scale = alpha_t / r_t` (or
  `alpha_t / sqrt(r_t)` with `use_rslora`), `alpha_t` / `r_t` from `alpha_pattern` / `rank_pattern`. The file
  is then correct in llama.cpp too. Folding happens in float64 before any F16/BF16/Q8_0 rounding.
* Pattern keys follow PEFT's `get_pattern_key`: a key matches a module's full name (e.g.
  `model.layers.0.self_attn.q_proj`, `lm_head`) when `re.match(rf"(.*\\.)?({key})$", name)` does; the first
  matching key in the config's order wins. Each pair's rank (from its tensors) must equal the rank the config
  gives that module, else the config and the weights disagree and we refuse.
* Refused with one actionable line (a `ModelFileError`): DoRA, `modules_to_save` / full weights, trained
  biases (`bias != "none"`, `lora_bias`, `lora_B.bias`), `fan_in_fan_out`, non-LORA `peft_type`,
  `layer_replication`, modules that do not map to a LoRA-aware llama/qwen2 tensor, a half-missing pair,
  rank disagreement, a pair that does not fit its base tensor (both shapes named), non-finite values.
  `adapter_model.bin` needs torch: used when importable, else refused with how to convert it.
* `lm_head` maps to `output.weight`; on a tied base (no `output.weight`) hotlora applies it at the tied head
  (checked against `token_embd.weight`'s shape). `embed_tokens` LoRAs apply at the input lookup only.

`--outtype` (default f32): f32, f16, bf16 or q8_0 for every `.lora_a` / `.lora_b`. Q8_0 needs rows of a
multiple of 32 elements. `lora_a`'s rows are `n_in` long (always fine for real models) but `lora_b`'s rows
(and token_embd's transposed `lora_a`) are `r` long: a tensor whose row length is not a multiple of 32 is
**stored as F16 instead, and the log says so** (what llama.cpp's older converter did). We do not refuse
because r = 8/16 is the common case and an F16 `lora_b` is small (r·n_out) and more precise than Q8_0.

`convert_peft_in_memory(peft_dir, base_file)` is the same conversion (F32) for a loaded model, returned as the
`AdapterFile` the writer would write, without writing it: what `--hot-lora DIR` and `/lora load DIR` load.

`convert_ggla(path, base_gguf, out, outtype, from_peft)` turns a legacy ggla file (lora.md §8; read with
adapters.read_ggla_adapter, which transposes loraA back) into the same GGUF, with the header alpha and
per-pair ranks, so the runtime scale is the same as loading the ggla directly. `from_peft=True` applies the
q/k permutation to `lora_b` of `attn_q` / `attn_k` (files from the old PEFT converter, which forgot it);
default: none (files from llama.cpp's `finetune` already use llama.cpp's row layout).
"""
from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .adapters import GGLA_MAGIC, AdapterFile, Matrix, pair_up, read_ggla_adapter
from .errors import HotLoraError, ModelFileError
from .gguf_io import GGUFFile
from .hparams import HParams, read_hparams
from .output_file import atomic_output, refuse_same_file, write_gguf
from .peft import (CONFIG_NAME, PEFT_PREFIX, PeftConfig, as_float, check_config, classify_tensors, get_pattern_key,
                   gguf_name, load_peft_tensors, peft_module, read_config)

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
Q = gguf.GGMLQuantizationType


@dataclass
class TensorReport:
    """One converted pair."""
    base: str            # GGUF base tensor, e.g. "blk.0.attn_q.weight"
    source: str          # PEFT module name (or the ggla base name)
    rank: int
    alpha: float         # the module's alpha (alpha_pattern or lora_alpha; ggla: header alpha)
    scale: float         # the module's PEFT scale alpha/r (or alpha/sqrt(r)): what the runtime applies at scale 1
    factor: float        # folded into lora_b (1.0: nothing folded)
    type_a: str = ""
    type_b: str = ""
    permuted: bool = False


@dataclass
class ConvertReport:
    source: Path
    out: Path | None     # None: converted in memory, not written
    arch: str
    alpha: float         # the adapter.lora.alpha written
    outtype: str
    tensors: list[TensorReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # things the log must say (F16 fallbacks, skipped tensors)
    f16_fallbacks: list[tuple[str, int]] = field(default_factory=list)   # q8_0 asked, F16 written: (name, row length)
    n_bytes: int = 0     # size of the written file

    @property
    def n_tensors(self) -> int:
        return 2 * len(self.tensors)


@dataclass
class _Pair:
    """A pair in GGUF numpy orientation (ne reversed): linear a (r, n_in), b (n_out, r);
    token_embd a (n_vocab, r), b (n_embd, r)."""
    report: TensorReport
    a: np.ndarray
    b: np.ndarray


# ---- base model ---------------------------------------------------------------------------------------------

class _Base:
    """What conversion needs from the base GGUF: arch, head counts and tensor shapes (ne)."""

    def __init__(self, source: str | os.PathLike | GGUFFile):
        self.file = source if isinstance(source, GGUFFile) else GGUFFile(source)
        self.path = self.file.path
        embd = self.file.tensor("token_embd.weight", required=False)
        self.hp: HParams = read_hparams(self.file, embd.ne[1] if embd is not None else 0)
        self.arch = self.hp.arch
        self.tied = "output.weight" not in self.file.tensors

    def ne(self, name: str) -> tuple[int, int] | None:
        """ne[:2] of the weight a pair on `name` must fit (tied output: token_embd), or None if absent."""
        if name == "output.weight" and self.tied:
            name = "token_embd.weight"
        info = self.file.tensors.get(name)
        return None if info is None else (info.ne[0], info.ne[1])

    def order(self, name: str) -> int:
        """Position of a base tensor in the base file (output last when tied), for a familiar tensor order."""
        names = list(self.file.tensors)
        return names.index(name) if name in names else len(names)


def _check_fit(base: _Base, source: str, name: str, a: np.ndarray, b: np.ndarray, where: str) -> None:
    """lora.md §5.7 in GGUF numpy orientation, with both shapes named."""
    ne = base.ne(name)
    if ne is None:
        raise ModelFileError(f"{where}: '{source}' maps to '{name}', which does not exist in base model "
                             f"{base.path} ({base.hp.n_layer} layers; hint: maybe wrong base model?)")
    if a.ndim != 2 or b.ndim != 2:
        raise ModelFileError(f"{where}: '{source}' halves must be 2-D, got A {a.shape} and B {b.shape}")
    embd = name == "token_embd.weight"
    rank_a = a.shape[1] if embd else a.shape[0]
    if rank_a != b.shape[1]:
        raise ModelFileError(f"{where}: '{source}' has lora_A of rank {rank_a} but lora_B of rank {b.shape[1]}")
    # delta shape in torch orientation (out, in) vs the base weight's (ne[1], ne[0])
    delta = (a.shape[0], b.shape[0]) if embd else (b.shape[0], a.shape[1])
    want = (ne[1], ne[0])
    if delta != want:
        tied = " (tied output: token_embd.weight)" if name == "output.weight" and base.tied else ""
        raise ModelFileError(f"{where}: '{source}' does not fit base tensor '{name}'{tied}: adapter delta shape "
                             f"{delta} (lora_A {_shape(a, embd)}, lora_B {tuple(b.shape)}) vs base shape {want} "
                             f"(ne [{ne[0]}, {ne[1]}]); hint: maybe wrong base model?")


def _shape(a: np.ndarray, embd: bool) -> tuple[int, ...]:
    """lora_A's shape as the source stored it (token_embd's is kept transposed here)."""
    return tuple(a.shape[::-1]) if embd else tuple(a.shape)


def permute_rows(b: np.ndarray, n_heads: int) -> np.ndarray:
    """gguf-llama.md §4 on the rows of b: out[h·hd + 2j + s] = b[h·hd + s·hd/2 + j]."""
    rows = b.shape[0]
    if rows % (2 * n_heads):
        raise ModelFileError(f"cannot permute {rows} rows for {n_heads} heads (rows must be a multiple of 2·heads)")
    hd = rows // n_heads
    return b.reshape(n_heads, 2, hd // 2, -1).swapaxes(1, 2).reshape(b.shape)


def unpermute_rows(b: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of permute_rows: llama.cpp's q/k row order back to Hugging Face's."""
    rows = b.shape[0]
    if rows % (2 * n_heads):
        raise ModelFileError(f"cannot permute {rows} rows for {n_heads} heads (rows must be a multiple of 2·heads)")
    hd = rows // n_heads
    return b.reshape(n_heads, hd // 2, 2, -1).swapaxes(1, 2).reshape(b.shape)


def _permute_heads(base: _Base, name: str) -> int | None:
    """Head count whose q/k permutation applies to lora_b of `name` (None: not permuted)."""
    if base.arch != "llama":
        return None
    kind = name.split(".")[2] if name.startswith("blk.") else ""
    return {"attn_q": base.hp.n_head, "attn_k": base.hp.n_head_kv}.get(kind)


def convert_peft(peft_dir: str | os.PathLike, base_gguf: str | os.PathLike, out: str | os.PathLike | None = None,
                 outtype: str = "f32") -> ConvertReport:
    """Converts a PEFT LoRA directory to an adapter GGUF for `base_gguf`; returns what was written."""
    outtype = _check_outtype(outtype)
    peft_dir = Path(peft_dir)
    out = Path(out) if out is not None else peft_dir / f"{peft_dir.resolve().name}-{outtype.upper()}-LoRA.gguf"
    report, base, pairs = _read_peft(peft_dir, base_gguf, out, outtype)
    _write(report, base, encoded_adapter(report, base, pairs))
    return report


def convert_peft_in_memory(peft_dir: str | os.PathLike, base_file: GGUFFile) -> AdapterFile:
    """A PEFT LoRA directory as the adapter `convert_peft` would write for this base (F32), read back, with no
    file written: the adapter `--hot-lora DIR` loads."""
    report, base, pairs = _read_peft(Path(peft_dir), base_file, None, "f32")
    return encoded_adapter(report, base, pairs)


def _read_peft(peft_dir: Path, base_source: str | os.PathLike | GGUFFile, out: Path | None,
               outtype: str) -> tuple[ConvertReport, _Base, list[_Pair]]:
    """Reads and checks the directory and converts every pair for the base (float64, scales folded, q/k
    permuted), with the report of what it found (one TensorReport per pair, the notes)."""
    if not peft_dir.is_dir():
        raise ModelFileError(f"{peft_dir}: not a PEFT adapter directory")
    cfg = check_config(peft_dir, read_config(peft_dir))
    base = _Base(base_source)
    st_path, tensors = load_peft_tensors(peft_dir)
    if out is not None:
        refuse_same_file(out, [("PEFT weights", st_path), ("PEFT config", peft_dir / CONFIG_NAME),
                               ("base model", base.path)])
    report = ConvertReport(peft_dir, out, base.arch, cfg.alpha, outtype)
    modules = classify_tensors(st_path, tensors, report.notes)
    gguf_names = {module: gguf_name(st_path, module, e["kind"], base.arch) for module, e in modules.items()}
    pairs = [_peft_pair(cfg, base, st_path, module, entry, gguf_names[module]) for module, entry in modules.items()]
    report.tensors = [p.report for p in pairs]
    _tied_notes(report, base)
    return report, base, pairs


def _peft_pair(cfg: PeftConfig, base: _Base, st_path: Path, module: str, entry: dict, name: str) -> _Pair:
    """One PEFT module's A and B as the GGUF pair on base tensor `name`, checked against the base and config."""
    kind, names = entry["kind"], entry["names"]
    for half, other in (("A", "B"), ("B", "A")):
        if half not in entry:
            raise ModelFileError(f"{st_path}: LoRA tensor pair for '{module}' is missing one component "
                                 f"(has {names[other]}, no lora_{'embedding_' if kind == 'embedding' else ''}"
                                 f"{half})")
    a, b = (as_float(st_path, names[h], entry[h]) for h in ("A", "B"))
    if kind == "embedding":
        a = a.T   # lora.md §2.2: token_embd's lora_a is A transposed, (n_vocab, r)
    _check_fit(base, module, name, a, b, str(st_path))
    rank = b.shape[1]
    rank_key = get_pattern_key(cfg.rank_pattern, module)
    want_rank = cfg.rank_pattern[rank_key] if rank_key is not None else cfg.r
    if rank != want_rank:
        said = f"rank_pattern['{rank_key}']" if rank_key is not None else "r"
        raise ModelFileError(f"{st_path}: '{module}' has rank {rank} but {CONFIG_NAME} gives it {said} = "
                             f"{want_rank}; the config does not belong to these weights")
    alpha_key = get_pattern_key(cfg.alpha_pattern, module)
    alpha_t = cfg.alpha_pattern[alpha_key] if alpha_key is not None else cfg.alpha
    scale = alpha_t / (math.sqrt(rank) if cfg.rslora else rank)
    runtime = cfg.alpha / rank if cfg.alpha else 1.0   # lora.md §2.3 with user_scale 1
    factor = scale / runtime
    if factor != 1.0:
        b = b * factor
    heads = _permute_heads(base, name)
    if heads is not None:
        b = permute_rows(b, heads)
    return _Pair(TensorReport(name, module, rank, alpha_t, scale, factor, permuted=heads is not None), a, b)


def _tied_notes(report: ConvertReport, base: _Base) -> None:
    """hotlora applies these by site; llama.cpp does not (lora.md §3, tied output trap): say so."""
    names = {t.base for t in report.tensors}
    if base.tied and "output.weight" in names:
        report.notes.append("tied base: the output.weight (lm_head) pair applies at the tied output head in "
                            "hotlora; llama.cpp refuses to load it (no output.weight in the base)")
    if base.tied and "token_embd.weight" in names:
        report.notes.append("tied base: the token_embd.weight pair applies at the input lookup only in hotlora; "
                            "llama.cpp would also look it up at the tied output head")


def write_adapter(out: str | os.PathLike, base_source: str | os.PathLike | GGUFFile,
                  pairs: list[tuple[str, np.ndarray, np.ndarray]], alpha: float, name: str,
                  outtype: str = "f32") -> ConvertReport:
    """Writes LoRA pairs (base tensor name, A [r, n_in], B [n_out, r], llama.cpp's orientation and q/k row
    order) as an adapter GGUF for the base, with convert-lora's writer: the same keys, order and checks."""
    outtype = _check_outtype(outtype)
    out, base = Path(out), _Base(base_source)
    refuse_same_file(out, [("base model", base.path)])
    report = ConvertReport(out, out, base.arch, alpha, outtype)
    converted = []
    for tensor, a, b in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        _check_fit(base, tensor, tensor, a, b, str(out))
        rank = b.shape[1]
        scale = alpha / rank if alpha else 1.0
        converted.append(_Pair(TensorReport(tensor, tensor, rank, alpha, scale, 1.0), a, b))
    report.tensors = [p.report for p in converted]
    adapter = encoded_adapter(report, base, converted)
    adapter.name = name
    _write(report, base, adapter)
    return report


def peft_pairs(base_source: str | os.PathLike | GGUFFile,
               pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The inverse of convert_peft's mapping: GGUF pairs as PEFT's adapter_model.safetensors tensors
    (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight, ...), q/k lora_b rows of llama bases
    un-permuted back to Hugging Face's order. Linear layer targets only."""
    base = _Base(base_source)
    tensors = {}
    for tensor, a, b in pairs:
        heads = _permute_heads(base, tensor)
        if heads is not None:
            b = unpermute_rows(b, heads)
        module = peft_module(tensor)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b)
    return tensors


# ---- ggla ---------------------------------------------------------------------------------------------------

def _matrix_values(matrix) -> np.ndarray:
    """adapters.Matrix (F32/F16, ne [n0, n1]) -> float64 (n1, n0)."""
    dtype = {"F32": np.float32, "F16": np.float16}[matrix.type_name]
    return np.frombuffer(matrix.data, dtype=dtype).reshape(matrix.ne[1], matrix.ne[0]).astype(np.float64)


def is_ggla(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and struct.unpack("<I", head)[0] == GGLA_MAGIC


def convert_ggla(ggla_path: str | os.PathLike, base_gguf: str | os.PathLike, out: str | os.PathLike | None = None,
                 outtype: str = "f32", from_peft: bool = False) -> ConvertReport:
    """Converts a legacy ggla adapter to GGUF. The header alpha is written as is and ranks come from each pair,
    as when hotlora loads the ggla itself. `from_peft`: permute lora_b rows of attn_q / attn_k (llama bases)."""
    outtype = _check_outtype(outtype)
    ggla_path = Path(ggla_path)
    base = _Base(base_gguf)
    file = read_ggla_adapter(ggla_path, base.hp.n_layer)
    out = Path(out) if out is not None else ggla_path.with_suffix(".gguf")
    refuse_same_file(out, [("ggla adapter", ggla_path), ("base model", Path(base_gguf))])
    report = ConvertReport(ggla_path, out, base.arch, file.alpha, outtype)
    if from_peft and base.arch != "llama":
        report.notes.append(f"--ggla-from-peft: {base.arch} bases use no q/k permutation; nothing to permute")
    pairs = []
    for pair in file.pairs:
        a, b = _matrix_values(pair.a), _matrix_values(pair.b)
        _check_fit(base, pair.base, pair.base, a, b, str(ggla_path))
        heads = _permute_heads(base, pair.base) if from_peft else None
        if heads is not None:
            b = permute_rows(b, heads)
        scale = file.alpha / pair.rank if file.alpha else 1.0
        report.tensors.append(TensorReport(pair.base, pair.base, pair.rank, file.alpha, scale, 1.0,
                                           permuted=heads is not None))
        pairs.append(_Pair(report.tensors[-1], a, b))
    _tied_notes(report, base)
    _write(report, base, encoded_adapter(report, base, pairs))
    return report


# ---- writing ------------------------------------------------------------------------------------------------

def _check_outtype(outtype: str) -> str:
    value = str(outtype).lower()
    if value not in OUTTYPES:
        raise HotLoraError(f"--outtype '{outtype}' is not one of {', '.join(OUTTYPES)}")
    return value


def _encode(values: np.ndarray, outtype: str, name: str, fallbacks: list[tuple[str, int]]) -> tuple[np.ndarray, str]:
    """(data, ggml type name) for a float64 (rows, row length) array; a Q8_0 tensor whose rows are
    not whole 32-blocks is stored as F16 and listed in `fallbacks` as (name, row length)."""
    values32 = values.astype(np.float32)
    if outtype == "q8_0" and values.shape[1] % 32:
        fallbacks.append((name, values.shape[1]))
        outtype = "f16"
    if outtype == "f32":
        data, type_name = values32, "F32"
    elif outtype == "f16":
        data, type_name = values32.astype(np.float16), "F16"
    else:
        raw = Q.BF16 if outtype == "bf16" else Q.Q8_0
        data, type_name = gguf.quants.quantize(values32, raw), raw.name
    if outtype == "f16" and not np.all(np.isfinite(data)):
        raise HotLoraError(f"{name}: values overflow F16 (max |x| = {np.max(np.abs(values)):.4g}); "
                           f"use --outtype f32 or bf16")
    return np.ascontiguousarray(data), type_name


def encoded_adapter(report: ConvertReport, base: _Base, pairs: list[_Pair]) -> AdapterFile:
    """The converted pairs encoded in report.outtype: the adapter file the writer writes and the loader uses.
    Sets each TensorReport's types and fills report.f16_fallbacks."""
    halves: dict[str, dict[str, Matrix]] = {}
    for p in pairs:
        for half, values in (("a", p.a), ("b", p.b)):
            data, type_name = _encode(values, report.outtype, f"{p.report.base}.lora_{half}", report.f16_fallbacks)
            setattr(p.report, f"type_{half}", type_name)
            # values (rows, row length) -> ne [row length, rows]
            halves.setdefault(p.report.base, {})[half] = Matrix(type_name, (values.shape[1], values.shape[0]),
                                                                data.reshape(-1).view(np.uint8))
    return AdapterFile(report.source, report.arch, report.alpha, pair_up(report.source, halves, base.hp.n_layer),
                       adapter_display_name(report.source))


def adapter_display_name(source: Path) -> str:
    """general.name from the adapter's directory (or file) name, title-cased: peft-a -> 'Peft A'."""
    stem = source.resolve().name if source.is_dir() else source.stem
    return re.sub(r"[-_\s]+", " ", stem).strip().title() or "Lora"


def _write(report: ConvertReport, base: _Base, adapter: AdapterFile) -> None:
    """The GGUF of lora.md §2.1 (keys in llama.cpp's order), pairs in the base file's tensor order; written
    through output_file.atomic_output, so a failure never leaves a half-written adapter behind."""
    pairs = sorted(adapter.pairs, key=lambda p: (base.order(p.base), p.base))
    report.tensors.sort(key=lambda t: (base.order(t.base), t.base))
    with atomic_output(report.out) as tmp:
        writer = gguf.GGUFWriter(tmp, report.arch)   # general.architecture first
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_string("general.name", adapter.name)
        writer.add_float32("adapter.lora.alpha", report.alpha)
        writer.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
        for p in pairs:
            for half, m in (("a", p.a), ("b", p.b)):
                writer.add_tensor(f"{p.base}.lora_{half}", m.data.reshape(m.ne[1], -1), raw_dtype=Q[m.type_name])
        write_gguf(writer)
    if report.f16_fallbacks:
        lengths = ", ".join(str(n) for n in sorted({n for _, n in report.f16_fallbacks}))
        report.notes.append(f"q8_0 needs rows of a multiple of 32 elements: {len(report.f16_fallbacks)} "
                            f"tensor(s) with rows of {lengths} (lora_b of those ranks, token_embd's lora_a) "
                            f"stored as F16 instead, e.g. '{report.f16_fallbacks[0][0]}'")
    report.n_bytes = report.out.stat().st_size
