"""LoRA adapter files: llama.cpp's adapter GGUF and the legacy `ggla` .bin (lora.md §2, §5, §8), and PEFT
adapter directories, converted in memory by hotlora.convert for the model they are loaded into.

All are read into the same form, a list of pairs (target, layer, A, B, alpha/rank)
that the core checks against the model (shapes, ranks) in hl_adapter_create.
Tensor data of GGUF adapters stays in the file's memory map; ggla's A is
transposed (it was stored so), which needs one copy.
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._native import TYPE_IDS, lib
from .errors import ModelFileError
from .gguf_io import GGUFFile

LAYER_TARGETS = {"attn_q": lib.HL_LORA_ATTN_Q, "attn_k": lib.HL_LORA_ATTN_K, "attn_v": lib.HL_LORA_ATTN_V,
                 "attn_output": lib.HL_LORA_ATTN_OUTPUT, "ffn_gate": lib.HL_LORA_FFN_GATE,
                 "ffn_up": lib.HL_LORA_FFN_UP, "ffn_down": lib.HL_LORA_FFN_DOWN}
GLOBAL_TARGETS = {"token_embd.weight": lib.HL_LORA_TOKEN_EMBD, "output.weight": lib.HL_LORA_OUTPUT}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
GGLA_MAGIC = 0x67676C61


@dataclass
class Matrix:
    """A 2-D tensor as the core takes it: bytes of ne[1] rows of ne[0] elements of a ggml type."""
    type_name: str
    ne: tuple[int, int]
    data: np.ndarray  # uint8 view, owned by a memory map or by this object


@dataclass
class LoraPair:
    base: str       # base tensor name, e.g. "blk.0.attn_q.weight"
    target: int     # hl_lora_target
    layer: int
    a: Matrix       # [n_in, r]; token_embd: [r, n_vocab]
    b: Matrix       # [r, n_out]; token_embd: [r, n_embd]

    @property
    def rank(self) -> int:
        return self.b.ne[0]


@dataclass
class AdapterFile:
    path: Path
    arch: str | None   # None: the format does not say (ggla)
    alpha: float
    pairs: list[LoraPair] = field(default_factory=list)
    name: str = ""
    owner: object = None  # the open file whose memory map the matrices view, if any

    def scale(self, pair: LoraPair) -> float:
        """alpha / rank, or 1 without alpha (lora.md §2.3); the user scale multiplies it."""
        return self.alpha / pair.rank if self.alpha else 1.0

    def content_digest(self) -> bytes:
        """sha256 of what the adapter computes: every pair's target, types, shapes and scale, and its bytes."""
        h = hashlib.sha256()
        for pair in self.pairs:
            h.update(f"{pair.base}|{pair.a.type_name}{pair.a.ne}|{pair.b.type_name}{pair.b.ne}".encode())
            h.update(struct.pack("<d", self.scale(pair)))
            h.update(np.ascontiguousarray(pair.a.data).data)
            h.update(np.ascontiguousarray(pair.b.data).data)
        return h.digest()


def target_of(path: Path, base: str, n_layer: int) -> tuple[int, int]:
    """(hl_lora_target, layer) for a base tensor name, or a one-line error naming it."""
    if base in GLOBAL_TARGETS:
        return GLOBAL_TARGETS[base], -1
    match = _LAYER_NAME.fullmatch(base)
    if not match or match.group(2) not in LAYER_TARGETS:
        raise ModelFileError(f"{path}: LoRA tensor '{base}' targets a tensor hotlora does not adapt (adaptable: "
                             f"token_embd, output, blk.N.{{{', '.join(LAYER_TARGETS)}}})")
    layer = int(match.group(1))
    if layer >= n_layer:
        raise ModelFileError(f"{path}: LoRA tensor '{base}' does not exist in base model "
                             f"({n_layer} layers; hint: maybe wrong base model?)")
    return LAYER_TARGETS[match.group(2)], layer


def pair_up(path: Path, halves: dict[str, dict[str, Matrix]], n_layer: int) -> list[LoraPair]:
    """base name -> {"a": lora_a, "b": lora_b} to pairs sorted by base name, each with its target and layer."""
    pairs = []
    for base in sorted(halves):
        half = halves[base]
        if len(half) != 2:
            missing = "lora_b" if "a" in half else "lora_a"
            raise ModelFileError(f"{path}: LoRA tensor pair for '{base}' is missing one component ({missing})")
        target, layer = target_of(path, base, n_layer)
        pairs.append(LoraPair(base, target, layer, half["a"], half["b"]))
    return pairs


# ---- GGUF adapters --------------------------------------------------------------------------------

def _check_gguf_header(f: GGUFFile, model_arch: str) -> None:
    kind = f.get_str("general.type", "")
    if kind != "adapter":
        raise ModelFileError(f"{f.path}: expect general.type to be 'adapter', but got: '{kind}'")
    arch = f.get_str("general.architecture", "")
    if arch != model_arch:
        raise ModelFileError(f"{f.path}: model arch and LoRA arch mismatch (adapter: '{arch}', model: '{model_arch}')")
    lora = f.get_str("adapter.type", "")
    if lora != "lora":
        raise ModelFileError(f"{f.path}: expect adapter.type to be 'lora', but got: '{lora}'")


def read_gguf_adapter(path: Path, model_arch: str, n_layer: int) -> AdapterFile:
    f = GGUFFile(path)
    _check_gguf_header(f, model_arch)
    alpha = f.get_float("adapter.lora.alpha", 0.0)
    halves: dict[str, dict[str, Matrix]] = {}
    for name, info in f.tensors.items():
        base, dot, half = name.rpartition(".")
        if half not in ("lora_a", "lora_b") or not base:
            raise ModelFileError(f"{path}: LoRA tensor '{name}' has unexpected suffix (expected .lora_a or .lora_b)")
        if info.type_name not in TYPE_IDS or info.ne[2:] != (1, 1) or min(info.ne[:2]) < 1:
            raise ModelFileError(f"{path}: LoRA tensor '{name}' must be a non-empty 2-D matrix of a supported "
                                 f"type, got {info.type_name} {list(info.ne)}")
        halves.setdefault(base, {})[half[-1]] = Matrix(info.type_name, (info.ne[0], info.ne[1]), info.data)
    return AdapterFile(path, model_arch, alpha, pair_up(path, halves, n_layer), f.get_str("general.name", ""), f)


# ---- legacy ggla ----------------------------------------------------------------------------------

def _ggla_records(path: Path, data: bytes):
    """Yields (name, ftype, ne, raw bytes) per record of a ggla file (lora.md §8)."""
    pos = 16
    while pos < len(data):
        if pos + 12 > len(data):
            raise ModelFileError(f"{path}: truncated ggla record header at byte {pos}")
        n_dims, name_len, ftype = struct.unpack_from("<iii", data, pos)
        pos += 12
        if n_dims not in (1, 2) or not 0 < name_len < 256 or ftype not in (0, 1):
            raise ModelFileError(f"{path}: bad ggla record at byte {pos - 12} (n_dims {n_dims}, name length "
                                 f"{name_len}, type {ftype})")
        if pos + 4 * n_dims + name_len > len(data):
            raise ModelFileError(f"{path}: truncated ggla record at byte {pos}")
        ne = struct.unpack_from(f"<{n_dims}i", data, pos)
        pos += 4 * n_dims
        name = data[pos:pos + name_len].decode("utf-8", "replace")
        pos += name_len
        pos += -pos % 32
        n_bytes = int(np.prod(ne, dtype=np.int64)) * (4 if ftype == 0 else 2)
        if min(ne) < 1 or pos + n_bytes > len(data):
            raise ModelFileError(f"{path}: ggla tensor '{name}' data extends past the end of the file")
        yield name, ftype, tuple(ne) + (1,) * (2 - n_dims), data[pos:pos + n_bytes]
        pos += n_bytes


def _ggla_matrix(ftype: int, ne: tuple[int, int], raw: bytes, transpose: bool) -> Matrix:
    """ne[1] rows of ne[0] elements; transposed on request (ggla's loraA is A transposed)."""
    values = np.frombuffer(raw, dtype=np.float32 if ftype == 0 else np.float16).reshape(ne[1], ne[0])
    if transpose:
        values, ne = np.ascontiguousarray(values.T), (ne[1], ne[0])
    return Matrix("F32" if ftype == 0 else "F16", ne, values.reshape(-1).view(np.uint8))


def read_ggla_adapter(path: Path, n_layer: int) -> AdapterFile:
    """Legacy files in llama.cpp's row layout. Linear targets: loraA [r, n_in] is A transposed,
    loraB [r, n_out] is B. token_embd: the old merge added loraB·loraA laid out [n_embd, n_vocab],
    i.e. loraB [r, n_vocab] plays GGUF's lora_a and loraA [r, n_embd] its lora_b."""
    data = path.read_bytes()
    if len(data) < 16:
        raise ModelFileError(f"{path}: truncated ggla header")
    magic, version, _rank, alpha = struct.unpack_from("<Iiii", data, 0)
    if magic != GGLA_MAGIC or version != 1:
        raise ModelFileError(f"{path}: not a ggla version 1 file")
    halves: dict[str, dict[str, Matrix]] = {}
    for name, ftype, ne, raw in _ggla_records(path, data):
        base, _, half = name.rpartition(".")
        if half not in ("loraA", "loraB"):
            raise ModelFileError(f"{path}: '{name}' is not a lora tensor (expected .loraA or .loraB)")
        embd = base == "token_embd.weight"
        key = {"loraA": "b" if embd else "a", "loraB": "a" if embd else "b"}[half]
        halves.setdefault(base, {})[key] = _ggla_matrix(ftype, ne, raw, transpose=half == "loraA" and not embd)
    return AdapterFile(path, None, float(alpha), pair_up(path, halves, n_layer))


def read_adapter_file(path: str | Path, model_arch: str, n_layer: int,
                      base: GGUFFile | None = None) -> AdapterFile:
    """Reads a GGUF or ggla adapter, telling them apart by their magic; a PEFT adapter directory is converted
    in memory for the base model `base` (as `convert-lora` would write it)."""
    path = Path(path)
    if path.is_dir():
        return _read_peft_dir(path, base)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ModelFileError(f"failed to load lora adapter file from {path} ({e.strerror})") from None
    if len(magic) == 4 and struct.unpack("<I", magic)[0] == GGLA_MAGIC:
        return read_ggla_adapter(path, n_layer)
    return read_gguf_adapter(path, model_arch, n_layer)


def _read_peft_dir(path: Path, base: GGUFFile | None) -> AdapterFile:
    if base is None:
        raise ModelFileError(f"{path}: a PEFT adapter directory is converted for a base model, and none was given")
    from .convert import convert_peft_in_memory  # convert imports this module (and the slow gguf package)
    return convert_peft_in_memory(path, base)
