"""Sanity tests of the test oracle itself: tests/reference.py (float64 forward pass) and tests/factory.py."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

from factory import (ADAPTER_TARGETS, EOT_ID, K_QUANTS, MERGES, N_VOCAB, TOKENS, WEIGHT_TYPES, TinySpec,
                     gpt2_byte_chars, llama3_rope_freqs, resolve, tiny_adapter_tensors, tiny_model_tensors,
                     write_tiny_adapter, write_tiny_model)
from reference import forward, load_ref_adapter, load_ref_model, merge, with_hparams

TOKENS_IN = [EOT_ID, 3, 200, 257, 41, 41, 7, 268, 120, 99, 0, 255]
EXACT = dict(rtol=1e-10, atol=1e-10)


def model_of(tmp_path, spec: TinySpec, name: str = "model.gguf"):
    return load_ref_model(write_tiny_model(tmp_path / name, spec))


def adapter_of(tmp_path, spec: TinySpec, targets, name: str = "adapter.gguf", **kw):
    return load_ref_adapter(write_tiny_adapter(tmp_path / name, spec, targets, **kw))


# ----------------------------------------------------------------------------------------------------------
# Forward pass vs an independent per-token, per-head loop (1 layer)
# ----------------------------------------------------------------------------------------------------------

def naive_one_layer_logits(model, tokens):
    """gguf-llama.md §5 for a 1-layer llama (NORM rope) written as explicit per-token / per-head loops."""
    hp, w = model.hparams, model.weights
    hd, group = hp.head_dim, hp.n_head // hp.n_head_kv

    def norm(x, weight):
        return x / math.sqrt(sum(v * v for v in x) / len(x) + hp.rms_eps) * weight

    def proj(name, x):
        y = w[name + ".weight"] @ x
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rotate(vec, pos):
        out = vec.copy()
        for i in range(hd // 2):
            theta = pos * hp.rope_base ** (-2 * i / hd) / w["rope_freqs.weight"][i] * hp.freq_scale
            c, s = hp.attn_factor * math.cos(theta), hp.attn_factor * math.sin(theta)
            out[2 * i] = vec[2 * i] * c - vec[2 * i + 1] * s
            out[2 * i + 1] = vec[2 * i] * s + vec[2 * i + 1] * c
        return out

    xs = [w["token_embd.weight"][t] for t in tokens]
    qs, ks, vs = [], [], []
    for pos, x in enumerate(xs):
        h = norm(x, w["blk.0.attn_norm.weight"])
        q, k, v = proj("blk.0.attn_q", h), proj("blk.0.attn_k", h), proj("blk.0.attn_v", h)
        qs.append([rotate(q[i * hd:(i + 1) * hd], pos) for i in range(hp.n_head)])
        ks.append([rotate(k[g * hd:(g + 1) * hd], pos) for g in range(hp.n_head_kv)])
        vs.append([v[g * hd:(g + 1) * hd] for g in range(hp.n_head_kv)])

    logits = []
    for t, x in enumerate(xs):
        heads = []
        for i in range(hp.n_head):
            g = i // group
            scores = [float(qs[t][i] @ ks[j][g]) / math.sqrt(hd) for j in range(t + 1)]
            top = max(scores)
            e = [math.exp(s - top) for s in scores]
            heads.append(sum(e[j] / sum(e) * vs[j][g] for j in range(t + 1)))
        r = x + proj("blk.0.attn_output", np.concatenate(heads))
        f = norm(r, w["blk.0.ffn_norm.weight"])
        gate = proj("blk.0.ffn_gate", f)
        x = r + proj("blk.0.ffn_down", gate / (1 + np.exp(-gate)) * proj("blk.0.ffn_up", f))
        logits.append(w["output.weight"] @ norm(x, w["output_norm.weight"]))
    return np.array(logits)


def test_forward_matches_naive_loops(tmp_path):
    spec = TinySpec(n_layer=1, biases=True, rope_freqs=True, rope_scale_factor=2.0, attn_factor=1.3)
    model = model_of(tmp_path, spec)
    assert model.hparams.freq_scale == 0.5 and model.hparams.attn_factor == pytest.approx(1.3)
    np.testing.assert_allclose(forward(model, TOKENS_IN), naive_one_layer_logits(model, TOKENS_IN), **EXACT)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_causal(tmp_path, arch):
    model = model_of(tmp_path, TinySpec(arch=arch))
    full = forward(model, TOKENS_IN)
    altered = forward(model, TOKENS_IN[:5] + [1] * 7)
    np.testing.assert_allclose(forward(model, TOKENS_IN[:5]), full[:5], **EXACT)
    np.testing.assert_allclose(altered[:5], full[:5], **EXACT)
    assert np.abs(altered[5:] - full[5:]).max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------------------------------------

def hf_to_gguf_rows(m: np.ndarray, n_heads: int) -> np.ndarray:
    """gguf-llama.md §4: W_gguf[h·hd + 2j + s] = W_hf[h·hd + s·hd/2 + j] (rows; works for weights and biases)."""
    hd = m.shape[0] // n_heads
    return m.reshape(n_heads, 2, hd // 2, *m.shape[1:]).swapaxes(1, 2).reshape(m.shape)


def test_norm_rope_on_permuted_rows_equals_neox(tmp_path):
    qwen = model_of(tmp_path, TinySpec(arch="qwen2", rope_freq_base=1000.0))   # NEOX, q/k/v biases
    llama = with_hparams(qwen, arch="llama")                              # NORM
    hp = qwen.hparams
    for il in range(hp.n_layer):
        for part, heads in (("attn_q", hp.n_head), ("attn_k", hp.n_head_kv)):
            for kind in ("weight", "bias"):
                name = f"blk.{il}.{part}.{kind}"
                llama.weights[name] = hf_to_gguf_rows(qwen.weights[name], heads)
    expected = forward(qwen, TOKENS_IN)
    np.testing.assert_allclose(forward(llama, TOKENS_IN), expected, **EXACT)
    assert np.abs(forward(with_hparams(qwen, arch="llama"), TOKENS_IN) - expected).max() > 1e-3


def test_llama3_rope_freqs_table():
    table = llama3_rope_freqs(16, 10000.0)   # wavelengths 2π·10000^(2i/16): i ≤ 5 short, i = 6 mid, i = 7 long
    np.testing.assert_array_equal(table[:6], 1.0)
    assert table[7] == 8.0
    wavelen = 2 * np.pi * 10000.0 ** (12 / 16)
    s = (8192 / wavelen - 1) / 3
    assert table[6] == pytest.approx(1 / ((1 - s) / 8 + s), rel=1e-6) and 1 < table[6] < 8


def test_rope_freqs_ones_equals_no_rope_freqs(tmp_path):
    model = model_of(tmp_path, TinySpec(rope_freqs=True))
    plain = with_hparams(model)
    del plain.weights["rope_freqs.weight"]
    ones = with_hparams(model)
    ones.weights["rope_freqs.weight"][:] = 1.0
    np.testing.assert_allclose(forward(ones, TOKENS_IN), forward(plain, TOKENS_IN), **EXACT)
    assert np.abs(forward(model, TOKENS_IN) - forward(plain, TOKENS_IN)).max() > 1e-3


def test_linear_scaling_equals_rope_freqs_of_factor(tmp_path):
    scaled = model_of(tmp_path, TinySpec(rope_scale_factor=4.0), "scaled.gguf")
    table = with_hparams(model_of(tmp_path, TinySpec(rope_freqs=True), "table.gguf"))
    table.weights["rope_freqs.weight"][:] = 4.0
    np.testing.assert_allclose(forward(scaled, TOKENS_IN), forward(table, TOKENS_IN), **EXACT)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_attn_factor_equals_scaled_q_and_k(tmp_path, arch):
    model = model_of(tmp_path, TinySpec(arch=arch, attn_factor=1.5))
    scaled = with_hparams(model, attn_factor=1.0)
    for name, w in scaled.weights.items():
        if ".attn_q." in name or ".attn_k." in name:
            w *= 1.5   # rope is linear: rope_m(x) = m · rope(x)
    np.testing.assert_allclose(forward(model, TOKENS_IN), forward(scaled, TOKENS_IN), **EXACT)


# ----------------------------------------------------------------------------------------------------------
# GQA
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gqa_equals_mha_with_duplicated_kv_heads(tmp_path, arch):
    gqa = model_of(tmp_path, TinySpec(arch=arch, n_head=4, n_head_kv=2))
    hp = gqa.hparams
    mha = with_hparams(gqa, n_head_kv=hp.n_head)
    group = hp.n_head // hp.n_head_kv
    for name, w in gqa.weights.items():
        if ".attn_k." in name or ".attn_v." in name:
            heads = w.reshape(hp.n_head_kv, hp.head_dim, *w.shape[1:])
            mha.weights[name] = np.repeat(heads, group, axis=0).reshape(hp.n_head * hp.head_dim, *w.shape[1:])
    np.testing.assert_allclose(forward(mha, TOKENS_IN), forward(gqa, TOKENS_IN), **EXACT)


def test_head_dim_override(tmp_path):
    spec = TinySpec(n_embd=64, n_head=4, n_head_kv=2, head_dim=32)
    model = model_of(tmp_path, spec)
    assert model.hparams.head_dim == 32
    assert model.weights["blk.0.attn_q.weight"].shape == (128, 64)
    assert model.weights["blk.0.attn_output.weight"].shape == (64, 128)
    assert np.isfinite(forward(model, TOKENS_IN)).all()


# ----------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, targets", [
    (TinySpec(biases=True), ADAPTER_TARGETS),
    (TinySpec(arch="qwen2", tied=True), ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")),
])
def test_lora_runtime_equals_merged(tmp_path, spec, targets):
    model = model_of(tmp_path, spec)
    adapter = adapter_of(tmp_path, spec, targets, name="a.gguf", seed=1)
    other = adapter_of(tmp_path, spec, ("attn_q", "ffn_up"), name="b.gguf", rank=8, alpha=4.0, seed=2)
    base = forward(model, TOKENS_IN)
    for adapters in ([(adapter, 1.0)], [(adapter, -0.7)], [(adapter, 0.5), (other, 2.0)]):
        runtime = forward(model, TOKENS_IN, adapters)
        np.testing.assert_allclose(runtime, forward(merge(model, adapters), TOKENS_IN), **EXACT)
        assert np.abs(runtime - base).max() > 1e-2


def test_lora_scale_zero_is_base(tmp_path):
    model = model_of(tmp_path, TinySpec())
    adapter = adapter_of(tmp_path, TinySpec(), ADAPTER_TARGETS)
    np.testing.assert_array_equal(forward(model, TOKENS_IN, [(adapter, 0.0)]), forward(model, TOKENS_IN))


def test_lora_scale_formula(tmp_path):
    """scale = user_scale · alpha / rank (rank = lora_b.ne[0]); plain user_scale when alpha = 0."""
    spec = TinySpec()
    model = model_of(tmp_path, spec)
    a8 = adapter_of(tmp_path, spec, ["attn_v", "token_embd"], name="a8.gguf", rank=4, alpha=8.0)
    a4 = adapter_of(tmp_path, spec, ["attn_v", "token_embd"], name="a4.gguf", rank=4, alpha=4.0)
    a0 = adapter_of(tmp_path, spec, ["attn_v", "token_embd"], name="a0.gguf", rank=4, alpha=0.0)
    assert a8.scale("blk.0.attn_v.weight", 1.0) == 2.0 and a0.scale("token_embd.weight", 0.3) == 0.3
    np.testing.assert_allclose(forward(model, TOKENS_IN, [(a8, 1.0)]), forward(model, TOKENS_IN, [(a4, 2.0)]),
                               **EXACT)
    np.testing.assert_allclose(forward(model, TOKENS_IN, [(a8, 1.0)]), forward(model, TOKENS_IN, [(a0, 2.0)]),
                               **EXACT)


def test_token_embd_lora_is_a_row_lookup(tmp_path):
    spec = TinySpec()
    model = model_of(tmp_path, spec)
    adapter = adapter_of(tmp_path, spec, ["token_embd"])
    a, b = adapter.pairs["token_embd.weight"]
    assert a.shape == (N_VOCAB, 4) and b.shape == (spec.n_embd, 4)   # ne [r, n_vocab], [r, n_embd]
    merged = merge(model, [(adapter, 1.0)]).weights["token_embd.weight"]
    t = TOKENS_IN[2]
    expected_row = model.weights["token_embd.weight"][t] + 8.0 / 4 * (b @ a[t])
    np.testing.assert_allclose(merged[t], expected_row, **EXACT)


def untied(model):
    """The same function as a tied model, written with an explicit output.weight = token_embd."""
    copy = with_hparams(model)
    copy.weights["output.weight"] = copy.weights["token_embd.weight"].copy()
    return copy


@pytest.mark.parametrize("targets", [["token_embd"], ["output"], ["token_embd", "output"], ADAPTER_TARGETS])
def test_tied_model_output_side_adapters(tmp_path, targets):
    """Tied model: a token_embd pair acts at the input lookup only, an output pair at the head (W = token_embd);
    i.e. exactly what the same pairs do on the untied copy of the model. Merging unties."""
    spec = TinySpec(tied=True)
    model = model_of(tmp_path, spec)
    adapter = adapter_of(tmp_path, spec, targets, seed=5)
    adapters = [(adapter, 1.5)]
    runtime = forward(model, TOKENS_IN, adapters)
    np.testing.assert_allclose(runtime, forward(untied(model), TOKENS_IN, adapters), **EXACT)
    assert np.abs(runtime - forward(model, TOKENS_IN)).max() > 1e-2

    merged = merge(model, adapters)
    np.testing.assert_allclose(forward(merged, TOKENS_IN), runtime, **EXACT)
    embd = model.weights["token_embd.weight"]
    assert "output.weight" in merged.weights and "output.weight" not in model.weights
    if "output" not in targets:
        np.testing.assert_array_equal(merged.weights["output.weight"], embd)
    else:
        a, b = adapter.pairs["output.weight"]
        np.testing.assert_allclose(merged.weights["output.weight"], embd + 1.5 * 8.0 / 4 * (b @ a), **EXACT)
    if "token_embd" not in targets:
        np.testing.assert_array_equal(merged.weights["token_embd.weight"], embd)
    assert not np.array_equal(merged.weights["token_embd.weight"], merged.weights["output.weight"])


def test_tied_model_stays_tied_without_output_side_pairs(tmp_path):
    spec = TinySpec(tied=True)
    model = model_of(tmp_path, spec)
    adapter = adapter_of(tmp_path, spec, ["attn_q", "ffn_down"])
    assert "output.weight" not in merge(model, [(adapter, 1.0)]).weights


def test_tied_model_output_pair_must_fit_token_embd(tmp_path):
    spec = TinySpec(tied=True)
    model = model_of(tmp_path, spec)
    adapter = adapter_of(tmp_path, spec, ["output"])
    a, b = adapter.pairs["output.weight"]
    adapter.pairs["output.weight"] = (a, b[:-1])   # b (n_vocab - 1, r)
    with pytest.raises(ValueError, match="incorrect shape"):
        forward(model, TOKENS_IN, [(adapter, 1.0)])


def test_adapter_round_trip(tmp_path):
    spec = TinySpec(arch="qwen2")
    tensors = tiny_adapter_tensors(resolve(spec), ADAPTER_TARGETS, rank=4, seed=3)
    adapter = adapter_of(tmp_path, spec, ADAPTER_TARGETS, rank=4, seed=3, alpha=16.0)
    assert adapter.arch == "qwen2" and adapter.alpha == 16.0
    assert len(adapter.pairs) * 2 == len(tensors)
    for base, (a, b) in adapter.pairs.items():
        np.testing.assert_array_equal(a, tensors[base + ".lora_a"].intended)
        np.testing.assert_array_equal(b, tensors[base + ".lora_b"].intended)
    assert adapter.pairs["blk.1.ffn_down.weight"][0].shape == (4, spec.n_ff)      # lora_a ne [n_ff, r]
    assert adapter.pairs["blk.1.ffn_down.weight"][1].shape == (spec.n_embd, 4)    # lora_b ne [r, n_embd]
    f16 = adapter_of(tmp_path, spec, ADAPTER_TARGETS, name="f16.gguf", rank=4, seed=3, tensor_type="F16")
    for base, (a, b) in f16.pairs.items():
        np.testing.assert_allclose(a, adapter.pairs[base][0], rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Factory round trips
# ----------------------------------------------------------------------------------------------------------

def test_vocabulary_is_self_consistent():
    chars = gpt2_byte_chars()
    assert len(set(chars)) == 256 and chars[0x20] == "Ġ" and chars[0x0A] == "Ċ" and chars[0x41] == "A"
    assert len(set(TOKENS)) == len(TOKENS) == N_VOCAB
    assert all(left in TOKENS and right in TOKENS and left + right in TOKENS for left, right in MERGES)


def test_file_metadata_and_shapes(tmp_path):
    spec = TinySpec(biases=True, rope_freqs=True, head_dim=32)
    reader = gguf.GGUFReader(write_tiny_model(tmp_path / "m.gguf", spec))
    kv = {name: field.contents() for name, field in reader.fields.items()}
    assert kv["general.architecture"] == "llama" and kv["llama.attention.key_length"] == 32
    assert kv["llama.rope.dimension_count"] == 32 and kv["llama.context_length"] == 256
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.tokens"] == TOKENS
    assert kv["tokenizer.ggml.token_type"][EOT_ID] == 3 and kv["tokenizer.ggml.eos_token_id"] == EOT_ID
    assert kv["tokenizer.ggml.merges"][0] == "Ġ t"
    ne = {t.name: t.shape.tolist() for t in reader.tensors}
    assert ne["token_embd.weight"] == [64, N_VOCAB] and ne["output.weight"] == [64, N_VOCAB]
    assert ne["blk.1.attn_q.weight"] == [64, 128] and ne["blk.1.attn_k.weight"] == [64, 64]
    assert ne["blk.1.attn_output.weight"] == [128, 64] and ne["blk.1.ffn_down.weight"] == [96, 64]
    assert ne["blk.1.attn_k.bias"] == [64] and ne["rope_freqs.weight"] == [16]


def test_f32_round_trip_is_exact(tmp_path):
    spec = TinySpec(biases=True, rope_freqs=True)
    tensors = tiny_model_tensors(resolve(spec))
    model = model_of(tmp_path, spec)
    assert set(model.weights) == set(tensors)
    for name, tensor in tensors.items():
        assert model.weights[name].dtype == np.float64
        np.testing.assert_array_equal(model.weights[name], tensor.intended)


# Worst-case |dequantized − intended| / max|intended|: half a step, or a whole one where Q4_0/Q5_0 clip at +7d / +15d.
MAX_ERROR = {"F16": 1e-3, "BF16": 4e-3, "Q8_0": 1 / 200, "Q5_0": 1 / 15, "Q5_1": 1 / 28,
             "Q4_0": 1 / 7, "Q4_1": 1 / 13}


@pytest.mark.parametrize("weight_type", sorted(MAX_ERROR))
def test_quantized_weights_close_to_intended(tmp_path, weight_type):
    spec = TinySpec(weight_type=weight_type)
    model = model_of(tmp_path, spec)
    for name, tensor in tiny_model_tensors(resolve(spec)).items():
        got, want = model.weights[name], tensor.intended
        assert np.abs(got - want).max() <= MAX_ERROR[weight_type] * np.abs(want).max(), name
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99, name


@pytest.mark.parametrize("weight_type", K_QUANTS)
def test_kquant_weights_look_gaussian(tmp_path, weight_type):
    spec = resolve(TinySpec(weight_type=weight_type, n_layer=1))
    assert (spec.n_embd, spec.n_ff) == (256, 256)
    model = model_of(tmp_path, spec)
    for name, w in model.weights.items():
        if w.ndim != 2:
            continue
        std = 3 / np.sqrt(spec.n_embd) if name in ("token_embd.weight", "output.weight") else 1 / np.sqrt(w.shape[1])
        assert np.isfinite(w).all() and 0.7 * std < w.std() < 1.4 * std, name
        assert abs(w.mean()) < 0.1 * std, name


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
def test_every_weight_type_gives_sane_logits(tmp_path, weight_type):
    model = model_of(tmp_path, TinySpec(weight_type=weight_type, n_layer=1, tied=weight_type.endswith("K")))
    logits = forward(model, TOKENS_IN)
    assert logits.shape == (len(TOKENS_IN), N_VOCAB) and np.isfinite(logits).all()
    assert 1.0 < logits.std() < 10.0
