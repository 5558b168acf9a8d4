"""Batches of segments from several sequences under different adapter sets (hotlora.Model.decode_batch,
hl_decode_batch): each segment gets the logits it gets alone, and nothing of one segment's adapters reaches
another.

Every engine run uses an F32 KV cache and 2 threads on tiny random models (tests/factory.py). Bounds:
- against the float64 reference (tests/reference.py): F32_BOUND = 1e-4 x max |logit| (as tests/test_lora.py);
- batch vs the same tokens decoded alone through Model.eval on the default sequence: ALONE_BOUND = 1e-5 x max
  |logit| (the same products, but the multi-token kernels tile a batch's tokens differently from one
  sequence's, and a segment's adapters may come in another order when the batch holds several sets);
- a segment without adapter batched with adapted segments vs the same batch without any adapter: bitwise.
"""
from __future__ import annotations

import numpy as np
import pytest

import hotlora
from hotlora._native import ffi, lib

from factory import (ADAPTER_TARGETS, N_VOCAB, TinySpec, tiny_adapter_pairs, write_adapter_file, write_tiny_adapter,
                     write_tiny_model)
from reference import forward, load_ref_adapter, load_ref_model

F32_BOUND = 1e-4
ALONE_BOUND = 1e-5
MIN_EFFECT = 1e-2


def rel_error(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def tokens_for(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, N_VOCAB, size=n).tolist()


@pytest.fixture(scope="module", params=[TinySpec(), TinySpec(arch="qwen2", seed=3)], ids=["llama", "qwen2"])
def files(request, tmp_path_factory):
    spec, d = request.param, tmp_path_factory.mktemp("batch")
    model = write_tiny_model(d / "model.gguf", spec)
    a = write_tiny_adapter(d / "a.gguf", spec, ADAPTER_TARGETS, rank=4, seed=1)
    b = write_tiny_adapter(d / "b.gguf", spec, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_down", "output"],
                           rank=8, alpha=4.0, seed=2)
    return model, a, b


def open_model(path, **kw) -> hotlora.Model:
    return hotlora.Model(path, **{"n_ctx": 64, "n_threads": 2, "cache_type": "f32", "n_batch": 32, **kw})


# the adapter sets of the segments, by name: [(adapter name, user scale), ...] in application order
SETS = [[], [("a", 1.0)], [("b", 0.5)], [("b", 1.3), ("a", 0.7)]]


def adapter_set(adapters: dict, names) -> dict:
    return {adapters[name]: scale for name, scale in names}


def alone(m: hotlora.Model, scales: dict, chunks) -> list[np.ndarray]:
    """The logits of each (tokens, all_logits) chunk, decoded in turn on the default sequence alone."""
    m.reset()
    m.set_adapters(scales)
    return [m.eval(ids) if all_logits else m.eval_last(ids) for ids, all_logits in chunks]


def reference(files, names, tokens) -> np.ndarray:
    model_path, a, b = files
    paths = {"a": a, "b": b}
    return forward(load_ref_model(model_path), tokens, [(load_ref_adapter(paths[n]), s) for n, s in names])


def test_mixed_batch_matches_alone_and_reference(files):
    """Four sequences under none, A, B and B+A: a prompt batch (prompts of 5, 3, 7, 4 tokens, some wanting all
    logits), then a batch of three 1-token steps with a 3-token continuation; each segment equals its run
    alone and the float64 reference."""
    prompts = [tokens_for(n, seed) for n, seed in ((5, 1), (3, 2), (7, 3), (4, 4))]
    steps = [[tokens_for(1, 10 + i)[0]] if i != 2 else tokens_for(3, 20) for i in range(4)]
    with open_model(files[0]) as m:
        adapters = {"a": m.load_adapter(files[1]), "b": m.load_adapter(files[2])}
        seqs = [m.sequence() for _ in SETS]
        for seq, names in zip(seqs, SETS):
            seq.set_adapters(adapter_set(adapters, names))
        first = m.decode_batch([(s, p, i % 2 == 0) for i, (s, p) in enumerate(zip(seqs, prompts))])
        second = m.decode_batch([(s, ids, len(ids) > 1) for s, ids in zip(seqs, steps)])
        assert [s.n_past for s in seqs] == [len(p) + len(s) for p, s in zip(prompts, steps)]
        for i, names in enumerate(SETS):
            chunks = [(prompts[i], i % 2 == 0), (steps[i], len(steps[i]) > 1)]
            solo = alone(m, adapter_set(adapters, names), chunks)
            rows = [slice(0, len(prompts[i])) if i % 2 == 0 else len(prompts[i]) - 1,
                    slice(len(prompts[i]), None) if len(steps[i]) > 1 else -1]
            ref = reference(files, names, prompts[i] + steps[i])
            base = reference(files, [], prompts[i] + steps[i])
            for got, want_alone, r in zip((first[i], second[i]), solo, rows):
                assert got.shape == want_alone.shape
                assert rel_error(got, want_alone) <= ALONE_BOUND
                assert rel_error(got, ref[r]) <= F32_BOUND
                assert not names or rel_error(got, base[r]) > MIN_EFFECT


def test_segment_without_adapter_is_the_base_bitwise(files):
    """A segment with no adapter batched with adapted segments gets exactly what it gets in the same batch
    where no segment has an adapter: no term of another segment reaches its tokens."""
    prompts = [tokens_for(n, seed) for n, seed in ((4, 5), (6, 6), (2, 7))]
    with open_model(files[0]) as m:
        adapters = {"a": m.load_adapter(files[1]), "b": m.load_adapter(files[2])}
        results = []
        for sets in ([SETS[3], [], SETS[1]], [[], [], []]):
            seqs = [m.sequence() for _ in sets]
            for seq, names in zip(seqs, sets):
                seq.set_adapters(adapter_set(adapters, names))
            results.append(m.decode_batch([(s, p, True) for s, p in zip(seqs, prompts)]))
            results[-1] += m.decode_batch([(s, [7], False) for s in seqs])
        mixed, base = results
        assert np.array_equal(mixed[1], base[1]) and np.array_equal(mixed[4], base[4])
        assert rel_error(mixed[0], base[0]) > MIN_EFFECT and rel_error(mixed[2], base[2]) > MIN_EFFECT


def test_adapter_change_recomputes_the_sequence(files):
    """A sequence whose set changes re-evaluates its cached tokens before the next batch (as Model does)."""
    prompt = tokens_for(6, 8)
    with open_model(files[0]) as m:
        a = m.load_adapter(files[1])
        seq, other = m.sequence(), m.sequence()
        m.decode_batch([(seq, prompt, False), (other, prompt, False)])
        seq.set_adapters({a: 1.0})
        got = m.decode_batch([(seq, [3], False), (other, [3], False)])
        assert seq.history == prompt + [3] and other.history == prompt + [3]
        assert rel_error(got[0], alone(m, {a: 1.0}, [(prompt + [3], False)])[0]) <= ALONE_BOUND
        assert rel_error(got[1], alone(m, {}, [(prompt + [3], False)])[0]) <= ALONE_BOUND


def test_freeing_an_active_adapter_is_refused(files):
    with open_model(files[0]) as m:
        a = m.load_adapter(files[1])
        seq = m.sequence()
        seq.set_adapters({a: 0.5})
        assert lib.hl_adapter_free(a.handle) == lib.HL_ERR_INVALID
        assert "still active in 1 sequence adapter set" in ffi.string(lib.hl_last_error()).decode()
        with pytest.raises(hotlora.HotLoraError, match="is active in a sequence"):
            m.unload_adapter(a)
        m.set_adapters({a: 1.0})
        with pytest.raises(hotlora.HotLoraError, match="still active in 2 sequence adapter sets"):
            a.free()
        seq.set_adapters({})
        m.unload_adapter(a)  # leaves the default set, then freed
        assert m.loaded_adapters == [] and m.adapters == {}


def test_closing_the_model_frees_sequences_that_hold_adapters(files):
    m = open_model(files[0])
    a = m.load_adapter(files[1])
    seq = m.sequence()
    seq.set_adapters({a: 1.0})
    m.close()
    with pytest.raises(hotlora.HotLoraError, match="closed"):
        seq.n_past


def test_non_finite_segment_drops_the_batch(files, tmp_path):
    """A segment whose adapter makes its logits non-finite: the error names the segment and its first non-finite
    node (found by recomputing that segment alone), and no sequence of the batch keeps its tokens."""
    pairs = tiny_adapter_pairs(TinySpec(), ["ffn_down"], layers=[0])
    (base, (a, b)), = pairs.items()
    b[:, 0] = np.nan
    bad = write_adapter_file(tmp_path / "nan.gguf", load_ref_model(files[0]).hparams.arch,
                             {base + ".lora_a": a, base + ".lora_b": b})
    with open_model(files[0]) as m:
        s0, s1 = m.sequence(), m.sequence()
        s1.set_adapters({m.load_adapter(bad): 1.0})
        with pytest.raises(hotlora.errors.NonFiniteError, match=r"segment 1 of a batch at token position 0; first "
                                                                 r"non-finite node: blk\.0\.ffn_down \(ffn_down\)"):
            m.decode_batch([(s0, [1, 2], False), (s1, [3], False)])
        assert (s0.n_past, s0.history, s1.n_past) == (0, [], 0)
        assert m.decode_batch([(s0, [1, 2], False)])[0].shape == (N_VOCAB,)


def decode_batch_status(m, segments) -> tuple[int, str]:
    """hl_decode_batch on raw segments [(sequence handle, tokens, n_tokens), ...]: (status, message)."""
    csegs = ffi.new("hl_segment[]", len(segments))
    keep = []
    for cseg, (handle, tokens, n) in zip(csegs, segments):
        keep.append((ffi.new("int32_t[]", tokens or [0]), np.empty((max(n, 1), N_VOCAB), np.float32)))
        cseg.seq, cseg.tokens, cseg.n_tokens = handle, keep[-1][0], n
        cseg.logits, cseg.all_logits = ffi.cast("float *", ffi.from_buffer(keep[-1][1])), 1
    status = lib.hl_decode_batch(m._ctx, csegs, len(segments))
    return status, ffi.string(lib.hl_last_error()).decode()


def test_bad_segments_are_refused(files):
    with open_model(files[0], n_batch=8, n_ctx=16) as m, open_model(files[0]) as other:
        s1, s2, foreign = m.sequence(), m.sequence(n_ctx=4), other.sequence()
        cases = [
            ([(s1.handle, [1] * 5, 5), (s2.handle, [2] * 4, 4)], lib.HL_ERR_INVALID, "9 tokens in all, expected 1 to n_batch = 8"),
            ([(s1.handle, [1], 1), (s2.handle, [], 0)], lib.HL_ERR_INVALID, "segment 1: 0 tokens, expected 1 or more"),
            ([(s1.handle, [1], 1), (foreign.handle, [2], 1)], lib.HL_ERR_INVALID, "segment 1: the sequence belongs to another context"),
            ([(s1.handle, [1], 1), (s1.handle, [2], 1)], lib.HL_ERR_INVALID, "segment 1: the sequence is also in segment 0"),
            ([(s1.handle, [1], 1), (s2.handle, [2] * 5, 5)], lib.HL_ERR_CONTEXT_FULL, "segment 1: context full: 0 cells used of 4, 5 more requested"),
            ([(s1.handle, [1, N_VOCAB], 2), (s2.handle, [2], 1)], lib.HL_ERR_INVALID, f"segment 0: token id {N_VOCAB} at index 1 is outside"),
        ]
        for segments, status, message in cases:
            got, text = decode_batch_status(m, segments)
            assert got == status and message in text, text
        assert s1.n_past == 0 and s2.n_past == 0  # nothing appended on error
        with pytest.raises(hotlora.HotLoraError, match="not a sequence of this model"):
            m.decode_batch([(s1, [1], False), (foreign, [1], False)])
        with pytest.raises(hotlora.HotLoraError, match="segment 1 has no token"):
            m.decode_batch([(s1, [1], False), (s2, [], False)])
        with pytest.raises(hotlora.HotLoraError, match="segment 1's sequence is in an earlier segment too"):
            m.decode_batch([(s1, [1], False), (s1, [2], False)])
        with pytest.raises(hotlora.HotLoraError, match="9 tokens in all, more than n_batch = 8"):
            m.decode_batch([(s1, [1] * 5, False), (s2, [2] * 4, False)])
        m.decode_batch([(s2, [1, 2, 3], False)])
        with pytest.raises(hotlora.errors.ContextFullError, match="do not fit in the sequence"):
            m.decode_batch([(s1, [1], False), (s2, [4, 5], False)])


@pytest.mark.parametrize("weight_type", ["Q4_0", "Q8_0"])
def test_quantized_adapters_and_base_match_alone(tmp_path, weight_type):
    """Q8_0 adapter tensors (quantized B through the multi-token kernel, per token range) on a quantized base:
    each segment of a mixed batch equals its run alone."""
    spec = TinySpec(weight_type=weight_type)
    model = write_tiny_model(tmp_path / "model.gguf", spec)
    a = write_tiny_adapter(tmp_path / "a.gguf", spec, ADAPTER_TARGETS, rank=32, tensor_type="Q8_0", seed=4)
    b = write_tiny_adapter(tmp_path / "b.gguf", spec, ["attn_v", "ffn_gate", "ffn_up", "output"], rank=32,
                           tensor_type="Q8_0", seed=5)
    prompts = [tokens_for(n, seed) for n, seed in ((3, 11), (5, 12), (2, 13))]
    sets = [[("a", 0.9)], [], [("a", 0.9), ("b", 1.1)]]
    with open_model(model) as m:
        adapters = {"a": m.load_adapter(a), "b": m.load_adapter(b)}
        seqs = [m.sequence() for _ in sets]
        for seq, names in zip(seqs, sets):
            seq.set_adapters(adapter_set(adapters, names))
        first = m.decode_batch([(s, p, True) for s, p in zip(seqs, prompts)])
        second = m.decode_batch([(s, [9], False) for s in seqs])
        for i, names in enumerate(sets):
            solo = alone(m, adapter_set(adapters, names), [(prompts[i], True), ([9], False)])
            base = alone(m, {}, [(prompts[i], True), ([9], False)])
            assert rel_error(first[i], solo[0]) <= ALONE_BOUND and rel_error(second[i], solo[1]) <= ALONE_BOUND
            assert not names or rel_error(first[i], base[0]) > MIN_EFFECT
