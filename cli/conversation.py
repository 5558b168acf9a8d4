"""Conversation mode (`hotlora run -cnv`): user and assistant turns rendered with the model's chat template.

Each turn the messages are rendered with the template and only the text that extends what the model's
context already holds is tokenized and fed (llama.cpp's `common_chat_format_single` idea). The context
holds the rendered conversation plus each reply as sampled, ending with its end-of-generation token, so
the next rendering normally starts with it; when a template renders a reply differently from how it was
sampled (e.g. it trims it), the new text is what follows the rendering of the history without the new
message, as llama.cpp feeds it.
"""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from .chat_template import TEMPLATE_KEY, ChatTemplate, load_chat_template, tokenize_rendered
from .errors import HotLoraError
from .session import Session, kept_tokens
from .text import unescape
from .timings import format_perf_report
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .commands.run import Generation
    from .model import Model


class Conversation:
    """The chat so far: its messages, and the text the model's context holds for them."""

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer, system_prompt: str = ""):
        self.template = template
        self.tokenizer = tokenizer
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.context_text = ""  # what the fed and sampled tokens spell, control tokens included

    def start(self) -> list[int]:
        """The tokens of the system message (with BOS), or [] when there is none."""
        return self._tokens(self.template.render(self.messages, add_generation_prompt=False)) if self.messages else []

    def add_user(self, text: str) -> list[int]:
        """Adds a user message; the tokens to feed: the new text of the rendering, up to the reply's header."""
        self.messages.append({"role": "user", "content": text})
        return self._tokens(self.template.render(self.messages, add_generation_prompt=True))

    def add_assistant(self, tokens: list[int]) -> None:
        """Stores a reply as sampled (its end-of-generation token, if any, shows only in the context text)."""
        self.messages.append({"role": "assistant", "content": self.tokenizer.detokenize(tokens)})
        self.context_text += self.tokenizer.detokenize(tokens, special=True)

    def _tokens(self, rendered: str) -> list[int]:
        first = not self.context_text
        new_text = rendered[len(self.context_text):] if rendered.startswith(self.context_text) else \
            self._after_history(rendered)
        self.context_text += new_text
        return tokenize_rendered(self.template, self.tokenizer, new_text, add_bos=first)

    def _after_history(self, rendered: str) -> str:
        history = self.template.render(self.messages[:-1], add_generation_prompt=False)
        if not rendered.startswith(history):
            raise HotLoraError(f"chat template {self.template.source}: adding a message changes how the earlier "
                               "messages render")
        return rendered[len(history):]


def chat(m: Model, adapters: dict, gen: Generation, flag: bool | None, choice: str | None, system_prompt: str,
         first_message: str) -> bool:
    """Runs conversation mode if it is on (-cnv, or a chat template when flag is None); False if it is off."""
    template = _template(m, flag, choice)
    if template is None:
        return False
    m.set_adapters(adapters)
    system_prompt = unescape(system_prompt) if gen.escape else system_prompt
    run_conversation(m, gen, Conversation(template, m.tokenizer, system_prompt), first_message)
    return True


def _template(m: Model, flag: bool | None, choice: str | None) -> ChatTemplate | None:
    """--chat-template or the model's template; as llama-cli, -cnv without one warns and uses ChatML, and
    with no -cnv/-no-cnv a template switches conversation mode on (ours: only in a run without a prompt,
    --json or the no-argument demo, which cli/commands/run.py checks, so a prompt still gets a completion)."""
    template = load_chat_template(choice, m.file.get_str(TEMPLATE_KEY), m.path, m.tokenizer)
    if flag is None:
        if template is not None:
            sys.stderr.write("main: chat template is available, enabling conversation mode (disable it with -no-cnv)\n")
        return template
    if template is None:
        sys.stderr.write("main: chat template is not available or is not supported. This may cause the model to "
                         "output suboptimal responses\n")
        return load_chat_template("chatml", None, m.path, m.tokenizer)
    return template


def run_conversation(m: Model, gen: Generation, conversation: Conversation, first_message: str) -> None:
    """llama-cli's conversation loop: the system message and the first user message (-p), if any, then one
    reply per user message read after the `> ` marker; /lora commands act on the adapters. End of input
    finishes like a normal run (`\\n\\n` and the performance report); Ctrl+C as in any interactive run."""
    from .commands.lora_repl import LoraCommands, banner  # rich loads only for interactive runs
    from .commands.run import _close_counters, _exit_interrupted, _start_counters, _stream_to_stdout
    if gen.as_json or gen.prompt_cache:
        raise HotLoraError(f"{'--json' if gen.as_json else '--prompt-cache'} does not work in conversation mode")
    _start_counters(m)
    sampler = m.sampler(**gen.sampling)
    first_ids = conversation.start() + (conversation.add_user(first_message) if first_message else [])
    n_keep = kept_tokens(gen.keep, len(first_ids), m.tokenizer.add_bos) if gen.context_shift else None
    session = Session(m, sampler, _stream_to_stdout, n_keep)
    commands = LoraCommands(m)
    total_start = time.perf_counter()
    try:
        sys.stderr.write(banner(gen.reverse_prompts))
        if gen.display_prompt:
            _stream_to_stdout(m.tokenizer.detokenize(first_ids))
        _feed(session, first_ids)
        if first_message:
            conversation.add_assistant(session.generate(gen.n_predict, gen.reverse_prompts).tokens)
        while (message := _read_message(commands, gen.escape)) is not None:
            if message:
                _feed(session, conversation.add_user(message))
                conversation.add_assistant(session.generate(gen.n_predict, gen.reverse_prompts).tokens)
    except KeyboardInterrupt:
        _exit_interrupted(m, sampler, total_start)
    _close_counters(m, sampler, total_start)
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    sys.stderr.write(format_perf_report(m.perf))


def _read_message(commands, escape: bool) -> str | None:
    """The next user message (without the newline that submitted it; "" for an empty line), running any /lora
    commands before it; None at end of input."""
    from .commands.lora_repl import read_user_input
    while (line := read_user_input()) is not None and line.startswith("/lora"):
        commands.run(line.strip())
    if line is None:
        return None
    return (unescape(line) if escape else line).removesuffix("\n")


def _feed(session: Session, ids: list[int]) -> None:
    """Feeds a turn's tokens after resetting the samplers, as llama-cli does after each user turn (their counts
    go to the model's perf counters first, so the report covers the whole conversation)."""
    limit = session.sequence.n_ctx - 4
    if len(ids) > limit:
        raise HotLoraError(f"chat message is too long ({len(ids)} tokens, max {limit})")
    session.model.perf.add_sampling(session.sampler.sample_ms, session.sampler.n_accept)
    session.sampler.reset()
    session.feed(ids)
