"""The C core's logits against the float64 numpy reference (tests/reference.py).

Bounds (relative to max |logit| of the reference):
- F32 weights, F32 cache: 1e-4 (float32 accumulation only).
- F16 weights: the same 1e-4: activations stay F32 and weights widen exactly.
- quantized and BF16 weights: the reference runs on the same dequantised weights. The engine also
  rounds each mat-mul input to 8 bits (Q8_0 / Q8_1 / Q8_K, tests/KERNEL_BOUNDS.md), or to BF16 for BF16
  weights (llama.cpp's vec_dot_type, for the CPU's BF16 dot products). With
  that rounding reproduced in the reference (tests/activations.py) rows agree to float32
  accumulation (assert_matches_rounded); against the plain reference the bound is QUANT_BOUND (≈ 2-3e-2 on
  these tiny random models), and the top-1 tokens mostly agree.
- F16 cache: K and V rounded to F16 (relative 2^-11 per element): F16_CACHE_BOUND.
"""
from __future__ import annotations


import numpy as np
import pytest

import hotlora
import gguf

from activations import assert_matches_rounded, roundtrip
from factory import N_VOCAB, TinySpec, resolve, write_tiny_model
from reference import forward, load_ref_model

F32_BOUND = 1e-4
QUANT_BOUND = 6e-2
F16_CACHE_BOUND = 3e-3

FLOAT_TYPES = ["F32", "F16"]  # mat-mul inputs stay F32
ROUNDED_INPUT_TYPES = ["BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def tokens_for(n_vocab: int, n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, n_vocab, size=n).tolist()


def core_logits(path, tokens, cache_type="f32", n_batch=512, n_threads=2) -> np.ndarray:
    with hotlora.Model(path, n_ctx=64, n_threads=n_threads, cache_type=cache_type, n_batch=n_batch) as m:
        return m.eval(tokens)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def check_against_reference(tmp_path, spec: TinySpec, bound: float, n_tokens=9, cache_type="f32", **kw):
    path = write_tiny_model(tmp_path / "m.gguf", spec)
    ref_model = load_ref_model(path)
    tokens = tokens_for(ref_model.hparams.n_vocab, n_tokens)
    ref = forward(ref_model, tokens)
    ours = core_logits(path, tokens, cache_type=cache_type, **kw)
    assert ours.shape == ref.shape
    err = rel_error(ours, ref)
    assert err <= bound, f"relative error {err:.3g} > {bound}"
    return ours, ref


ARCH_VARIANTS = {
    "llama": TinySpec(),
    "mha": TinySpec(n_head_kv=4),
    "gqa_4to1": TinySpec(n_head=8, n_head_kv=2),
    "tied": TinySpec(tied=True),
    "llama_biases": TinySpec(biases=True),
    "qwen2": TinySpec(arch="qwen2", n_head_kv=2, rope_freq_base=1e6, rms_eps=1e-6),
    "qwen2_tied": TinySpec(arch="qwen2", tied=True),
    "llama3_rope_freqs": TinySpec(rope_freqs=True, rope_freq_base=500000.0),
    "linear_rope_scaling": TinySpec(rope_scale_factor=4.0),
    "attn_factor": TinySpec(attn_factor=0.8),
    "head_dim_override": TinySpec(n_embd=64, n_head=4, head_dim=32),
    "three_layers": TinySpec(n_layer=3),
}


@pytest.mark.parametrize("variant", ARCH_VARIANTS)
def test_f32_matches_reference(tmp_path, variant):
    check_against_reference(tmp_path, ARCH_VARIANTS[variant], F32_BOUND)


@pytest.mark.parametrize("weight_type", FLOAT_TYPES[1:])
def test_float_weights_match_reference(tmp_path, weight_type):
    check_against_reference(tmp_path, TinySpec(weight_type=weight_type), F32_BOUND)


@pytest.mark.parametrize("weight_type", ROUNDED_INPUT_TYPES)
def test_rounded_input_weights_match_reference_on_dequantized(tmp_path, weight_type):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec(weight_type=weight_type))
    ref_model = load_ref_model(path)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    tokens = tokens_for(ref_model.hparams.n_vocab, 9)
    ours = core_logits(path, tokens)
    rounded = forward(ref_model, tokens, act_quant=lambda name, x: roundtrip(x, types[name]))
    assert_matches_rounded(ours, rounded)
    plain = forward(ref_model, tokens)
    assert rel_error(ours, plain) <= QUANT_BOUND
    assert (ours.argmax(-1) == plain.argmax(-1)).mean() >= 0.7


def test_f16_cache_matches_reference(tmp_path):
    check_against_reference(tmp_path, TinySpec(), F16_CACHE_BOUND, cache_type="f16")


@pytest.mark.parametrize("n_threads", [1, 3])
def test_thread_count_does_not_change_logits(tmp_path, n_threads):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    tokens = tokens_for(N_VOCAB, 40)  # two attention blocks of 32 queries, split over threads by head
    base = core_logits(path, tokens, n_threads=2)
    np.testing.assert_array_equal(core_logits(path, tokens, n_threads=n_threads), base)


def test_prompt_in_several_batches(tmp_path):
    """A prompt split into batches of 3 gives the all-at-once logits (up to float rounding)."""
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    tokens = tokens_for(N_VOCAB, 11)
    whole = core_logits(path, tokens)
    batched = core_logits(path, tokens, n_batch=3)
    np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_prompt_then_decode_equals_all_at_once(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec(n_head_kv=1))
    ref_model = load_ref_model(path)
    tokens = tokens_for(ref_model.hparams.n_vocab, 10)
    ref = forward(ref_model, tokens)
    with hotlora.Model(path, n_ctx=32, cache_type="f32", n_threads=2) as m:
        first = m.eval(tokens[:6])
        rest = [m.eval_last([t]) for t in tokens[6:]]
        assert m.n_past == 10
        m.reset()
        whole = m.eval(tokens)
    stepwise = np.concatenate([first, np.stack(rest)])
    np.testing.assert_allclose(stepwise, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    assert rel_error(stepwise, ref) <= F32_BOUND


def test_eval_last_equals_last_row_of_eval(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    tokens = tokens_for(N_VOCAB, 5)
    with hotlora.Model(path, n_ctx=32, cache_type="f32", n_threads=2) as m:
        last = m.eval_last(tokens)
        m.reset()
        every = m.eval(tokens)
    np.testing.assert_allclose(last, every[-1], rtol=0, atol=1e-5 * np.abs(every).max())


def test_model_properties(tmp_path):
    spec = resolve(TinySpec(n_layer=3))
    path = write_tiny_model(tmp_path / "m.gguf", spec)
    with hotlora.Model(path, n_ctx=48, n_threads=1) as m:
        assert (m.n_layer, m.n_embd, m.n_ctx) == (3, spec.n_embd, 48)
        assert m.n_vocab == load_ref_model(path).hparams.n_vocab
        assert m.detokenize(m.tokenize("hello there", add_bos=False)) == "hello there"


def test_context_full_is_an_error(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    with hotlora.Model(path, n_ctx=8, n_threads=1) as m:
        m.eval(tokens_for(N_VOCAB, 6))
        with pytest.raises(hotlora.HotLoraError, match="context"):
            m.eval(tokens_for(N_VOCAB, 3))
        assert m.n_past == 6


def test_abort_flag_stops_compute(tmp_path):
    """A raised abort flag stops the graph between nodes; the cache does not advance."""
    from hotlora._native import ffi, lib
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    with hotlora.Model(path, n_ctx=8, n_threads=2) as m:
        flag = ffi.new("int32_t *", 1)
        lib.hl_set_abort(m._ctx, flag)
        logits = np.empty(m.n_vocab, np.float32)
        tokens = ffi.new("int32_t[]", [1, 2])
        segment = ffi.new("hl_segment *", {"seq": lib.hl_context_sequence(m._ctx), "tokens": tokens, "n_tokens": 2,
                                           "logits": ffi.cast("float *", ffi.from_buffer(logits)), "all_logits": 0})
        status = lib.hl_decode_batch(m._ctx, segment, 1)
        assert status == lib.HL_ERR_ABORTED
        assert "abort" in ffi.string(lib.hl_last_error()).decode()
        assert m.n_past == 0
