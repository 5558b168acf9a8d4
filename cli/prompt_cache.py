"""Prompt cache files: llama-cli's `--prompt-cache` session files, in hotlora's own format.

A file holds the tokens of a cached prompt (and, with --prompt-cache-all, of the generated text) and
their KV cells. It is reused when its tokens are a prefix of the new prompt and its key matches: the key
is a SHA-256 over

* the model: its GGUF header (metadata and tensor table, hashed whole) and three 256-byte windows of
  every tensor's data (start, middle, end). Hashing every weight would cost seconds per run on a large
  model; a retrained or requantized model changes the sampled bytes, but an edit that changes no header
  byte and no sampled byte goes unnoticed;
* the adapter set, in application order: every pair's tensor bytes (hashed whole: adapters are small),
  shapes, types and alpha / rank scale, and the user scale, so a cache is never reused under other
  adapters or scales;
* the KV layout: cache type, layers and bytes per cell.

Layout (little-endian): HEADER (magic, version, key, token count, state bytes, SHA-256 of what follows),
then the tokens (int32 each), then the state of Model.kv_state(). As llama-cli, a damaged file (wrong
magic, truncated, failed checksum) is an error, and the file is left alone; a cache of ours made under
another key or version, or longer than the context, gets a one-line warning, is recomputed and, unless
read-only, replaced. Files are written to a temporary file in the same folder and renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import HotLoraError
from .output_file import atomic_output

if TYPE_CHECKING:
    from .model import Model

MAGIC = b"HLPCACHE"
VERSION = 1
HEADER = struct.Struct("<8sI32sIQ32s")  # magic, version, key, n_tokens, state bytes, sha256(tokens + state)
WINDOW = 256                            # bytes hashed at the start, middle and end of each model tensor


def _model_digest(model: Model) -> bytes:
    reader = model.file.reader
    h = hashlib.sha256(reader.data[:reader.data_offset].tobytes())
    for name, info in model.file.tensors.items():
        data, mid = info.data, max(0, (info.data.size - WINDOW) // 2)
        h.update(name.encode())
        for start in (0, mid, max(0, data.size - WINDOW)):
            h.update(data[start:start + WINDOW].tobytes())
    return h.digest()


def _adapters_digest(model: Model) -> bytes:
    h = hashlib.sha256()
    for adapter, user_scale in model.adapters.items():
        h.update(struct.pack("<d", user_scale) + adapter.content_digest)
    return h.digest()


def cache_key(model: Model) -> bytes:
    """What a cached state depends on: the model, the active adapter set and the KV layout."""
    layout = f"{model.cache_type}|{model.n_layer}|{model.kv_state_size(1)}".encode()
    return hashlib.sha256(_model_digest(model) + _adapters_digest(model) + layout).digest()


def _checksum(tokens: bytes, state: bytes) -> bytes:
    return hashlib.sha256(tokens + state).digest()


class PromptCache:
    """One --prompt-cache file for one run: restore() before the prompt, save() after it (and at the end)."""

    def __init__(self, path: Path, save_all: bool = False, read_only: bool = False,
                 log: Callable[[str], None] = sys.stderr.write):
        self.path, self.save_all, self.read_only, self.log = Path(path), save_all, read_only, log
        self.prompt_matched = False  # the whole prompt came from the file: nothing new to save
        if not read_only and not self.path.parent.is_dir():
            raise HotLoraError(f"cannot write prompt cache '{self.path}' (no folder {self.path.parent})")

    def _fail(self, why: str) -> HotLoraError:
        return HotLoraError(f"failed to load prompt cache '{self.path}': {why}")

    def _read(self, model: Model, key: bytes) -> tuple[list[int], bytes] | None:
        """The file's tokens and state; None (with a warning) if it was made under other conditions."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(HEADER.size)
                if len(head) < HEADER.size or head[:8] != MAGIC:
                    raise self._fail("not a hotlora prompt cache")
                _, version, file_key, n_tokens, n_state, checksum = HEADER.unpack(head)
                if version != VERSION or file_key != key or not 0 < n_tokens <= model.n_ctx:
                    why = (f"version {version}, not {VERSION}" if version != VERSION else
                           "another model, adapter set or cache type" if file_key != key else
                           f"{n_tokens} tokens for a context of {model.n_ctx}")
                    self.log(f"main: warning: prompt cache '{self.path}' was made with {why}; recomputing\n")
                    return None
                if n_state != model.kv_state_size(n_tokens):
                    raise self._fail(f"{n_state} state bytes for {n_tokens} tokens, expected "
                                     f"{model.kv_state_size(n_tokens)}")
                if os.fstat(f.fileno()).st_size != HEADER.size + 4 * n_tokens + n_state:
                    raise self._fail("truncated, or bytes after the end")
                raw_tokens, state = f.read(4 * n_tokens), f.read(n_state)
        except OSError as e:
            raise self._fail(e.strerror or str(e)) from None
        if _checksum(raw_tokens, state) != checksum:
            raise self._fail("checksum mismatch (the file is damaged)")
        tokens = np.frombuffer(raw_tokens, dtype="<i4").tolist()
        if any(not 0 <= t < model.n_vocab for t in tokens):
            raise self._fail(f"a token is outside the vocabulary [0, {model.n_vocab})")
        return tokens, state

    def restore(self, model: Model, prompt: list[int]) -> int:
        """Loads the file's matching prefix of the prompt into the model's (empty) cache; returns its length,
        at most len(prompt) - 1 so that the last prompt token is evaluated for its logits."""
        self.prompt_matched = False
        if not self.path.exists():
            self.log("main: session file does not exist, will create.\n")
            return 0
        cached = self._read(model, cache_key(model))
        if cached is None:
            return 0
        tokens, state = cached
        n_match = next((i for i, (a, b) in enumerate(zip(tokens, prompt)) if a != b), min(len(tokens), len(prompt)))
        self.prompt_matched = n_match == len(prompt)
        self.log(f"main: loaded a session with prompt size of {len(tokens)} tokens\n")
        self.log(f"main: session file matches {n_match} / {len(prompt)} tokens of prompt\n")
        n_reuse = min(n_match, len(prompt) - 1)
        if n_reuse == 0:
            return 0
        model.load_kv_state(tokens, state)
        model.kv_keep(n_reuse)
        return n_reuse

    def save(self, model: Model, final: bool) -> None:
        """Writes the model's cached tokens and state: after the prompt (unless the file already held it all)
        and, with save_all, at the end of the run (final). Nothing when read-only."""
        if self.read_only or (final and not self.save_all) or (not final and self.prompt_matched):
            return
        tokens, state = model.kv_state()
        raw_tokens = np.asarray(tokens, dtype="<i4").tobytes()
        head = HEADER.pack(MAGIC, VERSION, cache_key(model), len(tokens), len(state), _checksum(raw_tokens, state))
        with atomic_output(self.path) as tmp:
            tmp.write_bytes(head + raw_tokens + state)
