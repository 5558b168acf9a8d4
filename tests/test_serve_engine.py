"""The serving worker (hotlora.server.engine.Engine) without HTTP: requests that reach an idle worker together
share its first step."""
from __future__ import annotations

import threading
import time

import pytest

import hotlora
from factory import write_tiny_model

pytest.importorskip("fastapi", reason="the serve extras install fastapi")
from hotlora.server import engine as engine_module  # noqa: E402
from hotlora.server.engine import Done, Engine, GenerationJob  # noqa: E402
from hotlora.server.registry import Registry  # noqa: E402
from hotlora.server.schemas import CompletionRequest  # noqa: E402


def run_jobs(model: hotlora.Model, prompts: list[list[int]], spacing_s: float) -> int:
    """Submits one 1-token job per prompt, spacing_s apart, to an idle engine; the decode steps it took."""
    engine = Engine(model, Registry(model), "tiny", n_slots=len(prompts))
    done = threading.Semaphore(0)
    try:
        for ids in prompts:
            request = CompletionRequest(prompt=ids, max_tokens=1, temperature=0)
            engine.submit(GenerationJob(ids, request, lambda ev: done.release() if isinstance(ev, Done) else None))
            time.sleep(spacing_s)
        for _ in prompts:
            assert done.acquire(timeout=60)
        return engine.stats.decode_steps
    finally:
        engine.close()


def test_requests_arriving_together_share_the_first_step(tmp_path, monkeypatch):
    """Three requests 20 ms apart (a tiny model's step takes far less): one step when the idle worker waits
    longer than that for the next arrival, three when it waits less."""
    with hotlora.Model(write_tiny_model(tmp_path / "m.gguf"), n_ctx=96, n_threads=1) as model:
        prompts = [[1, 5, 9], [1, 6, 7, 8], [1, 4]]
        monkeypatch.setattr(engine_module, "ARRIVAL_GAP_S", 1.0)
        monkeypatch.setattr(engine_module, "GATHER_LIMIT_S", 5.0)
        assert run_jobs(model, prompts, 0.02) == 1
        monkeypatch.setattr(engine_module, "ARRIVAL_GAP_S", 0.001)
        assert run_jobs(model, prompts, 0.02) == 3
