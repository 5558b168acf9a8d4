"""Mutations of GGUF and ggla files for the fuzzer (benches/fuzz.py), aware of where each header field lies.

`layout(data)` walks a valid file and lists its integer header fields with their byte offsets: GGUF's tensor
and KV counts, every string length, value type, array item type and count, integer metadata values, and each
tensor's n_dims, ne[i], type and data offset (gguf.md §2); ggla's header and per-record n_dims, name length,
ftype and ne[i] (lora.md §8). `mutate(data, fields, rng)` applies one to three random mutations, some blind
(byte and bit flips, truncation, inserts, deletes), some aimed at a parsed field (an extreme integer, a type
id, a tensor offset, a value retyped as a huge array), and says what it did. Everything depends only on the
rng, so a case is reproducible from its seed.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

# GGUF value type id -> size in bytes of a scalar (8: string, 9: array have no fixed size).
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
INTEGER_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
STRING, ARRAY = 8, 9
GGLA_MAGIC = 0x67676C61

EXTREMES = (0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1)


@dataclass(frozen=True)
class Field:
    offset: int   # byte offset in the file
    size: int     # 1, 2, 4 or 8 bytes, little-endian
    role: str     # "n_tensors", "n_kv", "strlen", "vtype", "value" (an integer KV), "arr_type", "arr_count",
                  # "item_strlen", "n_dims", "ne", "ttype", "toffset"


class _Cursor:
    """Reads little-endian integers from `data`, recording each as a Field."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos, self.fields = data, pos, []

    def int(self, size: int, role: str) -> int:
        value = int.from_bytes(self.data[self.pos:self.pos + size], "little")
        self.fields.append(Field(self.pos, size, role))
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        self.pos += n


def _gguf_value(cur: _Cursor, vtype: int, role: str = "value") -> None:
    if vtype == STRING:
        cur.skip(cur.int(8, "strlen" if role == "value" else "item_strlen"))
    elif vtype == ARRAY:
        item = cur.int(4, "arr_type")
        count = cur.int(8, "arr_count")
        if item in SCALAR_SIZES:   # the items' fields would swamp the others: skip them
            cur.skip(count * SCALAR_SIZES[item])
        else:
            for _ in range(count):
                _gguf_value(cur, item, "item")
    elif vtype in INTEGER_TYPES:
        cur.int(SCALAR_SIZES[vtype], role)
    else:
        cur.skip(SCALAR_SIZES[vtype])


def gguf_layout(data: bytes) -> list[Field]:
    """The integer fields of a valid GGUF v2/v3 file's header (strings' and arrays' items are not listed)."""
    cur = _Cursor(data, 8)   # magic, version
    n_tensors = cur.int(8, "n_tensors")
    n_kv = cur.int(8, "n_kv")
    for _ in range(n_kv):
        cur.skip(cur.int(8, "strlen"))
        _gguf_value(cur, cur.int(4, "vtype"))
    for _ in range(n_tensors):
        cur.skip(cur.int(8, "strlen"))
        n_dims = cur.int(4, "n_dims")
        for _ in range(n_dims):
            cur.int(8, "ne")
        cur.int(4, "ttype")
        cur.int(8, "toffset")
    return cur.fields


def ggla_layout(data: bytes) -> list[Field]:
    """The integer fields of a valid ggla file: r and alpha, then each record's n_dims, name length, ftype, ne."""
    cur = _Cursor(data, 8)   # magic, version
    cur.int(4, "value")
    cur.int(4, "value")
    while cur.pos + 12 <= len(data):
        n_dims = cur.int(4, "n_dims")
        name_len = cur.int(4, "strlen")
        ftype = cur.int(4, "ttype")
        ne = [cur.int(4, "ne") for _ in range(n_dims)]
        cur.skip(name_len)
        cur.skip(-cur.pos % 32 + int(np.prod(ne)) * (4 if ftype == 0 else 2))
    return cur.fields


def layout(data: bytes) -> list[Field]:
    """The integer header fields of a valid GGUF or ggla file."""
    if data[:4] == b"GGUF":
        return gguf_layout(data)
    if struct.unpack_from("<I", data)[0] == GGLA_MAGIC:
        return ggla_layout(data)
    raise ValueError("not a GGUF or ggla file")


def header_end(fields: list[Field]) -> int:
    """The first byte after the last header field: most mutations land before it."""
    return max(f.offset + f.size for f in fields)


# ---- mutations: each edits buf in place and returns a description -------------------------------------

def _position(buf: bytearray, hot: int, rng: np.random.Generator) -> int:
    """A random byte position: in the header 90% of the time."""
    return int(rng.integers(0, min(hot, len(buf)) if rng.random() < 0.9 else len(buf)))


def _put(buf: bytearray, field: Field, value: int) -> None:
    if field.offset + field.size <= len(buf):
        buf[field.offset:field.offset + field.size] = (value % 2 ** (8 * field.size)).to_bytes(field.size, "little")


def byte_flips(buf, fields, hot, rng) -> str:
    positions = [_position(buf, hot, rng) for _ in range(rng.integers(1, 9))]
    for pos in positions:
        buf[pos] = int(rng.integers(0, 256))
    return f"bytes at {positions}"


def bit_flips(buf, fields, hot, rng) -> str:
    flips = [(_position(buf, hot, rng), int(rng.integers(0, 8))) for _ in range(rng.integers(1, 5))]
    for pos, bit in flips:
        buf[pos] ^= 1 << bit
    return f"bits (byte, bit) {flips}"


def truncate(buf, fields, hot, rng) -> str:
    end = _position(buf, hot, rng)
    del buf[end:]
    return f"truncate at {end}"


def _pick(fields: list[Field], rng: np.random.Generator) -> Field:
    """A random field of a random role: the few tensor and count fields as likely as the many string lengths."""
    roles = sorted({f.role for f in fields})
    role = roles[rng.integers(0, len(roles))]
    candidates = [f for f in fields if f.role == role]
    return candidates[rng.integers(0, len(candidates))]


def extreme_int(buf, fields, hot, rng) -> str:
    field = _pick(fields, rng)
    old = int.from_bytes(buf[field.offset:field.offset + field.size], "little")
    choices = EXTREMES + (int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)), old + 1, old - 1, old * 2)
    value = choices[rng.integers(0, len(choices))]
    _put(buf, field, value)
    return f"{field.role}@{field.offset} = {value % 2 ** (8 * field.size)}"


def type_edit(buf, fields, hot, rng) -> str:
    typed = [f for f in fields if f.role in ("vtype", "arr_type", "ttype")]
    field = typed[rng.integers(0, len(typed))]
    value = int(rng.integers(0, 42)) if rng.random() < 0.9 else int(rng.integers(0, 2**32))
    _put(buf, field, value)
    return f"{field.role}@{field.offset} = {value}"


def offset_edit(buf, fields, hot, rng) -> str:
    """A tensor's data offset moved onto another's, by a multiple of 32, or anywhere (ggla: its ne[0])."""
    offsets = [f for f in fields if f.role == "toffset"] or [f for f in fields if f.role == "ne"]
    field, other = (offsets[i] for i in rng.integers(0, len(offsets), size=2))
    old = int.from_bytes(buf[field.offset:field.offset + field.size], "little")
    value = [int.from_bytes(buf[other.offset:other.offset + other.size], "little"),
             old + 32 * int(rng.integers(-4, 5)), int(rng.integers(0, 2**20))][rng.integers(0, 3)]
    _put(buf, field, value)
    return f"{field.role}@{field.offset} = {value}"


def retype_as_array(buf, fields, hot, rng) -> str:
    """A metadata value retyped as an array (mostly of uint8) whose count is extreme or reaches the end of the
    file: the 8 + 4 bytes after the value type become the item type and the count."""
    vtypes = [f for f in fields if f.role == "vtype"]
    if not vtypes:   # ggla has no metadata
        return byte_flips(buf, fields, hot, rng)
    at = vtypes[rng.integers(0, len(vtypes))].offset
    item = 0 if rng.random() < 0.7 else int(rng.integers(0, 13))
    count = [len(buf) - at - 16, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1][rng.integers(0, 5)] % 2**64
    buf[at:at + 16] = struct.pack("<IIQ", ARRAY, item, count)
    return f"value type@{at} = array of type {item}, count {count}"


def insert(buf, fields, hot, rng) -> str:
    pos, length = _position(buf, hot, rng), int(rng.integers(1, 65))
    buf[pos:pos] = bytes(rng.integers(0, 256, size=length, dtype=np.uint8))
    return f"insert {length} bytes at {pos}"


def delete(buf, fields, hot, rng) -> str:
    pos, length = _position(buf, hot, rng), int(rng.integers(1, 65))
    del buf[pos:pos + length]
    return f"delete {length} bytes at {pos}"


MUTATIONS = (byte_flips, bit_flips, truncate, extreme_int, extreme_int, type_edit, offset_edit, retype_as_array,
             insert, delete)


def mutate(data: bytes, fields: list[Field], rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation (80%) or two to three, in order; the mutated bytes and what was done."""
    buf, hot = bytearray(data), header_end(fields)
    n = 1 if rng.random() < 0.8 else int(rng.integers(2, 4))
    done = []
    for _ in range(n):
        mutation = MUTATIONS[rng.integers(0, len(MUTATIONS))]
        done.append(f"{mutation.__name__}: {mutation(buf, fields, hot, rng)}")
        if not buf:
            break
    return bytes(buf), "; ".join(done)


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The rng of case `index` of a campaign: independent of which worker runs it, and of the other cases."""
    return np.random.default_rng([seed, index])
