"""Response bodies: OpenAI's completion and chat shapes (whole and as SSE chunks) and llama-server's native one."""
from __future__ import annotations

import json
import time
import uuid

from .engine import Done


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def completion(rid: str, model: str, done: Done, prefix: str = "") -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": prefix + done.text, "logprobs": None, "finish_reason": done.finish_reason}],
            "usage": usage(done), "timings": done.timings}


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def chat(rid: str, model: str, done: Done) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": done.finish_reason}],
            "usage": usage(done), "timings": done.timings}


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def native(done: Done, model: str, prompt_tokens: int) -> dict:
    """llama-server's /completion body."""
    return {"content": done.text, "stop": True, "model": model, "tokens_predicted": done.completion_tokens,
            "tokens_evaluated": prompt_tokens, "stop_type": "eos" if done.finish_reason == "stop" else "limit",
            "timings": done.timings}


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()
