"""The generation worker: one thread owns the model and runs, in arrival order, every job the HTTP side submits.

A generation job streams `Piece` events and ends with one `Done` or `Failed` event, delivered through its
`emit` callback (the HTTP side hands them to its event loop). The KV cache is kept between jobs: a job whose
prompt starts with the cached tokens evaluates only the rest, and cells computed under another adapter set
are recomputed first (the model's cell signatures), so a cached prefix is reused only under the same adapters
and scales. Model work of other kinds (adapter loading, tokenizing) runs on the same thread through `call`.

This engine runs one sequence at a time: concurrent requests queue (`requests_deferred` in /metrics).
"""
from __future__ import annotations

import concurrent.futures
import queue
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import HotLoraError
from ..model import Model
from ..session import Session
from ..timings import PerfCounters, timings_json
from .errors import APIError
from .registry import Registry


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
    processing: int = 0


class Engine:
    def __init__(self, model: Model, registry: Registry, base_name: str):
        self.model, self.registry, self.base_name = model, registry, base_name
        self.stats = Stats()
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="hotlora-engine", daemon=True)
        self._thread.start()

    # ---- the worker ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            fn, future = self._jobs.get()
            if fn is None:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller, who turns it into a response
                    future.set_exception(e)

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Runs fn on the worker thread after the jobs before it."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def queued(self) -> int:
        return self._jobs.qsize()

    def close(self) -> None:
        self._jobs.put((None, None))
        self._thread.join()

    def submit(self, job: GenerationJob) -> concurrent.futures.Future:
        return self.call(lambda: self._run(job))

    # ---- one generation ---------------------------------------------------------------------------------
    def _run(self, job: GenerationJob) -> None:
        if job.cancelled.is_set():
            return
        try:
            scales = self.registry.scales_for(job.request.lora, job.request.model, self.base_name)
            self._check_prompt(job.prompt_ids)
        except APIError as e:
            job.emit(Failed(e))
            return
        entries = [self.registry.entries[i] for i in scales]
        for entry in entries:
            entry.in_use += 1
        self.stats.processing = 1
        try:
            job.emit(self._generate(job, {e.adapter: scales[e.adapter.id] for e in entries}))
        except APIError as e:
            job.emit(Failed(e))
        except HotLoraError as e:
            job.emit(Failed(APIError(500, str(e))))
        except Exception as e:  # a bug: the request still gets an answer, and the log one line
            sys.stderr.write(f"error: request failed: {type(e).__name__}: {e}\n")
            job.emit(Failed(APIError(500, f"internal error ({type(e).__name__}: {e})")))
        finally:
            for entry in entries:
                entry.in_use -= 1
            self.stats.processing = 0

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise APIError(400, "prompt: empty after tokenization")
        limit = self.model.n_ctx - 4
        if len(ids) > limit:
            raise APIError(400, f"prompt: {len(ids)} tokens, more than the context allows ({limit})")
        bad = next((t for t in ids if not 0 <= t < self.model.n_vocab), None)
        if bad is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary (0..{self.model.n_vocab - 1})")

    def _reuse_prefix(self, ids: list[int]) -> int:
        """Keeps the cached tokens this prompt starts with (at least its last token is evaluated again)."""
        cached = self.model.cached_tokens
        n = 0
        while n < min(len(cached), len(ids) - 1) and cached[n] == ids[n]:
            n += 1
        self.model.kv_keep(n)
        return n

    def _generate(self, job: GenerationJob, adapters: dict) -> Done:
        request, start = job.request, time.perf_counter()
        self.model.set_adapters(adapters)
        self.model.perf = PerfCounters()
        seed = request.seed if request.seed not in (None, -1) else secrets.randbits(32)
        session = Session(self.model, self.model.sampler(**vars(request.sampler_params(seed))))
        session.feed(job.prompt_ids, self._reuse_prefix(job.prompt_ids))
        stops = StopScanner(request.stop)
        finish, n_generated = "length", 0
        for _token, piece in session.steps(request.token_limit()):
            n_generated += 1
            if job.cancelled.is_set():
                break
            if time.monotonic() > job.deadline:
                raise APIError(408, "the request ran past the server's --timeout")
            safe, stopped = stops.push(piece)
            if safe:
                job.emit(Piece(safe))
            if stopped:
                finish = "stop"
                break
        if session.stop == "eog":
            finish = "stop"
        tail = stops.flush() if finish != "stop" or session.stop == "eog" else ""
        if tail:
            job.emit(Piece(tail))
        self.model.perf.total_ms = (time.perf_counter() - start) * 1e3
        self.model.perf.add_sampling(session.sampler.sample_ms, session.sampler.n_accept)
        self.stats.requests_total += 1
        self.stats.prompt_tokens_total += len(job.prompt_ids)
        self.stats.tokens_predicted_total += n_generated
        return Done(stops.text, finish, len(job.prompt_ids), n_generated, timings_json(self.model.perf))


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
