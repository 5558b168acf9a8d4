"""hotlora.Sequence: one more KV cache on a Model's context, with its own token history and adapter set,
decoded together with other sequences in one batch by Model.decode_batch."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ._native import check, ffi, lib
from .errors import ContextFullError, HotLoraError

if TYPE_CHECKING:
    from .lora import Adapter
    from .model import Model


class Sequence:
    """A sequence of a Model (made by Model.sequence()): its KV cache of n_ctx cells, the tokens in it and
    the adapter set its next tokens are computed under. Freed by close() or with its model."""

    def __init__(self, model: "Model", n_ctx: int):
        self.model = model
        self._history: list[int] = []           # the tokens in the KV cache
        self._active: dict["Adapter", float] = {}
        out = ffi.new("hl_sequence **")
        check(lib.hl_sequence_create(model._live_ctx(), n_ctx, out), "sequence")
        self._handle = out[0]
        self.n_ctx = n_ctx

    @property
    def handle(self):
        if self._handle is None:
            raise HotLoraError("the sequence is closed")
        return self._handle

    n_past = property(lambda self: lib.hl_sequence_used(self.handle))
    """Tokens in the KV cache (the position of the next token)."""
    history = property(lambda self: list(self._history))
    first_stale = property(lambda self: lib.hl_sequence_first_stale(self.handle))
    """The first cached cell computed under another adapter set than the active one (n_past if none)."""
    adapters = property(lambda self: dict(self._active))
    """The active set with its scales, in application order."""

    def close(self) -> None:
        """Frees the KV cache and drops the adapter set (the model's other sequences are unaffected)."""
        if self._handle is not None and self.model._ctx is not None:  # a closed model freed it already
            lib.hl_sequence_free(self._handle)
        self._handle = None
        self._active = {}

    def __del__(self):
        self.close()

    def set_adapters(self, scales: dict["Adapter", float]) -> None:
        """Makes exactly these adapters (loaded in the model) active for this sequence, in this order; {} means
        none. Cached tokens computed under another set are re-evaluated at the next decode (unless the model's
        lora_keep_cache is set)."""
        handles, values = self.model._adapter_list(scales)
        check(lib.hl_sequence_set_adapters(self.handle, handles, values, len(scales)), "set_adapters")
        self._active = {a: float(s) for a, s in scales.items()}

    def reset(self) -> None:
        """Empties the KV cache."""
        self.keep(0)

    def keep(self, n: int) -> None:
        """Keeps the first n cached tokens and drops the rest."""
        check(lib.hl_sequence_keep(self.handle, n), "KV cache")
        del self._history[n:]

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ContextFullError(f"{n} tokens do not fit in the sequence: {self.n_past} of {self.n_ctx} cells used")

    def _recompute_stale(self) -> None:
        """Re-evaluates, alone, the cached tokens computed under another adapter set (unless lora_keep_cache)."""
        stale = self.first_stale
        if self.model.lora_keep_cache or stale >= self.n_past:
            return
        redo = self._history[stale:]
        self.keep(stale)
        for i in range(0, len(redo), self.model.n_batch):
            self.model._decode_segments([(self, redo[i:i + self.model.n_batch], False)])

    def __repr__(self) -> str:
        return f"Sequence(n_past={self.n_past if self._handle is not None else 'closed'}, n_ctx={self.n_ctx})"
