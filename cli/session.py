"""The generation loop behind `hotlora run`: prompt, sampling, stop rules, interactive turns, on one sequence
of a model (its KV cache and adapter set): the model's default sequence, or any other, so that several sessions
share one model (hotlora.batching runs them in one decode per step).

It mirrors llama-cli's main loop (cli-surface.md §3): the prompt is evaluated in
n_batch chunks, then tokens are sampled one at a time; generation stops on an
end-of-generation token, after n_predict tokens, when the output ends with a
reverse prompt, or when the context is full. With n_keep set, a full context is
shifted instead (llama-cli's rule): when n_past + n would reach n_ctx, the first
n_keep tokens stay, half of the rest, n_discard = (n_past - n_keep) / 2, is
dropped and the later tokens move down.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .errors import HotLoraError
from .sampling import Sampler
from .tokenizer import StreamDecoder

if TYPE_CHECKING:
    from .model import Model
    from .sequence import Sequence

REVERSE_PROMPT_WINDOW = 32  # tokens whose text is searched for a reverse prompt


def kept_tokens(keep: int, n_prompt: int, add_bos: bool) -> int:
    """llama-cli's n_keep: --keep N plus the BOS token, or the whole prompt for N < 0 or N > the prompt."""
    return n_prompt if keep < 0 or keep > n_prompt else keep + int(add_bos)


@dataclass
class Turn:
    """What one generation turn produced and why it stopped."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    stop: str = ""  # "eog", "n_predict", "reverse_prompt" or "context_full"


class Session:
    """A conversation with the model: every token fed or sampled, in order, in its sequence's KV cache."""

    def __init__(self, model: Model, sampler: Sampler, on_text: Callable[[str], None] = lambda s: None,
                 n_keep: int | None = None, sequence: Sequence | None = None):
        """n_keep: tokens kept when a full context is shifted (kept_tokens()); None stops instead.
        sequence: the model's sequence it runs on (cache, adapter set, timings); None: the default one."""
        self.model = model
        self.sequence = model.default_sequence if sequence is None else sequence
        if self.sequence.model is not model:
            raise HotLoraError("Session: the sequence belongs to another model")
        self.n_keep = n_keep
        self.n_shifts = 0             # context shifts so far
        self.sampler = sampler
        self.on_text = on_text
        self.history: list[int] = []
        self.logits: np.ndarray | None = None
        self.pending: list[int] = []  # tokens not evaluated yet: queued input, or the last sampled token (as llama.cpp)
        self.stop = ""                # why the last turn stopped
        self._decoder = StreamDecoder(model.tokenizer)

    def feed(self, ids: list[int], n_cached: int = 0) -> None:
        """Evaluates tokens (the prompt or user input) after any pending one; accepts them into the sampler.

        n_cached: how many of the first ids the sequence's cache already holds (a prompt cache; < len(ids)).
        """
        if not ids:
            return
        self.queue(ids, n_cached)
        self._make_room(len(self.pending))
        self.logits = self.sequence.eval_last(self.pending)
        self.pending = []

    def queue(self, ids: list[int], n_cached: int = 0) -> None:
        """As feed(), but the tokens wait after any pending one: the next steps() or batch step evaluates them."""
        self.pending += ids[n_cached:]
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
        if not self._make_room(1):
            return "context_full"
        return ""

    def _make_room(self, n: int) -> bool:
        """Shifts the context if n more tokens would reach n_ctx and shifting is on; False if they do not fit."""
        seq = self.sequence
        n_past = seq.n_past
        if n_past + n < seq.n_ctx:
            return True
        n_discard = (n_past - self.n_keep) // 2 if self.n_keep is not None else 0
        if n_discard < 1:
            return False
        seq.shift(self.n_keep, n_discard)
        self.n_shifts += 1
        return seq.n_past + n < seq.n_ctx

    def steps(self, n_predict: int, reverse_prompts: list[str] = ()) -> Iterator[tuple[int, str]]:
        """Samples until a stop rule fires, yielding (token, text piece); self.stop then names the rule.

        The last sampled token is left unevaluated (pending), as llama-cli leaves it.
        """
        self.stop = "n_predict" if n_predict == 0 else ""
        n = 0
        while not self.stop:
            if self.pending and not self._eval_pending():
                self.stop = "context_full"
                return
            n += 1
            yield self._sample(n, n_predict, reverse_prompts)

    def _eval_pending(self) -> bool:
        """Evaluates the pending tokens (shifting the context first if needed); False if they do not fit."""
        if not self._make_room(len(self.pending)):
            return False
        self.logits = self.sequence.eval_last(self.pending)
        self.pending = []
        return True

    def _sample(self, n: int, n_predict: int, reverse_prompts) -> tuple[int, str]:
        """Samples the n-th token of a turn from self.logits and leaves it pending; sets self.stop if a rule fires."""
        if self.logits is None:
            raise HotLoraError("Session: nothing to sample from (feed or queue tokens first)")
        token = self.sampler.sample(self.logits)
        self.sampler.accept(token)
        self.history.append(token)
        self.stop = self._stop_rule(token, n, n_predict, list(reverse_prompts))
        self.pending = [token]
        return token, self._decoder.push(token) + (self._decoder.flush() if self.stop else "")

    def generate(self, n_predict: int, reverse_prompts: list[str] = ()) -> Turn:
        """Samples until a stop rule fires; streams text pieces to on_text."""
        turn = Turn()
        for token, piece in self.steps(n_predict, reverse_prompts):
            turn.tokens.append(token)
            turn.text += piece
            self.on_text(piece)
        turn.stop = self.stop
        return turn
