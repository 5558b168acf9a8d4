"""The generation loop behind `hotlora run`: prompt, sampling, stop rules, interactive turns.

It mirrors llama-cli's main loop (cli-surface.md §3): the prompt is evaluated in
n_batch chunks, then tokens are sampled one at a time; generation stops on an
end-of-generation token, after n_predict tokens, when the output ends with a
reverse prompt, or when the context is full.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .sampling import Sampler
from .tokenizer import StreamDecoder

if TYPE_CHECKING:
    from .model import Model

REVERSE_PROMPT_WINDOW = 32  # tokens whose text is searched for a reverse prompt


@dataclass
class Turn:
    """What one generation turn produced and why it stopped."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    stop: str = ""  # "eog", "n_predict", "reverse_prompt" or "context_full"


class Session:
    """A conversation with the model: every token fed or sampled, in order, in its KV cache."""

    def __init__(self, model: Model, sampler: Sampler, on_text: Callable[[str], None] = lambda s: None):
        self.model = model
        self.sampler = sampler
        self.on_text = on_text
        self.history: list[int] = []
        self.logits: np.ndarray | None = None
        self.pending: list[int] = []  # the last sampled token, not yet evaluated (as llama.cpp)
        self.stop = ""                # why the last turn stopped
        self._decoder = StreamDecoder(model.tokenizer)

    def feed(self, ids: list[int]) -> None:
        """Evaluates tokens (the prompt or user input) after any pending one; accepts them into the sampler."""
        if not ids:
            return
        self.logits = self.model.eval_last(self.pending + ids)
        self.pending = []
        for t in ids:
            self.sampler.accept(t)
        self.history.extend(ids)

    def _ends_with_reverse_prompt(self, reverse_prompts: list[str]) -> bool:
        if not reverse_prompts:
            return False
        tail = self.model.tokenizer.detokenize(self.history[-REVERSE_PROMPT_WINDOW:])
        return any(tail.endswith(r) for r in reverse_prompts)

    def _stop_rule(self, token: int, n: int, n_predict: int, reverse_prompts: list[str]) -> str:
        if self.model.tokenizer.is_eog(token):
            return "eog"
        if 0 <= n_predict <= n:
            return "n_predict"
        if self._ends_with_reverse_prompt(reverse_prompts):
            return "reverse_prompt"
        if self.model.n_past + 1 > self.model.n_ctx:
            return "context_full"
        return ""

    def steps(self, n_predict: int, reverse_prompts: list[str] = ()) -> Iterator[tuple[int, str]]:
        """Samples until a stop rule fires, yielding (token, text piece); self.stop then names the rule.

        The last sampled token is left unevaluated (pending), as llama-cli leaves it.
        """
        self.stop = "n_predict" if n_predict == 0 else ""
        if self.stop:
            return
        if self.pending:
            self.logits = self.model.eval_last(self.pending)
            self.pending = []
        n = 0
        while not self.stop:
            token = self.sampler.sample(self.logits)
            self.sampler.accept(token)
            self.history.append(token)
            n += 1
            self.stop = self._stop_rule(token, n, n_predict, list(reverse_prompts))
            piece = self._decoder.push(token) + (self._decoder.flush() if self.stop else "")
            yield token, piece
            if self.stop:
                self.pending = [token]
            else:
                self.logits = self.model.eval_last([token])

    def generate(self, n_predict: int, reverse_prompts: list[str] = ()) -> Turn:
        """Samples until a stop rule fires; streams text pieces to on_text."""
        turn = Turn()
        for token, piece in self.steps(n_predict, reverse_prompts):
            turn.tokens.append(token)
            turn.text += piece
            self.on_text(piece)
        turn.stop = self.stop
        return turn
