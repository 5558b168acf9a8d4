"""hotlora.Sequence owns a sequence's state: any sequence of a model, the default one or one made by
Model.sequence(), shifts, saves and restores its cache and counts its timings the same way, and the Model's
single-sequence methods are its default sequence's.

Tiny random model (tests/factory.py), F32 cache, 2 threads. Sequences of one model compute the same products:
SAME_BOUND = 1e-5 x max |logit| (as tests/test_batch_segments.py's ALONE_BOUND).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import hotlora
from hotlora._native import lib

from factory import N_VOCAB, TinySpec, write_tiny_adapter, write_tiny_model

SAME_BOUND = 1e-5
PROMPT = [1, 5, 9, 14, 3, 7, 22, 8, 11, 2]


def rel_error(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("seq") / "model.gguf", TinySpec())


def open_model(path) -> hotlora.Model:
    return hotlora.Model(path, n_ctx=32, n_threads=2, cache_type="f32", n_batch=16)


def test_model_methods_act_on_the_default_sequence(model_path):
    with open_model(model_path) as m:
        seq = m.default_sequence
        assert isinstance(seq, hotlora.Sequence) and seq.model is m and seq.n_ctx == m.n_ctx
        assert seq.handle == lib.hl_context_sequence(m._ctx)
        m.eval(PROMPT[:4])
        assert (m.n_past, seq.n_past, seq.history) == (4, 4, PROMPT[:4])
        assert m.perf is seq.perf and (seq.perf.prompt_n, seq.perf.eval_n) == (4, 0)
        seq.close()  # the default sequence closes with its model only
        m.kv_keep(2)
        assert seq.history == PROMPT[:2]
    with pytest.raises(hotlora.HotLoraError, match="the model is closed"):
        seq.n_past


def test_shift_and_state_on_another_sequence_match_the_default(model_path):
    """The same prompt, shift and continuation on the default sequence and on a made one: the same logits;
    the made one's state loaded into the default sequence continues as the made one does."""
    with open_model(model_path) as m:
        other = m.sequence()
        runs = []
        for seq in (m.default_sequence, other):
            seq.eval_last(PROMPT)
            seq.shift(2, 4)
            assert (seq.n_past, seq.history) == (6, PROMPT[:2] + PROMPT[6:])
            runs.append(seq.eval_last([4]))
        assert rel_error(runs[1], runs[0]) <= SAME_BOUND
        tokens, state = other.state()
        assert len(state) == other.state_size(len(tokens)) == m.kv_state_size(len(tokens)) > 0
        m.reset()
        m.load_kv_state(tokens, state)
        assert m.kv_state() == (tokens, state)
        assert rel_error(m.eval_last([6]), other.eval_last([6])) <= SAME_BOUND
        with pytest.raises(hotlora.HotLoraError, match="context shift: cannot keep 3 tokens and drop 9 of 8"):
            other.shift(3, 9)
        with pytest.raises(hotlora.HotLoraError, match="KV state: a token is outside the vocabulary"):
            other.load_state([N_VOCAB], state)


def test_each_sequence_counts_its_own_timings(model_path):
    """A batch's time counts for each of its segments' sequences: prompts (more than one token) and single
    tokens apart; the default sequence's timings are the model's perf."""
    with open_model(model_path) as m:
        a, b = m.sequence(), m.sequence()
        m.decode_batch([(a, PROMPT[:5], False), (b, [3], False)])
        m.decode_batch([(a, [4], False), (b, [5], False)])
        assert (a.perf.prompt_n, a.perf.eval_n, b.perf.prompt_n, b.perf.eval_n) == (5, 1, 0, 2)
        assert a.perf.prompt_ms > 0 and b.perf.eval_ms > 0
        assert (m.perf.prompt_n, m.perf.eval_n) == (0, 0)


def test_cells_stay_valid_under_an_adapter_of_the_same_content(model_path, tmp_path):
    """KV cells record the adapters they were made under by content (sha256 of tensors and scales): a byte copy of
    the file loaded as another adapter counts as the same; another scale or another adapter's content does not."""
    targets = ("attn_q", "ffn_up")
    path = write_tiny_adapter(tmp_path / "a.gguf", TinySpec(), targets, seed=1)
    shutil.copy(path, tmp_path / "copy.gguf")
    other_path = write_tiny_adapter(tmp_path / "b.gguf", TinySpec(), targets, seed=2)
    with open_model(model_path) as m:
        first, copy, other = (m.load_adapter(p) for p in (path, tmp_path / "copy.gguf", other_path))
        assert first.content_digest == copy.content_digest != other.content_digest
        seq = m.sequence()
        seq.set_adapters({first: 1.0})
        m.decode_batch([(seq, PROMPT, False)])
        seq.set_adapters({copy: 1.0})
        assert seq.first_stale == len(PROMPT)
        seq.set_adapters({copy: 0.5})
        assert seq.first_stale == 0
        seq.set_adapters({other: 1.0})
        assert seq.first_stale == 0
        seq.set_adapters({})
        seq.close()
