"""`Tokenizer`: text ↔ token ids for the vocabulary of a GGUF file, as llama.cpp does it (tokenizers.md)."""

from __future__ import annotations

import logging
import operator
import os
from typing import Iterable

from gguf import GGUFReader

from hotlora.errors import TokenizerError

from .bpe import bpe_tokenize
from .decode import clean_spaces, full_piece
from .gguf_meta import fields_from_reader, read_fields
from .special import CONTROL, UNKNOWN, partition
from .spm import spm_tokenize
from .vocab import Vocab, load_vocab

log = logging.getLogger("hotlora.tokenizer")


class Tokenizer:
    """The SPM (`llama`) or byte-level BPE (`gpt2`) tokenizer of a GGUF file; only the vocabulary is read."""

    def __init__(self, path: str | os.PathLike):
        self._setup(load_vocab(read_fields(path), str(path)))

    @classmethod
    def from_reader(cls, reader: GGUFReader, path: str | os.PathLike) -> Tokenizer:
        """The tokenizer of an already-open GGUF file; `path` is only used in error messages."""
        tokenizer = cls.__new__(cls)
        tokenizer._setup(load_vocab(fields_from_reader(reader), str(path)))
        return tokenizer

    def _setup(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._pieces: dict[int, bytes] = {}

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.special["bos"]

    @property
    def eos_id(self) -> int | None:
        return self.vocab.special["eos"]

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def eog_ids(self) -> frozenset[int]:
        return self.vocab.eog_ids

    @property
    def model(self) -> str:
        return self.vocab.model

    @property
    def pre(self) -> str:
        return self.vocab.pre

    def is_eog(self, token: int) -> bool:
        """Whether `token` ends generation (§6)."""
        return token in self.vocab.eog_ids

    # -- text -> ids ------------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """llama.cpp's `tokenize(text, add_special=add_bos, parse_special=special)` (§2): BOS if the vocab adds
        one, EOS if it adds one, and special-token texts in `text` become their ids when `special` is set.
        Lone surrogates in `text` are read as U+FFFD."""
        fragments = partition(_without_surrogates(text), self.vocab, special)
        body = self._spm_fragments(fragments) if self.vocab.model == "llama" else self._bpe_fragments(fragments)
        bos = [self._special_id("bos")] if add_bos and self.vocab.add_bos else []
        eos = [self._special_id("eos")] if add_bos and self.vocab.add_eos else []
        if bos and body[:1] == bos:
            log.warning("%s: the prompt starts with 2 BOS tokens: the vocab adds one and the text has one",
                        self.vocab.path)
        return bos + body + eos

    def _spm_fragments(self, fragments: list[str | int]) -> list[int]:
        """§2 step 2: a text fragment gets a prefix space when it is first or follows a special token."""
        out: list[int] = []
        prefix = self.vocab.add_space_prefix
        after_special = True
        for fragment in fragments:
            if isinstance(fragment, int):
                out.append(fragment)
                after_special = True
            else:
                out += spm_tokenize(" " + fragment if prefix and after_special else fragment, self.vocab)
                after_special = False
        return out

    def _bpe_fragments(self, fragments: list[str | int]) -> list[int]:
        """§2 step 3: text fragments are pre-tokenized and merged, token fragments kept."""
        out: list[int] = []
        for fragment in fragments:
            out += [fragment] if isinstance(fragment, int) else bpe_tokenize(fragment, self.vocab)
        return out

    def _special_id(self, name: str) -> int:
        token = self.vocab.special[name]
        if token is None:
            raise TokenizerError(f"{self.vocab.path}: the vocab adds {name.upper()} but has no {name.upper()} token")
        return token

    # -- ids -> text ------------------------------------------------------------------------------------------

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (§7.1); CONTROL and UNKNOWN tokens are empty unless `special`. The bytes may
        be part of a UTF-8 character."""
        self._check(token)
        if not special and self.vocab.types[token] in (CONTROL, UNKNOWN):
            return b""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = full_piece(self.vocab, token)
        return piece

    def detokenize(self, tokens: Iterable[int], special: bool = False) -> str:
        """llama.cpp's `detokenize(tokens, remove_special=False, unparse_special=special)` (§7.2): one leading
        space of the first piece is dropped when the vocab adds a space prefix, and BPE vocabs clean spaces.
        Invalid UTF-8 becomes U+FFFD."""
        pieces = [self.token_to_piece(t, special) for t in tokens]
        if pieces and self.vocab.add_space_prefix and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        text = b"".join(pieces)
        if self.vocab.clean_spaces:
            text = clean_spaces(text)
        return text.decode("utf-8", "replace")

    def _check(self, token: int) -> None:
        if not 0 <= operator.index(token) < self.vocab.n_vocab:
            raise TokenizerError(f"{self.vocab.path}: token id {token} is out of range (n_vocab {self.n_vocab})")

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocab.path!r}, model={self.model!r}, pre={self.pre!r}, n_vocab={self.n_vocab})"


def _without_surrogates(text: str) -> str:
    """`text` with each lone surrogate (e.g. from `surrogateescape`) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
