"""`StreamDecoder`: turn generated token ids into printable text one token at a time (tokenizers.md §7.1, §8).

Pieces are concatenated as llama-cli prints them: no leading-space strip and no BPE space clean-up (those need
the whole text); a UTF-8 character split across tokens is held back until it is complete.
"""

from __future__ import annotations

import codecs

from .tokenizer import Tokenizer


class StreamDecoder:
    """Incremental detokenizer; `special` prints CONTROL/UNKNOWN token texts (llama-cli `--special`)."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self._tokenizer = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token: int) -> str:
        """Add one token; return the text completed by it (possibly empty)."""
        return self._utf8.decode(self._tokenizer.token_to_piece(token, self._special))

    def flush(self) -> str:
        """Return what is still held back (an incomplete character becomes U+FFFD) and start afresh."""
        return self._utf8.decode(b"", final=True)
