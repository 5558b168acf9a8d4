"""hotlora.Model: a GGUF model on the C core: weights, tokenizer, loaded adapters, and the context (thread pool,
buffers) that decodes its sequences; its single-sequence methods act on its default sequence."""
from __future__ import annotations

import dataclasses
import os
import time
import weakref
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from ._native import check, ffi, lib
from .adapters import read_adapter_file
from .batching import generate_batch
from .errors import HotLoraError
from .gguf_io import GGUFFile
from .hparams import HParams, read_hparams
from .lora import Adapter
from .sampling import Sampler, SamplerParams
from .sequence import Sequence
from .session import Session
from .system import physical_cores
from .tokenizer import Tokenizer
from .weights import CoreModelDesc

CACHE_TYPES = {"f16": lib.HL_TYPE_F16, "f32": lib.HL_TYPE_F32}
DEFAULT_MODEL_NAME = "hotlora-tiny.gguf"


def default_model_path() -> Path:
    """The small model bundled in hotlora.data (made by data/make_default.py)."""
    return Path(str(resources.files("hotlora.data") / DEFAULT_MODEL_NAME))


def default_adapter_paths() -> list[Path]:
    """The LoRA adapters bundled for the default model, by name."""
    return sorted(default_model_path().parent.glob("*.lora.gguf"))


class Model:
    """A loaded model and one inference context (threads, buffers) with its default sequence (KV cache).

    >>> with Model("model.gguf", n_ctx=512) as m:
    ...     logits = m.eval(m.tokenize("Hello"))   # float32 [n_tokens, n_vocab]

    eval, eval_last, reset, n_past, kv_*, set_adapters, adapters and perf act on the default sequence
    (hotlora.Sequence, default_sequence); sequence() makes more, decoded together by decode_batch.

    repack: projections in the core's repacked layouts where this CPU's kernels for them are faster
    (cli/repack.py; llama.cpp repacks the same way, and --no-repack turns it off as its option does).
    """

    def __init__(self, path: str | os.PathLike | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                 seed: int | None = None, cache_type: str = "f16", n_batch: int = 512, lora_keep_cache: bool = False,
                 repack: bool = True):
        start = time.perf_counter()
        self._model = self._ctx = self._seq = None
        self._loaded: list[Adapter] = []          # in load order
        self._next_adapter_id = 0
        self._sequences: weakref.WeakSet[Sequence] = weakref.WeakSet()  # besides the default one
        self.lora_keep_cache = lora_keep_cache
        self.path = Path(path) if path is not None else default_model_path()
        self._file = GGUFFile(self.path)
        self.tokenizer = Tokenizer.from_reader(self._file.reader, self.path)
        self.hparams: HParams = read_hparams(self._file, self.tokenizer.n_vocab)
        n_threads = n_threads if n_threads is not None else physical_cores()
        self._desc = CoreModelDesc(self._file, self.hparams, repack, n_threads)
        self.seed = seed
        self._n_ctx = self.hparams.n_ctx_train if n_ctx == 0 else n_ctx
        self._n_batch = n_batch
        self._create_core(n_threads, cache_type)
        self._abort_flag = ffi.new("int32_t *")
        lib.hl_set_abort(self._ctx, self._abort_flag)
        self._seq = Sequence.default_of(self)
        self.perf.load_ms = (time.perf_counter() - start) * 1e3

    def _create_core(self, n_threads: int, cache_type: str) -> None:
        if cache_type not in CACHE_TYPES:
            raise HotLoraError(f"cache type '{cache_type}' is not supported (use f16 or f32)")
        for name, value in (("n_ctx", self._n_ctx), ("n_batch", self._n_batch), ("n_threads", n_threads)):
            if value < 1:
                raise HotLoraError(f"{name} must be positive, got {value}")
        model_out = ffi.new("hl_model **")
        check(lib.hl_model_create(self._desc.desc, model_out), str(self.path))
        self._model = model_out[0]
        params = ffi.new("hl_context_params *", {"n_ctx": self._n_ctx, "n_batch": self._n_batch,
                                                 "n_threads": n_threads, "cache_type": CACHE_TYPES[cache_type]})
        ctx_out = ffi.new("hl_context **")
        check(lib.hl_context_create(self._model, params, ctx_out), str(self.path))
        self._ctx = ctx_out[0]
        self.n_threads = n_threads
        self.cache_type = cache_type

    # ---- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        for seq in list(self._sequences):
            seq.close()
        if self._seq is not None:
            self._seq._release()
        if self._ctx is not None:
            lib.hl_context_free(self._ctx)  # and every sequence left, which releases their adapters
            self._ctx = None
        for adapter in self._loaded:
            adapter.free()
        self._loaded = []
        if self._model is not None:
            lib.hl_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    # ---- properties -------------------------------------------------------------------------------
    n_vocab = property(lambda self: self.hparams.n_vocab)
    n_embd = property(lambda self: self.hparams.n_embd)
    n_layer = property(lambda self: self.hparams.n_layer)
    n_ctx = property(lambda self: self._n_ctx)
    n_batch = property(lambda self: self._n_batch)
    file = property(lambda self: self._file)
    """The model's validated GGUF file (hotlora.gguf_io.GGUFFile)."""
    weight_bytes = property(lambda self: sum(t.data.nbytes for t in self._file.tensors.values()))
    """Bytes of all tensors in the file (what one decode step reads, up to the embedding table)."""
    default_sequence = property(lambda self: self._seq)
    """The sequence of the single-sequence methods (hotlora.Sequence; owned by the context, freed with it)."""
    n_past = property(lambda self: self._seq.n_past)
    """Tokens in the default sequence's KV cache (the position of the next token)."""
    perf = property(lambda self: self._seq.perf)
    """The timings: the model's and its adapters' load time, the default sequence's decodes."""

    def _live_ctx(self):
        if self._ctx is None:
            raise HotLoraError("the model is closed")
        return self._ctx

    # ---- tokens -----------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.detokenize(ids)

    # ---- evaluation (the default sequence) ------------------------------------------------------------
    def reset(self) -> None:
        """Empties the KV cache."""
        self._seq.reset()

    def abort(self) -> None:
        """Stops a running evaluation between graph nodes (safe from another thread)."""
        self._abort_flag[0] = 1

    def eval(self, ids) -> np.ndarray:
        """Logits of every token [len(ids), n_vocab] (float32), appended after the cached tokens."""
        return self._seq.eval(ids)

    def eval_last(self, ids) -> np.ndarray:
        """Logits of the last token only [n_vocab]; cheaper than eval() for prompts."""
        return self._seq.eval_last(ids)

    # ---- sequences ------------------------------------------------------------------------------------
    def sequence(self, n_ctx: int | None = None) -> Sequence:
        """A new empty sequence on this model's context (n_ctx cells, default the model's n_ctx), with no
        adapter active; decode it with decode_batch, alone or with other sequences."""
        seq = Sequence(self, self.n_ctx if n_ctx is None else n_ctx)
        self._sequences.add(seq)
        return seq

    def decode_batch(self, segments) -> list[np.ndarray]:
        """One decode of several sequences' tokens together (n_batch tokens at most in all): each segment
        (sequence, tokens, all_logits) appends its tokens to its sequence, under that sequence's adapter set.
        Returns each segment's logits: [n_tokens, n_vocab] with all_logits, else [n_vocab] (its last token).
        A sequence's cached tokens computed under another adapter set are re-evaluated first, alone."""
        segs = [(seq, [int(t) for t in ids], bool(all_logits)) for seq, ids, all_logits in segments]
        for i, (seq, ids, _) in enumerate(segs):
            if not isinstance(seq, Sequence) or seq.model is not self:
                raise HotLoraError(f"decode_batch: segment {i} is not a sequence of this model")
            if not ids:
                raise HotLoraError(f"decode_batch: segment {i} has no token")
            if any(seq is other for other, _, _ in segs[:i]):
                raise HotLoraError(f"decode_batch: segment {i}'s sequence is in an earlier segment too")
        if sum(len(ids) for _, ids, _ in segs) > self.n_batch:
            raise HotLoraError(f"decode_batch: {sum(len(ids) for _, ids, _ in segs)} tokens in all, more than "
                               f"n_batch = {self.n_batch}")
        for seq, ids, _ in segs:
            seq._prepare(len(ids))
        outs = self._run_batch(segs)
        return [out if all_logits else out[0] for out, (_, _, all_logits) in zip(outs, segs)]

    def _run_batch(self, segs: list[tuple[Sequence, list[int], bool]]) -> list[np.ndarray]:
        """One hl_decode_batch of checked segments; each segment's logits [n_out, n_vocab]. On non-finite logits
        the batch is dropped from every sequence, and the first bad segment's sequence finds the node and raises."""
        outs = [np.empty((len(ids) if all_logits else 1, self.n_vocab), np.float32) for _, ids, all_logits in segs]
        tokens = [ffi.new("int32_t[]", ids) for _, ids, _ in segs]
        csegs = ffi.new("hl_segment[]", len(segs))
        for cseg, (seq, ids, all_logits), tok, out in zip(csegs, segs, tokens, outs):
            cseg.seq, cseg.tokens, cseg.n_tokens = seq.handle, tok, len(ids)
            cseg.logits, cseg.all_logits = ffi.cast("float *", ffi.from_buffer(out)), int(all_logits)
        n_before = [seq.n_past for seq, _, _ in segs]
        self._abort_flag[0] = 0
        start = time.perf_counter()
        check(lib.hl_decode_batch(self._live_ctx(), csegs, len(segs)), "decode")
        ms = (time.perf_counter() - start) * 1e3
        bad = [i for i, out in enumerate(outs) if not np.isfinite(out).all()]
        if bad:
            for (seq, _, _), n in zip(segs, n_before):
                seq.keep(n)
            i = bad[0]
            seq, ids, all_logits = segs[i]
            seq._raise_nonfinite(ids, outs[i], all_logits, f" in segment {i} of a batch" if len(segs) > 1 else "")
        for seq, ids, _ in segs:
            seq._decoded(ids, ms)
        return outs

    # ---- KV cache (the default sequence) ----------------------------------------------------------------
    def kv_shift(self, n_keep: int, n_discard: int) -> None:
        """Context shift (Sequence.shift)."""
        self._seq.shift(n_keep, n_discard)

    def kv_keep(self, n: int) -> None:
        """Keeps the first n cached tokens and drops the rest."""
        self._seq.keep(n)

    def kv_state_size(self, n_tokens: int) -> int:
        """Bytes of the KV state of n_tokens cells (0 if n_tokens is not 0..n_ctx)."""
        return self._seq.state_size(n_tokens)

    def kv_state(self) -> tuple[list[int], bytes]:
        """The cached tokens and their KV cells as bytes (for load_kv_state)."""
        return self._seq.state()

    def load_kv_state(self, tokens: list[int], state: bytes) -> None:
        """Replaces the KV cache with tokens and their cells from kv_state() (Sequence.load_state)."""
        self._seq.load_state(tokens, state)

    # ---- adapters ---------------------------------------------------------------------------------
    def load_adapter(self, path: str | os.PathLike) -> Adapter:
        """Loads a GGUF or ggla LoRA adapter, or a PEFT adapter directory (converted in memory), for this model
        (inactive until set_adapters)."""
        start = time.perf_counter()
        file = read_adapter_file(path, self.hparams.arch, self.n_layer, self._file)
        adapter = Adapter(self._next_adapter_id, file, self._model)
        self._next_adapter_id += 1
        self._loaded.append(adapter)
        self.perf.load_ms += (time.perf_counter() - start) * 1e3
        return adapter

    def adapter_problems(self, path: str | os.PathLike) -> list[str]:
        """Every reason an adapter file does not fit this model, pair by pair ([] if it fits)."""
        try:
            file = read_adapter_file(path, self.hparams.arch, self.n_layer)
        except HotLoraError as e:
            return [str(e)]
        problems = []
        for pair in file.pairs:
            try:
                Adapter(-1, dataclasses.replace(file, pairs=[pair]), self._model).free()
            except HotLoraError as e:
                problems.append(str(e))
        return problems

    def set_adapters(self, scales: dict[Adapter, float]) -> None:
        """Makes exactly these adapters active in the default sequence, in this order (Sequence.set_adapters)."""
        self._seq.set_adapters(scales)

    def _adapter_list(self, scales: dict[Adapter, float]):
        """The core's (adapter handles, scales) arrays of an adapter set, checked against this model."""
        for adapter, scale in scales.items():
            if adapter not in self._loaded:
                raise HotLoraError(f"adapter {adapter!r} is not loaded in this model")
            if not np.isfinite(scale):
                raise HotLoraError(f"adapter {adapter.id}: scale {scale} is not finite")
        handles = ffi.new("hl_adapter *[]", [a.handle for a in scales] or [ffi.NULL])
        values = ffi.new("float[]", [float(s) for s in scales.values()] or [0.0])
        return handles, values

    def unload_adapter(self, adapter: Adapter) -> None:
        """Deactivates (if active in the default sequence) and frees an adapter; refused while another
        sequence has it active."""
        if adapter not in self._loaded:
            raise HotLoraError(f"adapter {adapter!r} is not loaded in this model")
        if any(adapter in seq.adapters for seq in self._sequences):
            raise HotLoraError(f"adapter {adapter.id} ({adapter.path}) is active in a sequence; "
                               "remove it from that sequence's adapters first")
        if adapter in self.adapters:
            self.set_adapters({a: s for a, s in self.adapters.items() if a is not adapter})
        adapter.free()
        self._loaded.remove(adapter)

    adapters = property(lambda self: self._seq.adapters)
    """The default sequence's active set with its scales, in application order."""

    @property
    def loaded_adapters(self) -> list[Adapter]:
        return list(self._loaded)

    def _check_graph_request(self, n_tokens: int, layer: int | None) -> None:
        if not 1 <= n_tokens <= self.n_batch:
            raise HotLoraError(f"graph: n_tokens must be 1 to n_batch = {self.n_batch}, got {n_tokens}")
        if layer is not None and not 0 <= layer < self.n_layer:
            raise HotLoraError(f"graph: layer must be 0 to {self.n_layer - 1}, got {layer}")

    def graph_dot(self, n_tokens: int = 1, layer: int | None = 0) -> str:
        """The compute graph of a decode of n_tokens as Graphviz DOT: one block, or all (layer=None)."""
        self._check_graph_request(n_tokens, layer)
        which = -1 if layer is None else layer
        needed = ffi.new("size_t *")
        check(lib.hl_graph_dot(self._live_ctx(), n_tokens, which, ffi.NULL, 0, needed), "graph")
        buf = ffi.new("char[]", needed[0])
        check(lib.hl_graph_dot(self._ctx, n_tokens, which, buf, needed[0], needed), "graph")
        return ffi.string(buf).decode("utf-8")

    def graph_stats(self, n_tokens: int = 1, layer: int | None = 0) -> tuple[int, int]:
        """(nodes, barriers) of the graph of a decode of n_tokens: one block, or all (layer=None)."""
        self._check_graph_request(n_tokens, layer)
        nodes, barriers = ffi.new("int32_t *"), ffi.new("int32_t *")
        check(lib.hl_graph_stats(self._live_ctx(), n_tokens, -1 if layer is None else layer, nodes, barriers),
              "graph")
        return nodes[0], barriers[0]

    # ---- generation -------------------------------------------------------------------------------
    def sampler(self, **sampling) -> Sampler:
        """A sampler for this model; keyword arguments are SamplerParams fields."""
        if self.seed is not None and "seed" not in sampling:
            sampling["seed"] = self.seed
        return Sampler(SamplerParams(**sampling), self.n_vocab, self.tokenizer.eog_ids, self.n_ctx)

    def generate_batch(self, sessions: list[Session], n_predict: int = -1,
                       reverse_prompts: list[str] = ()) -> Iterator[tuple[int, int, str]]:
        """Runs several sessions of this model (each on its own sequence, with tokens fed or queued) together,
        one decode_batch per step (hotlora.batching); yields (session index, token, text piece) as each is
        sampled, until every session stops on its own rules."""
        return generate_batch(self, sessions, n_predict, reverse_prompts)

    def generate(self, prompt: str | list[int], n_predict: int = -1, **sampling) -> Iterator[tuple[int, str]]:
        """Yields (token id, text piece) for each sampled token, from an empty cache.

        Stops after an end-of-generation token (yielded with its piece), after
        n_predict tokens (-1: no limit), or when the context is full.
        """
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise HotLoraError("the prompt is empty")
        session = Session(self, self.sampler(**sampling))
        self.reset()
        session.feed(ids)
        yield from session.steps(n_predict)
