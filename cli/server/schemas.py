"""Request bodies, validated with pydantic: OpenAI's fields, llama-server's native ones, and the adapter list.

Unknown fields are ignored (clients send `user`, `logprobs`, ...); a field of the wrong type or range is a 400
naming it. The sampling defaults are llama-server's.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..commands.options import INT32_MAX, UINT32_MAX
from ..sampling import SamplerParams
from ..scales import FLOAT32_MAX


class LoraScale(BaseModel):
    """One entry of a request's `lora` list: adapter id and its scale (missing scale: 0, as llama-server)."""
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0, le=INT32_MAX)
    scale: float = Field(default=0.0, ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False)


class Sampling(BaseModel):
    """Generation fields shared by every generation endpoint."""
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    stream: bool = False
    max_tokens: Optional[int] = Field(default=None, ge=0, le=INT32_MAX)
    n_predict: Optional[int] = Field(default=None, ge=-1, le=INT32_MAX)
    temperature: float = Field(default=0.8, ge=0.0, le=FLOAT32_MAX, allow_inf_nan=False)
    top_k: int = Field(default=40, ge=0, le=INT32_MAX)
    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    typical_p: float = Field(default=1.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, ge=0.0, le=FLOAT32_MAX, allow_inf_nan=False)
    repeat_last_n: int = Field(default=64, ge=-1, le=INT32_MAX)
    presence_penalty: float = Field(default=0.0, ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False)
    frequency_penalty: float = Field(default=0.0, ge=-FLOAT32_MAX, le=FLOAT32_MAX, allow_inf_nan=False)
    seed: Optional[int] = Field(default=None, ge=-1, le=UINT32_MAX)
    stop: Union[str, list[str], None] = Field(default=None, validate_default=True)
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    ignore_eos: bool = False
    lora: Optional[list[LoraScale]] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 16 or any(not s or len(s) > 1024 for s in stops):
            raise ValueError("at most 16 stop strings of 1 to 1024 characters")
        return stops

    def sampler_params(self, seed: int) -> SamplerParams:
        return SamplerParams(temp=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                             typical_p=self.typical_p, repeat_penalty=self.repeat_penalty,
                             repeat_last_n=self.repeat_last_n, presence_penalty=self.presence_penalty,
                             frequency_penalty=self.frequency_penalty, seed=seed, ignore_eos=self.ignore_eos)

    def token_limit(self) -> int:
        """Tokens to generate: max_tokens (OpenAI), else n_predict (llama-server), else -1 (until the end)."""
        if self.max_tokens is not None:
            return self.max_tokens
        return self.n_predict if self.n_predict is not None else -1


Prompt = Union[str, list[int]]


class CompletionRequest(Sampling):
    """POST /v1/completions and llama-server's /completion: a string or a list of token ids."""
    prompt: Prompt
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict], None] = None

    def text(self) -> str:
        """The message's text; OpenAI's content parts of type "text" joined."""
        if isinstance(self.content, list):
            if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in self.content):
                raise ValueError("only text content parts are supported")
            return "".join(part["text"] for part in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    """POST /v1/chat/completions."""
    messages: list[ChatMessage] = Field(min_length=1)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[int]


class LoadAdapterRequest(BaseModel):
    """vLLM's POST /v1/load_lora_adapter."""
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=256)
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadAdapterRequest(BaseModel):
    """vLLM's POST /v1/unload_lora_adapter."""
    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=256)
