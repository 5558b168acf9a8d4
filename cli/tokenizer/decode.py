"""Detokenization: one token to bytes (tokenizers.md §7.1) and the BPE space clean-up (§7.2 step 3)."""

from __future__ import annotations

import re

from gguf import TokenType

from hotlora.errors import TokenizerError

from .bpe import byte_decode
from .special import SPECIAL_TYPES
from .spm import SPACE_MARK
from .vocab import Vocab

NORMAL, BYTE = int(TokenType.NORMAL), int(TokenType.BYTE)


def full_piece(vocab: Vocab, token: int) -> bytes:
    """The bytes of `token` as `token_to_piece(special=True)` gives them (§7.1 table)."""
    kind, text = vocab.types[token], vocab.texts[token]
    if kind in SPECIAL_TYPES:
        return text.encode("utf-8", "surrogateescape")
    if kind == NORMAL and vocab.model == "llama":
        return text.replace(SPACE_MARK, " ").encode("utf-8", "surrogateescape")
    if kind == NORMAL:
        return byte_decode(text)
    if kind == BYTE and vocab.model == "llama":
        return bytes([_byte_value(vocab, token)])
    return b""  # UNUSED, UNDEFINED, and BYTE in a BPE vocab


def _byte_value(vocab: Vocab, token: int) -> int:
    """The byte HH of a `<0xHH>` token."""
    text = vocab.texts[token]
    try:
        return int(text[3:5], 16)
    except ValueError:
        raise TokenizerError(f"{vocab.path}: byte token {token} has malformed text {text!r}") from None


_SPACE_BEFORE_PUNCT = re.compile(rb" (?=[?!.,])")
_SPACE_BEFORE_CONTRACTION = re.compile(rb" (?='[sm]|'re|'ve)")


def clean_spaces(text: bytes) -> bytes:
    """§7.2 step 3, three passes in order: drop the space before ?!., ; turn " ' " into "'"; drop the space
    before 's 'm 're 've."""
    text = _SPACE_BEFORE_PUNCT.sub(b"", text)
    text = text.replace(b" ' ", b"'")
    return _SPACE_BEFORE_CONTRACTION.sub(b"", text)
