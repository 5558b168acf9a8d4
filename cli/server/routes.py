"""The ASGI app: llama-server's and OpenAI's endpoints over one Engine (cli-surface.md §7).

Every error is llama-server's JSON shape with a 4xx/5xx code; a request body over the limit is a 413; with an
API key, every endpoint but /health needs `Authorization: Bearer KEY`. A streaming client that disconnects
stops its generation.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.datastructures import Headers

from .. import __version__
from ..chat_template import ChatTemplate, tokenize_rendered
from ..errors import HotLoraError
from . import responses
from .engine import Done, Engine, Failed, GenerationJob, Piece
from .errors import APIError
from .metrics import metrics_text
from .schemas import (ChatRequest, CompletionRequest, DetokenizeRequest, LoadAdapterRequest, LoraScale, Sampling,
                      TokenizeRequest, UnloadAdapterRequest)


@dataclass
class ServerSettings:
    model_name: str        # what /v1/models calls the base
    api_key: str | None
    max_body_bytes: int
    timeout_s: float
    chat_template: ChatTemplate | None  # None: chat completions are refused (501)


def create_app(engine: Engine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="hotlora", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.settings = engine, settings
    _install_guards(app, settings)
    _install_info_routes(app)
    _install_adapter_routes(app)
    _install_generation_routes(app)
    return app


# ---- guards and errors ---------------------------------------------------------------------------------------

def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


class Guard:
    """The API key and body-size checks, as a plain ASGI middleware: Starlette's BaseHTTPMiddleware would pass
    every chunk of a streamed response through a task and a memory stream of its own."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await _error(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope) -> APIError | None:
        headers, settings = Headers(scope=scope), self.settings
        if settings.api_key and scope["path"] != "/health":
            if headers.get("authorization", "") != f"Bearer {settings.api_key}":
                return APIError(401, "Invalid API Key")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return APIError(413, f"request body over {settings.max_body_bytes} bytes")
        return None


def _install_guards(app: FastAPI, settings: ServerSettings) -> None:
    app.add_middleware(Guard, settings=settings)
    app.add_exception_handler(APIError, lambda request, e: _error(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(APIError(400, f"the body is not valid JSON ({first.get('msg', '')})"))
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(APIError(400, f"{where}: {first.get('msg', 'invalid')}"))


def _token_text(tok, token: int | None) -> str:
    return "" if token is None else tok.token_to_piece(token, special=True).decode("utf-8", "replace")


async def _on_engine(request: Request, fn):
    """Runs fn on the engine's thread (the model's owner) and awaits it; a refusal from the model is a 400."""
    try:
        return await asyncio.wrap_future(request.app.state.engine.call(fn))
    except HotLoraError as e:
        raise APIError(400, str(e)) from None


# ---- information -----------------------------------------------------------------------------------------------

def _install_info_routes(app: FastAPI) -> None:
    engine: Engine = app.state.engine
    settings: ServerSettings = app.state.settings
    model = engine.model

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    @app.get("/models")
    async def models(request: Request):
        names = [settings.model_name] + await _on_engine(request, lambda: [e.name for e in engine.registry.entries.values()])
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "hotlora"} for n in names]}

    @app.get("/props")
    async def props():
        tok = model.tokenizer
        return {"default_generation_settings": {"n_ctx": engine.slot_ctx, "params": Sampling().model_dump(exclude={"lora"})},
                "total_slots": len(engine.slots), "model_path": str(model.path),
                "chat_template": settings.chat_template.text if settings.chat_template else "",
                "bos_token": _token_text(tok, tok.bos_id), "eos_token": _token_text(tok, tok.eos_id),
                "build_info": f"hotlora {__version__}"}

    @app.get("/slots")
    async def slots():
        return [{"id": i, "n_ctx": engine.slot_ctx, "is_processing": i in engine.running}
                for i in range(len(engine.slots))]

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(metrics_text(engine), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        ids = await asyncio.to_thread(model.tokenize, body.content, body.add_special, True)
        if body.with_pieces:
            return {"tokens": [{"id": t, "piece": model.detokenize([t])} for t in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        bad = next((t for t in body.tokens if not 0 <= t < model.n_vocab), None)
        if bad is not None:
            raise APIError(400, f"tokens: id {bad} is outside the vocabulary (0..{model.n_vocab - 1})")
        return {"content": model.detokenize(body.tokens)}


# ---- adapters ----------------------------------------------------------------------------------------------------

def _install_adapter_routes(app: FastAPI) -> None:
    registry = app.state.engine.registry

    @app.get("/lora-adapters")
    async def list_adapters(request: Request):
        return await _on_engine(request, registry.listing)

    @app.post("/lora-adapters")
    async def set_adapters(request: Request):
        items = await _json(request)
        if not isinstance(items, list):
            raise APIError(400, "Request body must be an array")
        try:
            parsed = [LoraScale.model_validate(item) for item in items]
        except ValueError as e:
            raise APIError(400, f"invalid adapter entry: {' '.join(str(e).split())}") from None
        await _on_engine(request, lambda: registry.set_global(parsed))
        return {"success": True}

    @app.post("/v1/load_lora_adapter")
    async def load_adapter(body: LoadAdapterRequest, request: Request):
        entry = await _on_engine(request, lambda: registry.load_from_dir(body.lora_name, body.lora_path))
        return {"success": True, "id": entry.adapter.id, "name": entry.name}

    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(body: UnloadAdapterRequest, request: Request):
        await _on_engine(request, lambda: request.app.state.engine.unload_adapter(body.lora_name))
        return {"success": True}


async def _json(request: Request):
    try:
        return json.loads(await request.body())
    except ValueError as e:
        raise APIError(400, f"the body is not valid JSON ({e})") from None


# ---- generation --------------------------------------------------------------------------------------------------

def _install_generation_routes(app: FastAPI) -> None:
    settings: ServerSettings = app.state.settings

    @app.post("/v1/completions")
    async def openai_completion(body: CompletionRequest, request: Request):
        rid, name = responses.new_id("cmpl"), body.model or settings.model_name
        ids = await _prompt_ids(request, body.prompt)
        prefix = body.prompt if body.echo and isinstance(body.prompt, str) else ""
        return await _run(request, body, ids, lambda d: responses.completion(rid, name, d, prefix),
                          lambda text, fin: responses.completion_chunk(rid, name, text, fin))

    @app.post("/completion")
    @app.post("/completions")
    async def native_completion(body: CompletionRequest, request: Request):
        name = body.model or settings.model_name
        ids = await _prompt_ids(request, body.prompt)
        return await _run(request, body, ids, lambda d: responses.native(d, name, len(ids)),
                          lambda text, fin: {"content": text, "stop": fin is not None})


    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completion(body: ChatRequest, request: Request):
        rid, name = responses.new_id("chatcmpl"), body.model or settings.model_name
        ids = await asyncio.to_thread(_chat_prompt_ids, request.app.state.engine.model, settings.chat_template, body)
        return await _run(request, body, ids, lambda d: responses.chat(rid, name, d),
                          lambda text, fin: responses.chat_chunk(rid, name, {"content": text} if text else {}, fin))


def _chat_prompt_ids(model, template: ChatTemplate | None, body: ChatRequest) -> list[int]:
    """The messages rendered with the chat template, ready for the assistant's reply, as tokens."""
    if template is None:
        raise APIError(501, "the model has no chat template: start the server with --chat-template NAME|FILE")
    try:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return tokenize_rendered(template, model.tokenizer, template.render(messages, add_generation_prompt=True),
                                 add_bos=True)
    except ValueError as e:
        raise APIError(400, f"messages: {e}") from None
    except HotLoraError as e:
        raise APIError(400, f"messages: {e}") from None


async def _prompt_ids(request: Request, prompt) -> list[int]:
    if isinstance(prompt, str):
        model = request.app.state.engine.model
        return await asyncio.to_thread(model.tokenize, prompt, True, True)
    return list(prompt)


async def _run(request: Request, body: Sampling, ids: list[int], whole, chunk):
    """Submits the job; answers with one JSON body, or (stream) with SSE chunks and `data: [DONE]`."""
    engine: Engine = request.app.state.engine
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = GenerationJob(ids, body, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                        deadline=time.monotonic() + request.app.state.settings.timeout_s)
    engine.submit(job)
    first = await _next_event(request, events, job)
    if isinstance(first, Failed):
        return _error(first.error)
    if not body.stream:
        event = first
        while isinstance(event, Piece):  # the whole text comes with Done
            event = await _next_event(request, events, job)
        return _error(event.error) if isinstance(event, Failed) else whole(event)
    return StreamingResponse(_stream(first, events, job, chunk), media_type="text/event-stream")


async def _next_event(request: Request, events: asyncio.Queue, job: GenerationJob):
    """The job's next event; a client that disconnected while it waits cancels the job."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                raise APIError(499, "client disconnected") from None


async def _stream(first, events: asyncio.Queue, job: GenerationJob, chunk):
    event = first
    try:
        while True:
            if isinstance(event, Piece):
                yield responses.sse(chunk(event.text, None))
            elif isinstance(event, Done):
                yield responses.sse(chunk("", event.finish_reason))
                yield responses.sse("[DONE]")
                return
            else:
                yield responses.sse(event.error.body())
                return
            event = await events.get()
    finally:
        job.cancelled.set()  # finished, or the client went away: either way the job must not go on
