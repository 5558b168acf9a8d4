"""Several sessions of one model generating together: one Model.decode_batch per step.

Each step, every running session contributes its pending tokens as one segment of the batch: its queued prompt
(in chunks: the sessions' prompts share the n_batch tokens of a step, in session order) or its last sampled token,
under its own sequence's adapter set. A session whose pending tokens are all evaluated then samples its next token
from its segment's logits. Each session stops on its own rules (Session's: end of generation, n_predict, a reverse
prompt, a full context, with its context shift), exactly where Session.steps would stop it alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from .errors import HotLoraError

if TYPE_CHECKING:
    from .model import Model
    from .session import Session


def generate_batch(model: "Model", sessions: list["Session"], n_predict: int = -1,
                   reverse_prompts: list[str] = ()) -> Iterator[tuple[int, int, str]]:
    """Yields (session index, token, text piece) for each sampled token, in session order within a step, until
    every session has stopped (each session's stop then names its rule; its last token is left pending)."""
    _check(model, sessions)
    for session in sessions:
        session.stop = "n_predict" if n_predict == 0 else ""
    counts = [0] * len(sessions)
    running = [i for i, session in enumerate(sessions) if not session.stop]
    while running:
        for i in _step(model, sessions, running):
            counts[i] += 1
            token, piece = sessions[i]._sample(counts[i], n_predict, reverse_prompts)
            yield i, token, piece
        running = [i for i in running if not sessions[i].stop]


def _check(model: "Model", sessions: list["Session"]) -> None:
    for i, session in enumerate(sessions):
        if session.model is not model:
            raise HotLoraError(f"generate_batch: session {i} belongs to another model")
        if any(session.sequence is other.sequence for other in sessions[:i]):
            raise HotLoraError(f"generate_batch: session {i} shares its sequence with an earlier session")
        if not session.pending and session.logits is None:
            raise HotLoraError(f"generate_batch: session {i} has nothing to sample from (feed or queue tokens first)")


def _step(model: "Model", sessions: list["Session"], running: list[int]) -> list[int]:
    """One decode of the running sessions' pending tokens; the sessions ready to sample, in order. A session that
    has no room for its pending tokens stops ("context_full")."""
    ready, fed, segments, budget = [], [], [], model.n_batch
    for i in running:
        session = sessions[i]
        if not session.pending:
            ready.append(i)  # fed before: samples from its logits
        elif budget > 0:
            if not session._make_room(len(session.pending)):
                session.stop = "context_full"
                continue
            chunk = session.pending[:budget]
            budget -= len(chunk)
            segments.append((session.sequence, chunk, False))
            fed.append(i)
    if segments:
        for i, (_, chunk, _), logits in zip(fed, segments, model.decode_batch(segments)):
            session = sessions[i]
            del session.pending[:len(chunk)]
            if not session.pending:
                session.logits = logits
                ready.append(i)
    return sorted(ready)
