"""Byte-level BPE for `tokenizer.ggml.model = gpt2`: byte encoding and merges (tokenizers.md §5)."""

from __future__ import annotations

from .merge import merge_symbols
from .pretokenize import pretokenize
from .vocab import Vocab


def _byte_chars() -> list[str]:
    """§5 step 1: printable bytes map to themselves, the other 68 to U+0100, U+0101, … in byte order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0x100
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(extra))
            extra += 1
    return chars


_BYTE_CHARS = _byte_chars()
_ENCODE = str.maketrans({b: c for b, c in enumerate(_BYTE_CHARS)})
_DECODE = {c: b for b, c in enumerate(_BYTE_CHARS)}


def byte_encode(piece: str) -> str:
    """The GPT-2 mapped form of a piece: one code point per UTF-8 byte."""
    return piece.encode("utf-8").decode("latin-1").translate(_ENCODE)


def byte_decode(text: str) -> bytes:
    """Inverse of `byte_encode` for a NORMAL token's text (§7.1); a code point outside the table becomes
    `[UNK_BYTE_0x<hex utf8><text>]` as in llama.cpp."""
    out = bytearray()
    for c in text:
        b = _DECODE.get(c)
        if b is not None:
            out.append(b)
        else:
            raw = c.encode("utf-8", "surrogateescape")
            out += f"[UNK_BYTE_0x{raw.hex()}{text}]".encode("utf-8", "surrogateescape")
    return bytes(out)


def bpe_tokenize(text: str, vocab: Vocab) -> list[int]:
    """Token ids of one raw-text fragment: pre-tokenize (§4), byte-encode and merge each piece (§5)."""
    ids, ranks = vocab.ids, vocab.ranks

    def priority(left: str, right: str) -> int | None:
        return ranks.get((left, right))  # lowest rank first

    out: list[int] = []
    for piece in pretokenize(text, vocab.pre_tokenizer.regex_set):
        word = byte_encode(piece)
        if vocab.pre_tokenizer.ignore_merges and word in ids:
            out.append(ids[word])
            continue
        for symbol in merge_symbols(list(word), priority):
            token = ids.get(symbol)
            if token is not None:
                out.append(token)
            else:  # §5 step 4: only single-byte token texts can match; the rest is dropped as in llama.cpp
                out.extend(t for t in map(ids.get, _single_bytes(symbol)) if t is not None)
    return out


def _single_bytes(symbol: str) -> list[str]:
    return [bytes([b]).decode("utf-8", "surrogateescape") for b in symbol.encode("utf-8", "surrogateescape")]
