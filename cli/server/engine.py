"""The generation worker: one thread owns the model and runs every job the HTTP side submits, batching the
requests in flight into one decode per step (continuous batching), whatever their adapters.

Each slot is a `Sequence` of the model (its own KV cache of n_ctx / n_slots cells and adapter set). Between
steps the worker runs queued model work (adapter loading, listings), admits waiting requests into free slots
(the slot whose cached tokens share the longest prefix with the prompt), and retires finished ones. A step is one
`Model.decode_batch`: each slot contributes its next prompt chunk or its last sampled token, under its own
adapter set (the core groups the tokens by adapter). A cached prefix is reused only under adapters of the same
content (their sha256, so an adapter unloaded and loaded again under another name still finds its cache, and a
different file loaded under an old name never does) and the same scales: cells computed under another set are
recomputed first (the sequences' cell signatures, keyed on the same digests).

A generation job streams `Piece` events and ends with one `Done` or `Failed` event, through its `emit` callback.
"""
from __future__ import annotations

import collections
import concurrent.futures
import queue
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import HotLoraError
from ..model import Model
from ..sampling import Sampler
from ..sequence import Sequence
from ..timings import PerfCounters, timings_json
from ..tokenizer import StreamDecoder
from .errors import APIError
from .registry import Registry


# An idle worker woken by a request waits this long for another (clients that start together reach it a
# millisecond or so apart, each request parsed in turn by the HTTP thread), GATHER_LIMIT_S at most in all.
ARRIVAL_GAP_S = 0.005
GATHER_LIMIT_S = 0.02


@dataclass
class Piece:
    text: str


@dataclass
class Done:
    text: str                # the whole completion, stop string excluded
    finish_reason: str       # "stop" (end of generation or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    timings: dict


@dataclass
class Failed:
    error: APIError


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    request: object          # a schemas.Sampling: sampling fields, limits, adapters
    emit: Callable[[object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = float("inf")  # time.monotonic() after which generation stops with 408


@dataclass
class Stats:
    prompt_tokens_total: int = 0
    tokens_predicted_total: int = 0
    requests_total: int = 0
    decode_steps: int = 0


@dataclass
class Running:
    """One request in a slot: what is left to feed, its sampler, its text so far and its counters."""
    job: GenerationJob
    entries: list            # registry entries in use
    sampler: Sampler
    decoder: StreamDecoder
    stops: "StopScanner"
    to_feed: list[int]       # prompt tokens not evaluated yet, or the last sampled token
    limit: int               # tokens to generate (-1: until the end or a full slot)
    n_prompt_fed: int        # prompt tokens evaluated (those not reused from the slot's cache)
    start: float = field(default_factory=time.perf_counter)
    first_token_at: float = 0.0
    n_generated: int = 0


class Engine:
    def __init__(self, model: Model, registry: Registry, base_name: str, n_slots: int = 1):
        self.model, self.registry, self.base_name = model, registry, base_name
        self.stats = Stats()
        self.slot_ctx = model.n_ctx // n_slots
        if self.slot_ctx < 8:
            raise HotLoraError(f"--ctx-size {model.n_ctx} over --parallel {n_slots} leaves {self.slot_ctx} cells "
                               f"per slot; give each slot at least 8")
        self.slots: list[Sequence] = [model.sequence(self.slot_ctx) for _ in range(n_slots)]
        # per slot, the (content digest, scale) list its cached tokens were computed under (kept when an unload
        # drops the adapter from the idle slot's set: the cells stay valid under the same content)
        self._cached_under: list[list[tuple[bytes, float]]] = [[] for _ in range(n_slots)]
        self.running: dict[int, Running] = {}        # slot index -> its request
        self._waiting: collections.deque = collections.deque()
        self._calls: queue.Queue = queue.Queue()      # (fn, future); (None, None) stops the worker
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="hotlora-engine", daemon=True)
        self._thread.start()

    # ---- the HTTP side's entry points ---------------------------------------------------------------------
    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Runs fn on the worker thread between two decode steps."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        return future

    def submit(self, job: GenerationJob) -> None:
        self._calls.put((job, None))

    def unload_adapter(self, name: str) -> None:
        """vLLM's unload_lora_adapter (on the worker): refused while a request uses the adapter; idle slots whose
        cached set holds it drop it first (their cells then count as stale)."""
        entry = self.registry.by_name(name)
        if entry is not None and not entry.in_use:
            for seq in self.slots:
                if entry.adapter in seq.adapters:
                    seq.set_adapters({a: s for a, s in seq.adapters.items() if a is not entry.adapter})
        self.registry.unload(name)

    def queued(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        self._calls.put((None, None))
        self._thread.join()
        for seq in self.slots:
            seq.close()

    # ---- the worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping:
            self._take_calls(block=not self.running and not self._waiting)
            self._admit()
            if self.running:
                self._step()

    def _take_calls(self, block: bool) -> None:
        """Runs the queued calls and queues the jobs; when idle (block), waits for the first. A job that wakes
        the idle worker is followed for ARRIVAL_GAP_S by any other, so that clients that start together share
        the first step (their prompts in one batch, their decodes starting together)."""
        gather_until = None
        while True:
            try:
                fn, future = self._next_call(block, gather_until)
            except queue.Empty:
                return
            if block and isinstance(fn, GenerationJob):
                gather_until = time.monotonic() + GATHER_LIMIT_S
            block = False
            if fn is None:
                self._stopping = True
                return
            if isinstance(fn, GenerationJob):
                self._waiting.append(fn)
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller, who turns it into a response
                    future.set_exception(e)

    def _next_call(self, block: bool, gather_until: float | None):
        """The next queued (fn, future): waited for when idle (block) or while gathering (until gather_until),
        else only if one is queued (queue.Empty if none)."""
        if block:
            return self._calls.get()
        wait = min(ARRIVAL_GAP_S, gather_until - time.monotonic()) if gather_until is not None else 0.0
        return self._calls.get(timeout=wait) if wait > 0 else self._calls.get_nowait()

    def _admit(self) -> None:
        """Starts waiting jobs in free slots."""
        while self._waiting and len(self.running) < len(self.slots):
            job = self._waiting.popleft()
            if job.cancelled.is_set():
                continue
            self._guarded(job, lambda: self._start(job))

    def _guarded(self, job: GenerationJob, fn) -> None:
        """Runs fn; any error ends the job with a Failed event (and frees its slot), never the worker."""
        try:
            fn()
        except APIError as e:
            self._fail(job, e)
        except HotLoraError as e:
            self._fail(job, APIError(500, str(e)))
        except Exception as e:  # a bug: the request still gets an answer, and the log one line
            sys.stderr.write(f"error: request failed: {type(e).__name__}: {e}\n")
            self._fail(job, APIError(500, f"internal error ({type(e).__name__}: {e})"))

    def _fail(self, job: GenerationJob, error: APIError) -> None:
        for slot, run in list(self.running.items()):
            if run.job is job:
                self._retire(slot)
        job.emit(Failed(error))

    def _content(self, scales: dict[int, float]) -> list[tuple[bytes, float]]:
        """What a set of adapter scales computes: (content digest, scale) in order, scale 0 left out."""
        return [(self.registry.entries[i].adapter.content_digest, s) for i, s in scales.items() if s != 0]

    def _reusable(self, slot: int, ids: list[int], scales: dict[int, float]) -> int:
        """Cached tokens of a free slot that a prompt under these adapter scales can reuse: its cache was made
        under adapters of the same content (digests, whatever their ids or names) and scales, in the same order."""
        same = self._cached_under[slot] == self._content(scales)
        return _common_prefix(self.slots[slot].history, ids) if same else 0

    def _start(self, job: GenerationJob) -> None:
        """Puts a job in the free slot whose cache it reuses most (same tokens under the same adapters)."""
        request = job.request
        scales = self.registry.scales_for(request.lora, request.model, self.base_name)
        self._check_prompt(job.prompt_ids)
        free = [i for i in range(len(self.slots)) if i not in self.running]
        slot = max(free, key=lambda i: self._reusable(i, job.prompt_ids, scales))
        seq = self.slots[slot]
        entries = [self.registry.entries[i] for i in scales]
        seq.set_adapters({e.adapter: scales[e.adapter.id] for e in entries})
        self._cached_under[slot] = self._content(scales)
        # cells made under another adapter set are not reused: the prompt's rest is fed in the batch (recomputing
        # them alone, as decode_batch would, would stall every other slot)
        n_cached = min(_common_prefix(seq.history, job.prompt_ids), seq.first_stale, len(job.prompt_ids) - 1)
        seq.keep(n_cached)
        seed = request.seed if request.seed not in (None, -1) else secrets.randbits(32)
        sampler = self.model.sampler(**vars(request.sampler_params(seed)))
        for token in job.prompt_ids:
            sampler.accept(token)
        limit = request.token_limit()
        if limit == 0:  # nothing to generate: no decode at all
            job.emit(Done("", "length", len(job.prompt_ids), 0, timings_json(PerfCounters())))
            return
        for entry in entries:
            entry.in_use += 1
        self.running[slot] = Running(job, entries, sampler, StreamDecoder(self.model.tokenizer),
                                     StopScanner(request.stop), job.prompt_ids[n_cached:], limit,
                                     len(job.prompt_ids) - n_cached)

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise APIError(400, "prompt: empty after tokenization")
        limit = self.slot_ctx - 4
        if len(ids) > limit:
            raise APIError(400, f"prompt: {len(ids)} tokens, more than a slot's context allows ({limit})")
        bad = next((t for t in ids if not 0 <= t < self.model.n_vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary (0..{self.model.n_vocab - 1})")

    def _step(self) -> None:
        """One decode of every running slot's next tokens (prompt chunks share n_batch), then sampling."""
        budget, segments, fed = self.model.n_batch, [], {}
        for slot, run in self.running.items():
            if run.job.cancelled.is_set() or time.monotonic() > run.job.deadline or budget == 0:
                continue
            chunk = run.to_feed[:budget]
            budget -= len(chunk)
            segments.append((self.slots[slot], chunk, False))
            fed[slot] = len(chunk)
        self._drop_cancelled()
        if not segments:
            return
        try:
            logits = self.model.decode_batch(segments)
        except Exception as e:  # HotLoraError (e.g. non-finite logits) or a bug: the batch's requests end, not the worker
            message = str(e) if isinstance(e, HotLoraError) else f"internal error ({type(e).__name__}: {e})"
            for slot in list(fed):
                self._fail(self.running[slot].job, APIError(500, message))
            return
        self.stats.decode_steps += 1
        for (slot, n), row in zip(fed.items(), logits):
            run = self.running[slot]
            run.to_feed = run.to_feed[n:]
            if run.to_feed:
                continue  # more of the prompt next step
            self._guarded(run.job, lambda: self._sample(slot, run, row))

    def _drop_cancelled(self) -> None:
        for slot, run in list(self.running.items()):
            if run.job.cancelled.is_set():
                self._retire(slot)
            elif time.monotonic() > run.job.deadline:
                self._fail(run.job, APIError(408, "the request ran past the server's --timeout"))

    def _sample(self, slot: int, run: Running, logits: np.ndarray) -> None:
        if not run.first_token_at:
            run.first_token_at = time.perf_counter()
        token = run.sampler.sample(logits)
        run.sampler.accept(token)
        run.n_generated += 1
        eog = self.model.tokenizer.is_eog(token)
        piece = "" if eog else run.decoder.push(token)
        safe, stopped = run.stops.push(piece)
        if safe:
            run.job.emit(Piece(safe))
        full = self.slots[slot].n_past + 1 >= self.slot_ctx
        if stopped or eog or run.n_generated == run.limit or full:
            if not stopped:  # what the decoder and the stop scanner still hold
                rest, stopped = run.stops.push(run.decoder.flush())
                rest += "" if stopped else run.stops.flush()
                if rest:
                    run.job.emit(Piece(rest))
            self._finish(slot, run, "stop" if stopped or eog else "length")
        else:
            run.to_feed = [token]

    def _finish(self, slot: int, run: Running, reason: str) -> None:
        perf = PerfCounters(prompt_ms=(run.first_token_at - run.start) * 1e3, prompt_n=run.n_prompt_fed,
                            eval_ms=(time.perf_counter() - run.first_token_at) * 1e3, eval_n=run.n_generated - 1,
                            sample_ms=run.sampler.sample_ms, sample_n=run.sampler.n_accept,
                            total_ms=(time.perf_counter() - run.start) * 1e3)
        self.stats.requests_total += 1
        self.stats.prompt_tokens_total += len(run.job.prompt_ids)
        self.stats.tokens_predicted_total += run.n_generated
        self._retire(slot)
        run.job.emit(Done(run.stops.text, reason, len(run.job.prompt_ids), run.n_generated, timings_json(perf)))

    def _retire(self, slot: int) -> None:
        run = self.running.pop(slot)
        for entry in run.entries:
            entry.in_use -= 1


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class StopScanner:
    """Finds stop strings in streamed text: releases only text that cannot be the start of a stop string, and
    cuts the completion at the first stop string (which is not part of the output, as OpenAI's API)."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.text = ""     # the completion so far, up to any stop string
        self._held = ""    # text not released yet

    def push(self, piece: str) -> tuple[str, bool]:
        """(text that may be released now, whether a stop string was found)."""
        pending = self._held + piece
        hits = [(pending.find(s), s) for s in self.stops if s in pending]
        if hits:
            cut = min(hits)[0]
            self.text += pending[:cut]
            self._held = ""
            return pending[:cut], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
        release = pending[:len(pending) - keep]
        self._held = pending[len(pending) - keep:]
        self.text += release
        return release, False

    def flush(self) -> str:
        """The held text, once generation ended without a stop string."""
        held, self._held = self._held, ""
        self.text += held
        return held
