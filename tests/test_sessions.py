"""Several sessions on one model (hotlora.Session on any sequence), alone or generating together in one decode
per step (Model.generate_batch): with greedy sampling every session's tokens, text and stop rule are those of the
same session run alone, whatever its adapters, prompt length, context size and context shifts.

Tiny random model and adapters (tests/factory.py), F32 cache, 2 threads, end-of-generation ignored (the stop
rules under test are n_predict, a full context and the context shift).
"""
from __future__ import annotations

import numpy as np
import pytest

import hotlora
from hotlora.session import Session

from factory import ADAPTER_TARGETS, N_VOCAB, TinySpec, write_tiny_adapter, write_tiny_model

N_BATCH = 8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    spec, d = TinySpec(), tmp_path_factory.mktemp("sessions")
    return (write_tiny_model(d / "model.gguf", spec),
            write_tiny_adapter(d / "a.gguf", spec, ADAPTER_TARGETS, rank=4, seed=1),
            write_tiny_adapter(d / "b.gguf", spec, ["attn_q", "attn_v", "ffn_down", "output"], rank=8, alpha=4.0,
                               seed=2))


def open_model(path) -> hotlora.Model:
    return hotlora.Model(path, n_ctx=48, n_threads=2, cache_type="f32", n_batch=N_BATCH)


def prompt(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, N_VOCAB, size=n).tolist()


# each session: (prompt, adapter names with scales, sequence cells (None: the model's default sequence), n_keep)
CASES = [
    (prompt(11, 1), [("a", 1.0)], 40, None),            # a prompt longer than n_batch
    (prompt(3, 2), [], None, None),                      # the default sequence, no adapter
    (prompt(5, 3), [("b", 0.8), ("a", 0.5)], 12, None),  # stops on a full context
    (prompt(4, 4), [("b", 1.2)], 12, 2),                 # shifts its context instead
]
N_PREDICT = 14


def make_sessions(m: hotlora.Model, adapters: dict, cases) -> list[Session]:
    sessions = []
    for ids, names, n_ctx, n_keep in cases:
        seq = m.default_sequence if n_ctx is None else m.sequence(n_ctx)
        seq.set_adapters({adapters[name]: scale for name, scale in names})
        sessions.append(Session(m, m.sampler(temp=0.0, ignore_eos=True), n_keep=n_keep, sequence=seq))
    return sessions


def run_alone(files, case) -> tuple[list[int], str, str]:
    with open_model(files[0]) as m:
        adapters = {"a": m.load_adapter(files[1]), "b": m.load_adapter(files[2])}
        session, = make_sessions(m, adapters, [case])
        session.feed(case[0])
        turn = session.generate(N_PREDICT)
        return turn.tokens, turn.text, turn.stop


def test_generate_batch_equals_each_session_alone(files):
    alone = [run_alone(files, case) for case in CASES]
    assert [stop for _, _, stop in alone] == ["n_predict", "n_predict", "context_full", "n_predict"]
    with open_model(files[0]) as m:
        adapters = {"a": m.load_adapter(files[1]), "b": m.load_adapter(files[2])}
        sessions = make_sessions(m, adapters, CASES)
        for session, (ids, *_) in zip(sessions, CASES):
            session.queue(ids)
        sessions[1].feed([5])  # evaluated already: it samples in the first step
        alone[1] = run_alone(files, (CASES[1][0] + [5], *CASES[1][1:]))
        batches = []
        decode_batch = m.decode_batch
        m.decode_batch = lambda segs: batches.append([len(ids) for _, ids, _ in segs]) or decode_batch(segs)
        tokens, text = [[] for _ in CASES], ["" for _ in CASES]
        for i, token, piece in m.generate_batch(sessions, N_PREDICT):
            tokens[i].append(token)
            text[i] += piece
        assert [(t, x, s.stop) for t, x, s in zip(tokens, text, sessions)] == alone
        assert sessions[3].n_shifts > 0 and sessions[3].sequence.n_past <= 12
        # one decode per step: the prompts share the n_batch tokens of the first steps (session 1 samples first),
        # then each running session adds its token; session 3's prompt ends in step 3, its 13 later tokens follow
        assert batches[:3] == [[8], [3, 1, 4], [1, 1, 1, 4]] and len(batches) == 3 + N_PREDICT - 1
        assert all(sum(b) <= N_BATCH for b in batches) and max(map(len, batches)) == len(CASES)
        assert all(s.pending == [t[-1]] for s, t in zip(sessions, tokens))  # the last token left pending


def test_sessions_on_one_model_keep_their_own_cache_and_adapters(files):
    """Two sessions stepped in turn on one model, under different adapters: each generates what it generates
    alone, and a later turn continues from its own cache."""
    cases = [CASES[0], (CASES[1][0], [("b", 1.0)], 40, None)]
    alone = [run_alone(files, case) for case in cases]
    with open_model(files[0]) as m:
        adapters = {"a": m.load_adapter(files[1]), "b": m.load_adapter(files[2])}
        sessions = make_sessions(m, adapters, cases)
        for session, (ids, *_) in zip(sessions, cases):
            session.feed(ids)
        steps = [session.steps(N_PREDICT) for session in sessions]
        tokens = [[], []]
        for _ in range(N_PREDICT):
            for i, step in enumerate(steps):
                tokens[i].append(next(step)[0])
        assert tokens == [t for t, _, _ in alone]
        assert [s.sequence.history for s in sessions] == [c[0] + t[:-1] for c, t in zip(cases, tokens)]


def test_generate_batch_refuses_bad_sessions(files):
    with open_model(files[0]) as m, open_model(files[0]) as other:
        seq = m.sequence()
        shared = [Session(m, m.sampler(temp=0.0), sequence=seq) for _ in range(2)]
        for session in shared:
            session.queue([1, 2])
        with pytest.raises(hotlora.HotLoraError, match="session 1 shares its sequence with an earlier session"):
            list(m.generate_batch(shared, 2))
        with pytest.raises(hotlora.HotLoraError, match="session 0 has nothing to sample from"):
            list(m.generate_batch([Session(m, m.sampler(temp=0.0))], 2))
        with pytest.raises(hotlora.HotLoraError, match="the sequence belongs to another model"):
            Session(m, m.sampler(), sequence=other.sequence())
