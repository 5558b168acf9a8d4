"""SentencePiece-style tokenization of one text fragment for `tokenizer.ggml.model = llama` (tokenizers.md §3)."""

from __future__ import annotations

from hotlora.errors import TokenizerError

from .merge import merge_symbols
from .vocab import Vocab

SPACE_MARK = "\u2581"  # ▁


def spm_tokenize(text: str, vocab: Vocab) -> list[int]:
    """Token ids of one raw-text fragment (the caller adds the prefix space, §2 step 2)."""
    ids, scores = vocab.ids, vocab.scores

    def priority(left: str, right: str) -> float | None:
        token = ids.get(left + right)
        return None if token is None else -scores[token]  # highest score first

    out: list[int] = []
    for symbol in merge_symbols(list(text.replace(" ", SPACE_MARK)), priority):
        token = ids.get(symbol)
        if token is not None:
            out.append(token)
        else:  # §3 step 4: a character not in the vocabulary
            out.extend(byte_token(vocab, b) for b in symbol.encode("utf-8"))
    return out


def byte_token(vocab: Vocab, byte: int) -> int:
    """Byte fallback: the `<0xHH>` token, else the token whose text is the raw byte (§3 step 4)."""
    token = vocab.ids.get(f"<0x{byte:02X}>")
    if token is None:
        token = vocab.ids.get(bytes([byte]).decode("utf-8", "surrogateescape"))
    if token is None:
        raise TokenizerError(f"{vocab.path}: cannot encode byte 0x{byte:02X}: the vocab has no byte tokens")
    return token
