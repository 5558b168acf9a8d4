"""hotlora.Sequence: one KV cache on a Model's context with everything that belongs to it: the tokens in it, the
adapter set its next tokens are computed under, its room, shift and saved state, its non-finite checks and its
timings. The model's default sequence is one (Model.default_sequence); Model.sequence() makes more, decoded
together in one batch by Model.decode_batch."""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable

import numpy as np

from ._native import check, ffi, lib
from .errors import ContextFullError, HotLoraError, NonFiniteError
from .timings import PerfCounters

if TYPE_CHECKING:
    from .lora import Adapter
    from .model import Model


class Sequence:
    """A sequence of a Model: its KV cache of n_ctx cells, the tokens in it and the adapter set its next tokens
    are computed under. Made by Model.sequence() (freed by close() or with its model), or the model's default
    sequence (freed with the model only)."""

    _handle = None  # until made (a failed constructor leaves nothing to free)
    _owned = False

    def __init__(self, model: "Model", n_ctx: int):
        """A new empty sequence of n_ctx cells on the model's context, with no adapter active."""
        out = ffi.new("hl_sequence **")
        check(lib.hl_sequence_create(model._live_ctx(), n_ctx, out), "sequence")
        self._attach(lambda: model, out[0], n_ctx, owned=True)

    @classmethod
    def default_of(cls, model: "Model") -> "Sequence":
        """The model context's default sequence (made with the context, owned by it); Model makes it once. It
        refers to its model weakly (the model holds it), so that no cycle keeps a dropped model alive."""
        seq = cls.__new__(cls)
        seq._attach(weakref.ref(model), lib.hl_context_sequence(model._live_ctx()), model.n_ctx, owned=False)
        return seq

    def _attach(self, model_ref: Callable[[], "Model"], handle, n_ctx: int, owned: bool) -> None:
        self._model_ref = model_ref
        self._handle = handle
        self._owned = owned
        self.n_ctx = n_ctx
        self._history: list[int] = []             # the tokens in the KV cache
        self._active: dict["Adapter", float] = {}  # the set, in application order
        self.perf = PerfCounters()                 # its decode timings (a batch's time counts for each segment)

    model = property(lambda self: self._model_ref())

    @property
    def handle(self):
        if self._handle is None:
            raise HotLoraError("the sequence is closed" if self._owned else "the model is closed")
        return self._handle

    n_past = property(lambda self: lib.hl_sequence_used(self.handle))
    """Tokens in the KV cache (the position of the next token)."""
    history = property(lambda self: list(self._history))
    first_stale = property(lambda self: lib.hl_sequence_first_stale(self.handle))
    """The first cached cell computed under another adapter set than the active one (n_past if none)."""
    adapters = property(lambda self: dict(self._active))
    """The active set with its scales, in application order."""

    # ---- lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the KV cache and drops the adapter set (the model's other sequences are unaffected). The
        model's default sequence is freed with the model only: close() leaves it alone."""
        if self._owned:
            self._release()

    def _release(self) -> None:
        """Frees the sequence (the model's close() calls it for every sequence, the default one included)."""
        model = self.model
        if self._handle is not None and self._owned and model is not None and model._ctx is not None:
            lib.hl_sequence_free(self._handle)  # a closed model's context freed it already
        self._handle = None
        self._active = {}

    def __del__(self):
        self.close()

    # ---- adapters ---------------------------------------------------------------------------------------
    def set_adapters(self, scales: dict["Adapter", float]) -> None:
        """Makes exactly these adapters (loaded in the model) active for this sequence, applied in this order; {}
        means none. Takes effect at the next evaluated token; cached tokens computed under another set are
        re-evaluated first unless the model's lora_keep_cache is set. Base weights stay put."""
        handles, values = self.model._adapter_list(scales)
        check(lib.hl_sequence_set_adapters(self.handle, handles, values, len(scales)), "set_adapters")
        self._active = {a: float(s) for a, s in scales.items()}

    # ---- the cache --------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empties the KV cache."""
        self.keep(0)

    def keep(self, n: int) -> None:
        """Keeps the first n cached tokens and drops the rest."""
        check(lib.hl_sequence_keep(self.handle, n), "KV cache")
        del self._history[n:]

    def shift(self, n_keep: int, n_discard: int) -> None:
        """Context shift: drops the cached tokens n_keep .. n_keep+n_discard-1; the later ones move down
        n_discard positions (their K re-rotated), so the next token goes at n_past - n_discard."""
        if not (0 <= n_keep and 1 <= n_discard <= self.n_past - n_keep):
            raise HotLoraError(f"context shift: cannot keep {n_keep} tokens and drop {n_discard} of {self.n_past}")
        check(lib.hl_sequence_shift(self.handle, n_keep, n_discard), "context shift")
        del self._history[n_keep:n_keep + n_discard]

    def state_size(self, n_tokens: int) -> int:
        """Bytes of the KV state of n_tokens cells (0 if n_tokens is not 0..n_ctx)."""
        return lib.hl_sequence_state_size(self.handle, n_tokens) if 0 <= n_tokens <= self.n_ctx else 0

    def state(self) -> tuple[list[int], bytes]:
        """The cached tokens and their KV cells as bytes (for load_state)."""
        buf = bytearray(self.state_size(self.n_past))
        check(lib.hl_sequence_state_read(self.handle, ffi.from_buffer(buf), len(buf)), "KV state")
        return list(self._history), bytes(buf)

    def load_state(self, tokens: list[int], state: bytes) -> None:
        """Replaces the KV cache with tokens and their cells from state(), taken as computed under the active
        adapter set (the caller checks that they were)."""
        n_vocab = self.model.n_vocab
        if any(not 0 <= t < n_vocab for t in tokens):
            raise HotLoraError(f"KV state: a token is outside the vocabulary [0, {n_vocab})")
        if not 0 < len(tokens) <= self.n_ctx or len(state) != self.state_size(len(tokens)):
            raise HotLoraError(f"KV state: {len(state)} bytes do not hold {len(tokens)} cells of {self.n_ctx}")
        check(lib.hl_sequence_state_write(self.handle, ffi.from_buffer(state), len(state), len(tokens)), "KV state")
        self._history = [int(t) for t in tokens]

    # ---- evaluation ---------------------------------------------------------------------------------------
    def eval(self, ids) -> np.ndarray:
        """Logits of every token [len(ids), n_vocab] (float32), appended after the cached tokens."""
        ids = [int(t) for t in ids]
        self._prepare(len(ids))
        step = self.model.n_batch
        chunks = [self.model._run_batch([(self, ids[i:i + step], True)])[0] for i in range(0, len(ids), step)]
        return np.concatenate(chunks) if chunks else np.empty((0, self.model.n_vocab), np.float32)

    def eval_last(self, ids) -> np.ndarray:
        """Logits of the last token only [n_vocab]; cheaper than eval() for prompts."""
        ids = [int(t) for t in ids]
        if not ids:
            raise HotLoraError("eval_last needs at least one token")
        self._prepare(len(ids))
        step, logits = self.model.n_batch, None
        for i in range(0, len(ids), step):
            logits = self.model._run_batch([(self, ids[i:i + step], False)])[0]
        return logits[0]

    def _prepare(self, n: int) -> None:
        """Before n more tokens: stale cells recomputed, then room for the n checked."""
        self._recompute_stale()
        if self.n_past + n > self.n_ctx:
            where = "sequence" if self._owned else "context"
            raise ContextFullError(f"{n} tokens do not fit in the {where}: {self.n_past} of {self.n_ctx} cells used")

    def _recompute_stale(self) -> None:
        """Re-evaluates, alone, the cached tokens computed under another adapter set (unless lora_keep_cache)."""
        stale = self.first_stale
        if self.model.lora_keep_cache or stale >= self.n_past:
            return
        redo = self._history[stale:]
        self.keep(stale)
        step = self.model.n_batch
        for i in range(0, len(redo), step):
            self.model._run_batch([(self, redo[i:i + step], False)])

    def _decoded(self, ids: list[int], ms: float) -> None:
        """Takes a decoded segment's tokens into the history and its time into the timings (>1 token: prompt)."""
        self._history.extend(ids)
        if len(ids) > 1:
            self.perf.prompt_ms += ms
            self.perf.prompt_n += len(ids)
        else:
            self.perf.eval_ms += ms
            self.perf.eval_n += 1

    def _raise_nonfinite(self, ids: list[int], out: np.ndarray, all_logits: bool, where: str) -> None:
        """After a batch gave this sequence's segment non-finite logits (out) and its cells were restored:
        recomputes the segment alone node by node to find where NaN/inf first appeared, and raises."""
        bad_row = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        position = self.n_past + (bad_row if all_logits else len(ids) - 1)
        first_pos, name = ffi.new("int32_t *"), ffi.new("char[]", 128)
        check(lib.hl_find_nonfinite(self.handle, ffi.new("int32_t[]", ids), len(ids),
                                    ffi.cast("float *", ffi.from_buffer(out)), int(all_logits), first_pos, name, 128),
              "decode")
        found = (f"; first non-finite node: {ffi.string(name).decode()} at position {first_pos[0]}"
                 if first_pos[0] >= 0 else "; no graph node could be found non-finite on recomputing")
        raise NonFiniteError(f"{self.model.path}: non-finite logits (NaN or infinity){where} at token position "
                             f"{position}{found}")

    def __repr__(self) -> str:
        return f"Sequence(n_past={self.n_past if self._handle is not None else 'closed'}, n_ctx={self.n_ctx})"
