"""Chat templates: the model's `tokenizer.chat_template`, a built-in format by name, or a Jinja file.

Rendered as HF transformers' `apply_chat_template` and llama.cpp's `--jinja` do: jinja2's
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, a `tojson` filter that keeps
non-ASCII text and key order, and the globals `raise_exception(msg)` and `strftime_now(fmt)`.
The variables are `messages` (a list of {"role", "content"}), `add_generation_prompt`,
`bos_token` and `eos_token` (the vocabulary's texts). A template that does not compile, raises
or reaches for something the sandbox refuses is one HotLoraError naming where it came from.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import HotLoraError
from .tokenizer import Tokenizer

TEMPLATE_KEY = "tokenizer.chat_template"

# Written from each format's description: ChatML (OpenAI), Llama 2 chat ([INST] and <<SYS>>), Llama 3
# (header ids and <|eot_id|>), Zephyr (<|role|> lines ending in </s>) and Mistral v7 ([SYSTEM_PROMPT]).
BUILT_IN = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama2": (
        "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
        "{% for message in messages if message['role'] != 'system' %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' }}"
        "{% if loop.first and system is not none %}{{ '<<SYS>>\n' + system + '\n<</SYS>>\n\n' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
        "{% else %}{{ raise_exception('llama2 knows only system, user and assistant messages') }}{% endif %}"
        "{% endfor %}"),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
    "mistral-v7": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '[SYSTEM_PROMPT] ' + message['content'] + '[/SYSTEM_PROMPT]' }}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral-v7 knows only system, user and assistant messages') }}{% endif %}"
        "{% endfor %}"),
}


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """One compiled template and where it came from (`source`, named in every error)."""

    def __init__(self, text: str, source: str, bos_token: str = "", eos_token: str = ""):
        self.text = text
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _environment().from_string(text)
        except jinja2.exceptions.TemplateError as e:
            raise HotLoraError(f"chat template {source} does not compile: {e}") from None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except Exception as e:  # a template is code: any exception it raises is its error, reported as one line
            kind = "refused by the sandbox" if isinstance(e, jinja2.exceptions.SecurityError) else "failed"
            raise HotLoraError(f"chat template {self.source} {kind}: {type(e).__name__}: {e}") from None


def _special_text(tokenizer: Tokenizer, token: int | None) -> str:
    return tokenizer.vocab.texts[token] if token is not None else ""


def _template_text(choice: str | None, model_template: str | None, model_path: Path) -> tuple[str, str] | None:
    """(text, source) of the chosen template: --chat-template NAME or FILE, else the model's key, else None."""
    if choice is None:
        return None if model_template is None else (model_template, f"'{TEMPLATE_KEY}' of {model_path}")
    if choice in BUILT_IN:
        return BUILT_IN[choice], f"'{choice}' (built-in)"
    path = Path(choice)
    if not path.is_file():
        names = ", ".join(BUILT_IN)
        raise HotLoraError(f"--chat-template '{choice}' is neither a built-in template ({names}) nor a file")
    try:
        return path.read_text(encoding="utf-8"), f"file {path}"
    except (OSError, UnicodeDecodeError) as e:
        raise HotLoraError(f"--chat-template: cannot read {path} ({e})") from None


def load_chat_template(choice: str | None, model_template: str | None, model_path: Path,
                       tokenizer: Tokenizer) -> ChatTemplate | None:
    """The template a run uses (None when neither --chat-template nor the model gives one)."""
    found = _template_text(choice, model_template, model_path)
    if found is None:
        return None
    text, source = found
    return ChatTemplate(text, source, _special_text(tokenizer, tokenizer.bos_id),
                        _special_text(tokenizer, tokenizer.eos_id))


def tokenize_rendered(template: ChatTemplate, tokenizer: Tokenizer, text: str, add_bos: bool) -> list[int]:
    """Tokens of rendered template text; with add_bos, a BOS the template wrote itself is not doubled."""
    bos = template.bos_token
    if add_bos and tokenizer.add_bos and bos and text.startswith(bos):
        text = text[len(bos):]  # the tokenizer adds the BOS the template wrote
    return tokenizer.tokenize(text, add_bos=add_bos, special=True)
