"""Run-time LoRA in the library (`hotlora.Model.load_adapter` / `set_adapters` / `unload_adapter`), against the
float64 reference (tests/reference.py) and against itself.

Every engine run uses an F32 KV cache and 2 threads on tiny random models (tests/factory.py).

Bounds (max |engine − reference| / max |reference logit|):
- F32_BOUND = 1e-4: F32 (or F16) adapter tensors, F32 base: float32 accumulation only, as in
  tests/test_forward.py. F16 adapter tensors widen exactly to F32 and activations stay F32, so they get
  the same bound against the reference run on the dequantised adapter (the reference reads every tensor through
  `gguf.quants.dequantize`).
- BF16_BOUND = 1e-3: BF16 adapter tensors. A BF16 lora_a dots x rounded to BF16, as BF16 weights do (their
  activation type, tests/test_forward.py); B adds t = A·x from f32. Against the plain reference the engine
  measured 2.2e-4 (llama, qwen2 tied); against the reference with that rounding reproduced (`bf16_lora_linear`)
  it must agree to ACT_QUANT_LORA_BOUND (measured 3.3e-7).
- Q8_0_BOUND = 3e-3: Q8_0 adapter tensors (rank 32: lora_b's rows are `r` long and must be whole 32-blocks).
  The engine treats them like Q8_0 weights: the input of each Q8_0 product (x before lora_a, the r-vector
  A·x before lora_b) is rounded to Q8_0 (8 bits per element, per-32-block scale, tests/activations.py).
  Simulating exactly that rounding in the float64 reference, on these models with alpha = rank (scale 1, the
  adapter moves the logits by ≈ 33 % of max |logit|) gives 0.9–1.0e-3 for llama, tied llama and qwen2 (the
  engine measured 1.0e-3 / 1.3e-3 for the two parametrised models); the bound is 3e-3. That is against the
  reference on the dequantised Q8_0 adapter with unrounded activations; against the reference with that Q8_0
  rounding reproduced (`q8_0_lora_linear` below) the engine must agree to ACT_QUANT_LORA_BOUND (measured 3.5e-7).
- quantized base (Q4_0) with an F32 adapter: ACT_QUANT_LORA_BOUND = 1e-4 against the reference with the base
  products' inputs rounded as the engine rounds them (tests/activations.py, as tests/test_forward.py); the
  LoRA products stay F32.
- Runtime vs merged (engine on a merged F32 file, or the reference on merged weights): F32_BOUND.
- Same computation in a different float order (rank-concatenated adapter vs two adapters, batch vs decode,
  recompute after a swap vs fresh run): REORDER_BOUND = 1e-5.
- Adapter order swapped in set_adapters: ORDER_BOUND = 1e-6 (the engine applies adapters in set order, so only
  the summation order of the per-adapter terms changes). Same order: bitwise equal.
- Scale 0, no adapter, detached adapter: bitwise equal to the base (`np.array_equal`).
- ggla file vs GGUF adapter with the same F32 (or F16) content: GGLA_BOUND = 1e-6.

Every comparison also checks that the adapter changes the logits by far more than the bound.
"""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

import hotlora
import reference

from activations import roundtrip
from factory import (ADAPTER_TARGETS, N_VOCAB, TinySpec, encode, resolve, tiny_adapter_pairs,
                     tiny_adapter_tensors, write_adapter_file, write_ggla_adapter, write_model_like,
                     write_tiny_adapter, write_tiny_model)
from reference import forward, load_ref_adapter, load_ref_model, merge

F32_BOUND = 1e-4
Q8_0_BOUND = 3e-3
BF16_BOUND = 1e-3
ACT_QUANT_LORA_BOUND = 1e-4
REORDER_BOUND = 1e-5
ORDER_BOUND = 1e-6
GGLA_BOUND = 1e-6
MIN_EFFECT = 1e-2     # an adapter must move the logits by at least this (relative) for a comparison to count


def tokens_for(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, N_VOCAB, size=n).tolist()


TOKENS = tokens_for(9)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def open_model(path, **kw) -> hotlora.Model:
    return hotlora.Model(path, **{"n_ctx": 64, "n_threads": 2, "cache_type": "f32", **kw})


def engine_logits(model_path, tokens=TOKENS, adapters=(), **kw) -> np.ndarray:
    """Logits of `tokens` with adapters [(path, user_scale), ...] set in that order."""
    with open_model(model_path, **kw) as m:
        if adapters:
            m.set_adapters({m.load_adapter(path): scale for path, scale in adapters})
        return m.eval(tokens)


def ref_logits(model_path, tokens=TOKENS, adapters=(), act_quant=None) -> np.ndarray:
    model = load_ref_model(model_path)
    return forward(model, tokens, [(load_ref_adapter(p), s) for p, s in adapters], act_quant=act_quant)


def make_adapters(tmp_path, spec: TinySpec, adapters) -> list[tuple[object, float]]:
    """[(targets, write_tiny_adapter kwargs, user scale), ...] -> [(path, user scale), ...]"""
    out = []
    for i, (targets, kw, scale) in enumerate(adapters):
        out.append((write_tiny_adapter(tmp_path / f"adapter{i}.gguf", spec, targets, **kw), scale))
    return out


def write_mixed_rank_adapter(path, spec: TinySpec, ranks: dict[str, int], alpha=8.0, seed=0):
    """One adapter whose pairs have different ranks (PEFT rank_pattern): target -> rank."""
    tensors = {}
    for i, (target, rank) in enumerate(ranks.items()):
        tensors.update(tiny_adapter_tensors(resolve(spec), [target], rank=rank, seed=seed + i))
    return write_adapter_file(path, spec.arch, tensors, alpha=alpha)


# ----------------------------------------------------------------------------------------------------------
# 1. Against the reference
# ----------------------------------------------------------------------------------------------------------

F32_CASES = {
    "llama_all_targets": (TinySpec(biases=True), [(ADAPTER_TARGETS, {}, 1.0)]),
    "llama_scale_half": (TinySpec(), [(ADAPTER_TARGETS, {"seed": 4}, 0.5)]),
    "llama_negative_scale": (TinySpec(), [(ADAPTER_TARGETS, {"seed": 5}, -1.3)]),
    "alpha_zero": (TinySpec(), [(ADAPTER_TARGETS, {"alpha": 0.0, "seed": 6}, 0.25)]),
    "gqa_one_layer_only": (TinySpec(n_head=8, n_head_kv=2), [(ADAPTER_TARGETS, {"layers": [1]}, 1.0)]),
    "tied_all_targets": (TinySpec(tied=True), [(ADAPTER_TARGETS, {}, 1.0)]),
    "tied_output_only": (TinySpec(tied=True), [(("output",), {"seed": 7}, 1.0)]),
    "tied_token_embd_only": (TinySpec(tied=True), [(("token_embd",), {"seed": 8}, 1.0)]),
    "qwen2": (TinySpec(arch="qwen2", rope_freq_base=1e6), [(ADAPTER_TARGETS, {}, 1.0)]),
    "qwen2_tied": (TinySpec(arch="qwen2", tied=True), [(ADAPTER_TARGETS, {"seed": 2}, 0.5)]),
    "three_adapters": (TinySpec(), [(ADAPTER_TARGETS, {"seed": 1}, 0.5),
                                    (("attn_q", "ffn_up", "output"), {"rank": 8, "alpha": 4.0, "seed": 2}, 2.0),
                                    (("attn_v", "token_embd"), {"rank": 2, "alpha": 0.0, "seed": 3}, -0.7)]),
    "tied_two_adapters": (TinySpec(tied=True), [(("token_embd", "attn_k"), {"seed": 1}, 1.0),
                                                (("output", "ffn_gate"), {"rank": 16, "alpha": 16.0, "seed": 2}, 1.0)]),
}


@pytest.mark.parametrize("case", F32_CASES)
def test_f32_adapters_match_reference(tmp_path, case):
    spec, adapter_specs = F32_CASES[case]
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    adapters = make_adapters(tmp_path, spec, adapter_specs)
    ref = ref_logits(model, adapters=adapters)
    assert rel_error(ref_logits(model), ref) > MIN_EFFECT
    ours = engine_logits(model, adapters=adapters)
    assert ours.shape == ref.shape
    err = rel_error(ours, ref)
    assert err <= F32_BOUND, f"relative error {err:.3g} > {F32_BOUND}"


def test_per_tensor_ranks_match_reference(tmp_path):
    """rank_pattern: each pair's scale uses its own rank (lora_b.ne[0])."""
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    path = write_mixed_rank_adapter(tmp_path / "mixed.gguf", spec,
                                    {"attn_q": 2, "attn_v": 8, "ffn_down": 16, "token_embd": 4, "output": 1})
    ref = ref_logits(model, adapters=[(path, 1.0)])
    assert rel_error(ref_logits(model), ref) > MIN_EFFECT
    assert rel_error(engine_logits(model, adapters=[(path, 1.0)]), ref) <= F32_BOUND


ADAPTER_TYPE_BOUNDS = {"F16": F32_BOUND, "BF16": BF16_BOUND, "Q8_0": Q8_0_BOUND}


def q8_0_lora_linear(model, lora, name, x, site=None):
    """reference.linear with the inputs of the (Q8_0) LoRA products rounded to Q8_0 as the engine rounds them."""
    y = x @ model.weights[name].T
    for s, a, b in lora.get(site or name):
        y = y + s * (roundtrip(roundtrip(x, "Q8_0") @ a.T, "Q8_0") @ b.T)
    bias = model.weights.get(name.removesuffix(".weight") + ".bias")
    return y if bias is None else y + bias


def bf16_lora_linear(model, lora, name, x, site=None):
    """reference.linear with the input of the (BF16) lora_a products rounded to BF16 as the engine rounds it (the
    B half is axpy'd from t = A·x in f32; at token_embd, t is a row of A and already BF16)."""
    y = x @ model.weights[name].T
    for s, a, b in lora.get(site or name):
        y = y + s * ((roundtrip(x, "BF16") @ a.T) @ b.T)
    bias = model.weights.get(name.removesuffix(".weight") + ".bias")
    return y if bias is None else y + bias


ROUNDED_LORA_LINEAR = {"Q8_0": q8_0_lora_linear, "BF16": bf16_lora_linear}


@pytest.mark.parametrize("spec", [TinySpec(), TinySpec(arch="qwen2", tied=True)], ids=["llama", "qwen2_tied"])
@pytest.mark.parametrize("tensor_type", sorted(ADAPTER_TYPE_BOUNDS))
def test_typed_adapters_match_reference_on_dequantized(tmp_path, monkeypatch, spec, tensor_type):
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    rank = 32 if tensor_type == "Q8_0" else 4
    path = write_tiny_adapter(tmp_path / "a.gguf", spec, ADAPTER_TARGETS, rank=rank, alpha=float(rank) * 2,
                              tensor_type=tensor_type, seed=3)
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert set(stored.values()) == {tensor_type}
    ref = ref_logits(model, adapters=[(path, 0.5)])
    assert rel_error(ref_logits(model), ref) > MIN_EFFECT
    ours = engine_logits(model, adapters=[(path, 0.5)])
    err = rel_error(ours, ref)
    assert err <= ADAPTER_TYPE_BOUNDS[tensor_type], f"{tensor_type}: relative error {err:.3g}"
    if tensor_type in ROUNDED_LORA_LINEAR:
        monkeypatch.setattr(reference, "linear", ROUNDED_LORA_LINEAR[tensor_type])
        rounded = ref_logits(model, adapters=[(path, 0.5)])
        assert rel_error(rounded, ref) > ADAPTER_TYPE_BOUNDS[tensor_type] / 10   # the rounding is visible...
        assert rel_error(ours, rounded) <= ACT_QUANT_LORA_BOUND   # ...and the engine does exactly that


def test_mixed_adapter_types_together(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    adapters = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {"tensor_type": "F16", "seed": 1}, 1.0),
                                              (("attn_q", "ffn_up"), {"tensor_type": "BF16", "seed": 2}, 1.0),
                                              (("attn_v", "output"), {"seed": 3}, 1.0)])
    # the BF16 adapter's lora_a products see x rounded to BF16
    assert rel_error(engine_logits(model, adapters=adapters), ref_logits(model, adapters=adapters)) <= BF16_BOUND


def test_quantized_base_with_f32_adapter(tmp_path):
    """A Q4_0 base: the base products see Q8_0-rounded inputs (as without adapters); the LoRA terms are F32."""
    spec = TinySpec(weight_type="Q4_0")
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(model).tensors}
    adapters = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {}, 1.0)])
    rounded = ref_logits(model, adapters=adapters, act_quant=lambda name, x: roundtrip(x, types[name]))
    assert rel_error(ref_logits(model, act_quant=lambda name, x: roundtrip(x, types[name])), rounded) > MIN_EFFECT
    assert rel_error(engine_logits(model, adapters=adapters), rounded) <= ACT_QUANT_LORA_BOUND


@pytest.mark.parametrize("spec", [TinySpec(), TinySpec(tied=True)], ids=["llama", "tied"])
def test_prompt_then_decode_equals_all_at_once(tmp_path, spec):
    """The single-token (decode) path applies the adapters like the batch path; several batches too."""
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    adapters = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {}, 1.0)])
    tokens = tokens_for(10, seed=2)
    whole = engine_logits(model, tokens, adapters)
    with open_model(model) as m:
        m.set_adapters({m.load_adapter(adapters[0][0]): 1.0})
        first = m.eval(tokens[:6])
        rest = [m.eval_last([t]) for t in tokens[6:]]
    assert rel_error(np.concatenate([first, np.stack(rest)]), whole) <= REORDER_BOUND
    assert rel_error(engine_logits(model, tokens, adapters, n_batch=3), whole) <= REORDER_BOUND
    assert rel_error(whole, ref_logits(model, tokens, adapters)) <= F32_BOUND


@pytest.mark.parametrize("tensor_type", sorted(ROUNDED_LORA_LINEAR))
def test_decode_sized_steps_round_a_quantized_lora_a_input_as_the_reference(tmp_path, monkeypatch, tensor_type):
    """Below 4 tokens each thread converts x for its own A rows (mul_mat.c); the logits of 1- and 3-token steps
    are those of the reference that rounds the LoRA products' inputs as the engine does."""
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    rank = 32 if tensor_type == "Q8_0" else 4
    path = write_tiny_adapter(tmp_path / "a.gguf", spec, ADAPTER_TARGETS, rank=rank, alpha=float(rank) * 2,
                              tensor_type=tensor_type, seed=5)
    tokens = tokens_for(9, seed=4)
    with open_model(model) as m:
        m.set_adapters({m.load_adapter(path): 0.5})
        singles = np.stack([m.eval_last([t]) for t in tokens])
    threes = engine_logits(model, tokens, [(path, 0.5)], n_batch=3)
    monkeypatch.setattr(reference, "linear", ROUNDED_LORA_LINEAR[tensor_type])
    rounded = ref_logits(model, tokens, [(path, 0.5)])
    assert rel_error(singles, rounded) <= ACT_QUANT_LORA_BOUND
    assert rel_error(threes, rounded) <= ACT_QUANT_LORA_BOUND


# ----------------------------------------------------------------------------------------------------------
# 2. Runtime equals merged
# ----------------------------------------------------------------------------------------------------------

MERGE_CASES = {
    "llama_two_adapters": (TinySpec(biases=True), [(ADAPTER_TARGETS, {"seed": 1}, 1.0),
                                                   (("attn_q", "ffn_up"), {"rank": 8, "alpha": 4.0, "seed": 2}, -0.5)]),
    "tied_unties": (TinySpec(tied=True), [(ADAPTER_TARGETS, {"seed": 3}, 1.0)]),
    "qwen2": (TinySpec(arch="qwen2"), [(ADAPTER_TARGETS, {"seed": 4}, 0.5)]),
}


@pytest.mark.parametrize("case", MERGE_CASES)
def test_runtime_equals_merged(tmp_path, case):
    spec, adapter_specs = MERGE_CASES[case]
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    adapters = make_adapters(tmp_path, spec, adapter_specs)
    ref_model = load_ref_model(model)
    merged = merge(ref_model, [(load_ref_adapter(p), s) for p, s in adapters])
    if spec.tied:
        assert "output.weight" in merged.weights   # merging a tied model's token_embd/output pairs unties it
    merged_path = write_model_like(tmp_path / "merged.gguf", model, merged.weights)

    runtime = engine_logits(model, adapters=adapters)
    assert rel_error(runtime, forward(ref_model, TOKENS)) > MIN_EFFECT
    assert rel_error(runtime, forward(merged, TOKENS)) <= F32_BOUND
    assert rel_error(runtime, engine_logits(merged_path)) <= F32_BOUND


# ----------------------------------------------------------------------------------------------------------
# 3. Bitwise identities
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [TinySpec(), TinySpec(tied=True)], ids=["llama", "tied"])
def test_no_adapter_scale_zero_and_detached_are_bitwise_base(tmp_path, spec):
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    (a_path, _), (b_path, _) = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {"seed": 1}, 1.0),
                                                              (("attn_q", "output"), {"seed": 2}, 1.0)])
    base = engine_logits(model)
    only_b = engine_logits(model, adapters=[(b_path, 1.0)])
    with open_model(model) as m:
        a = m.load_adapter(a_path)
        np.testing.assert_array_equal(m.eval(TOKENS), base)          # loaded, not set
        m.reset()
        m.set_adapters({a: 0.0})
        np.testing.assert_array_equal(m.eval(TOKENS), base)          # scale 0 is skipped
        m.reset()
        m.set_adapters({a: 1.0})
        assert rel_error(m.eval(TOKENS), base) > MIN_EFFECT
        m.reset()
        m.set_adapters({})
        np.testing.assert_array_equal(m.eval(TOKENS), base)          # detached
        b = m.load_adapter(b_path)
        m.reset()
        m.set_adapters({a: 0.0, b: 1.0})
        np.testing.assert_array_equal(m.eval(TOKENS), only_b)        # a scale-0 adapter adds nothing
        m.reset()
        m.set_adapters({a: 1.0})
        m.eval(TOKENS)
        m.unload_adapter(a)
        m.reset()
        np.testing.assert_array_equal(m.eval(TOKENS), base)          # unloaded while active
        m.unload_adapter(b)


def test_scale_zero_from_the_start_is_bitwise_base(tmp_path):
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec(arch="qwen2", tied=True))
    adapters = make_adapters(tmp_path, TinySpec(arch="qwen2", tied=True), [(ADAPTER_TARGETS, {}, 0.0)])
    np.testing.assert_array_equal(engine_logits(model, adapters=adapters), engine_logits(model))


# ----------------------------------------------------------------------------------------------------------
# 4. Several adapters: sums of deltas, order, determinism
# ----------------------------------------------------------------------------------------------------------

def test_output_head_deltas_add_up(tmp_path):
    """Adapters on the output head only change the logits linearly: Δ(A+B) = ΔA + ΔB."""
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    a, b = make_adapters(tmp_path, spec, [(("output",), {"seed": 1}, 1.0), (("output",), {"seed": 2, "rank": 8}, 0.7)])
    base = engine_logits(model).astype(np.float64)
    delta_a = engine_logits(model, adapters=[a]) - base
    delta_b = engine_logits(model, adapters=[b]) - base
    both = engine_logits(model, adapters=[a, b]) - base
    assert np.abs(delta_a).max() > MIN_EFFECT * np.abs(base).max()
    assert np.abs(both - (delta_a + delta_b)).max() <= REORDER_BOUND * np.abs(base).max()


def concat_rank(pairs_a, pairs_b):
    """One adapter whose B·A is the sum of two adapters' (same alpha / rank): ranks concatenated."""
    out = {}
    for name in pairs_a:
        (a1, b1), (a2, b2) = pairs_a[name], pairs_b[name]
        if name == "token_embd.weight":   # a (n_vocab, r), b (n_embd, r)
            out[name] = (np.hstack([a1, a2]), np.hstack([b1, b2]))
        else:                             # a (r, n_in), b (n_out, r)
            out[name] = (np.vstack([a1, a2]), np.hstack([b1, b2]))
    return out


@pytest.mark.parametrize("spec", [TinySpec(), TinySpec(tied=True)], ids=["llama", "tied"])
def test_two_adapters_equal_one_with_summed_delta(tmp_path, spec):
    """{A: 1, B: 1} (rank 4 each, alpha 8) equals one rank-8 adapter with alpha 16 holding both: the same
    Σ s·B·A through the whole network."""
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    a, b = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {"seed": 1}, 1.0), (ADAPTER_TARGETS, {"seed": 2}, 1.0)])
    pairs = concat_rank(tiny_adapter_pairs(spec, ADAPTER_TARGETS, seed=1),
                        tiny_adapter_pairs(spec, ADAPTER_TARGETS, seed=2))
    tensors = {}
    for name, (lora_a, lora_b) in pairs.items():
        tensors[name + ".lora_a"], tensors[name + ".lora_b"] = encode(lora_a, "F32"), encode(lora_b, "F32")
    c = write_adapter_file(tmp_path / "concat.gguf", spec.arch, tensors, alpha=16.0)
    both = engine_logits(model, adapters=[a, b])
    assert rel_error(both, engine_logits(model, adapters=[a])) > MIN_EFFECT
    assert rel_error(both, engine_logits(model, adapters=[(c, 1.0)])) <= REORDER_BOUND


def test_same_file_loaded_twice_counts_twice(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    [(path, _)] = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {}, 1.0)])
    twice = engine_logits(model, adapters=[(path, 1.0), (path, 1.0)])
    assert rel_error(twice, engine_logits(model, adapters=[(path, 2.0)])) <= REORDER_BOUND
    assert rel_error(twice, engine_logits(model, adapters=[(path, 1.0)])) > MIN_EFFECT


def test_stacking_is_deterministic_and_order_only_rounds(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    (a_path, _), (b_path, _) = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {"seed": 1}, 1.0),
                                                              (ADAPTER_TARGETS, {"seed": 2, "rank": 8}, 1.0)])
    with open_model(model) as m:
        a, b = m.load_adapter(a_path), m.load_adapter(b_path)
        m.set_adapters({a: 0.8, b: -0.6})
        first = m.eval(TOKENS)
        m.reset()
        again = m.eval(TOKENS)
        m.reset()
        m.set_adapters({b: -0.6, a: 0.8})
        swapped = m.eval(TOKENS)
    np.testing.assert_array_equal(again, first)
    fresh = engine_logits(model, adapters=[(a_path, 0.8), (b_path, -0.6)])
    np.testing.assert_array_equal(fresh, first)
    assert rel_error(swapped, first) <= ORDER_BOUND


# ----------------------------------------------------------------------------------------------------------
# 5. Hot swapping, the KV cache and the base weights
# ----------------------------------------------------------------------------------------------------------

def greedy(m: hotlora.Model, logits: np.ndarray, n: int) -> tuple[list[int], list[np.ndarray]]:
    """n greedy steps from `logits`: the tokens and the logits each one was evaluated to."""
    tokens, seen = [], []
    for _ in range(n):
        token = int(np.argmax(logits))
        tokens.append(token)
        logits = m.eval_last([token])
        seen.append(logits)
    return tokens, seen


SWAPS = {"A_to_B": ("A", "B", "eval_last"), "A_to_base": ("A", None, "eval_last"),
         "base_to_A": (None, "A", "eval_last"), "A_to_B_with_eval": ("A", "B", "eval")}


@pytest.fixture(scope="module")
def swap_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swap")
    spec = TinySpec()
    model = write_tiny_model(tmp / "m.gguf", spec)
    return model, {"A": write_tiny_adapter(tmp / "a.gguf", spec, ADAPTER_TARGETS, seed=1, alpha=16.0),
                   "B": write_tiny_adapter(tmp / "b.gguf", spec, ("attn_k", "attn_v", "ffn_up"), seed=2, alpha=16.0)}


def run_with_swap(model_path, paths, before, after, first_call, prompt, k, n, **kw):
    """prompt + k greedy tokens under `before` (the k-th one sampled but not yet evaluated), swap to `after`, then
    evaluate it and n more greedy tokens.  -> (the k tokens, [logits after the swap, ...], the n tokens)."""
    with open_model(model_path, **kw) as m:
        file_before, core_before = getattr(m, "_file", None), getattr(m, "_model", None)
        loaded = {name: m.load_adapter(path) for name, path in paths.items()}
        m.set_adapters({loaded[before]: 1.0} if before else {})
        logits = m.eval_last(prompt)
        generated, seen = greedy(m, logits, k - 1)
        generated.append(int(np.argmax(seen[-1] if seen else logits)))   # sampled under `before`
        m.set_adapters({loaded[after]: 1.0} if after else {})
        if first_call == "eval":
            logits = m.eval([generated[-1]])[-1]
        else:
            logits = m.eval_last([generated[-1]])
        assert m.n_past == len(prompt) + k
        rest, seen = greedy(m, logits, n)
        assert getattr(m, "_file", None) is file_before, "the model file was reopened"
        assert getattr(m, "_model", None) == core_before, "the core model was recreated"
        return generated, [logits] + seen[:-1], rest


def fresh_run(model_path, paths, adapter, context, n):
    with open_model(model_path) as m:
        m.set_adapters({m.load_adapter(paths[adapter]): 1.0} if adapter else {})
        logits = m.eval_last(context)
        rest, seen = greedy(m, logits, n)
        return [logits] + seen[:-1], rest


@pytest.mark.parametrize("swap", SWAPS)
def test_swap_mid_generation_equals_fresh_run(swap_files, swap):
    """Tokens after a swap are those of a fresh model that evaluates the whole context under the new set: the
    cells computed under the old set are recomputed (lora_keep_cache=False, the default)."""
    model, paths = swap_files
    before, after, first_call = SWAPS[swap]
    prompt, k, n = tokens_for(6, seed=3), 4, 5
    generated, swapped_logits, swapped_rest = run_with_swap(model, paths, before, after, first_call, prompt, k, n)
    fresh_logits, fresh_rest = fresh_run(model, paths, after, prompt + generated, n)
    assert swapped_rest == fresh_rest
    for ours, fresh in zip(swapped_logits, fresh_logits):
        assert rel_error(ours, fresh) <= REORDER_BOUND
    # ...and the old set's cache would have given something else
    stale_logits, _ = fresh_run(model, paths, before, prompt + generated, 0)
    assert rel_error(stale_logits[0], fresh_logits[0]) > MIN_EFFECT


def test_keep_cache_reuses_stale_cells(swap_files):
    """lora_keep_cache=True keeps the cells computed under the old set (llama.cpp's behaviour): the first
    logits after the swap differ from a fresh run's, which proves the default recomputes."""
    model, paths = swap_files
    prompt, k = tokens_for(6, seed=3), 4
    generated, keep_logits, _ = run_with_swap(model, paths, "A", None, "eval_last", prompt, k, 0, lora_keep_cache=True)
    _, recompute_logits, _ = run_with_swap(model, paths, "A", None, "eval_last", prompt, k, 0)
    fresh_logits, _ = fresh_run(model, paths, None, prompt + generated, 0)
    assert rel_error(recompute_logits[0], fresh_logits[0]) <= REORDER_BOUND
    assert rel_error(keep_logits[0], fresh_logits[0]) > MIN_EFFECT
    # without a swap, keeping the cache changes nothing
    with open_model(model, lora_keep_cache=True) as m:
        m.set_adapters({m.load_adapter(paths["A"]): 1.0})
        kept = m.eval(prompt)
    assert rel_error(kept, engine_logits(model, prompt, [(paths["A"], 1.0)])) <= REORDER_BOUND


def test_same_set_again_keeps_the_cache(swap_files):
    """set_adapters with an equal set (same adapters, same scales) is not a change: nothing is re-evaluated.
    A new scale is a change: the whole stale prefix is re-evaluated once (counted in perf like any decode)."""
    model, paths = swap_files
    prompt = tokens_for(6, seed=4)
    with open_model(model) as m:
        def decoded():
            return m.perf.prompt_n + m.perf.eval_n
        a = m.load_adapter(paths["A"])
        m.set_adapters({a: 1.0})
        m.eval(prompt[:-1])
        m.set_adapters({a: 1.0})
        last = m.eval_last(prompt[-1:])
        assert m.n_past == len(prompt) and decoded() == len(prompt)
        m.set_adapters({a: 0.5})
        changed = m.eval_last([7])
        assert m.n_past == len(prompt) + 1 and decoded() == 2 * len(prompt) + 1
    assert rel_error(last, engine_logits(model, prompt, [(paths["A"], 1.0)])[-1]) <= REORDER_BOUND
    assert rel_error(changed, engine_logits(model, prompt + [7], [(paths["A"], 0.5)])[-1]) <= REORDER_BOUND


def test_base_weights_are_never_reloaded(tmp_path):
    """After the model is open its file can disappear: loading, setting, swapping and unloading adapters and
    evaluating only use the memory map already held (and the same core model)."""
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    (a_path, _), (b_path, _) = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {"seed": 1}, 1.0),
                                                              (("attn_q",), {"seed": 2}, 1.0)])
    expected_a = engine_logits(model, adapters=[(a_path, 1.0)])
    expected_b = engine_logits(model, adapters=[(b_path, 1.0)])
    with open_model(model) as m:
        file_before, core_before = getattr(m, "_file", None), getattr(m, "_model", None)
        mmap_before = getattr(getattr(file_before, "reader", None), "data", None)
        model.rename(tmp_path / "gone.gguf")
        a = m.load_adapter(a_path)
        m.set_adapters({a: 1.0})
        np.testing.assert_array_equal(m.eval(TOKENS), expected_a)
        b = m.load_adapter(b_path)
        m.set_adapters({b: 1.0})
        m.unload_adapter(a)
        m.reset()
        np.testing.assert_array_equal(m.eval(TOKENS), expected_b)
        assert getattr(m, "_file", None) is file_before
        assert getattr(getattr(getattr(m, "_file", None), "reader", None), "data", None) is mmap_before
        assert getattr(m, "_model", None) == core_before


# ----------------------------------------------------------------------------------------------------------
# 6. Legacy ggla files
# ----------------------------------------------------------------------------------------------------------

def parse_ggla(path) -> tuple[tuple[int, int, int, int], dict[str, tuple[int, list[int], np.ndarray]]]:
    """An independent reader of lora.md §8 (checks the factory's writer): header, name -> (ftype, ne, array)."""
    data = path.read_bytes()
    header = struct.unpack_from("<Iiii", data, 0)
    pos, tensors = 16, {}
    while pos < len(data):
        n_dims, name_len, ftype = struct.unpack_from("<iii", data, pos)
        pos += 12
        ne = list(struct.unpack_from(f"<{n_dims}i", data, pos))
        pos += 4 * n_dims
        name = data[pos:pos + name_len].decode()
        pos += name_len
        assert data[pos:pos + (-pos % 32)] == b"\0" * (-pos % 32)
        pos += -pos % 32
        dtype = {0: np.float32, 1: np.float16}[ftype]
        count = int(np.prod(ne))
        tensors[name] = (ftype, ne, np.frombuffer(data, dtype, count, pos).reshape(ne[::-1]))
        pos += count * np.dtype(dtype).itemsize
    return header, tensors


def test_ggla_writer_follows_the_format(tmp_path):
    spec = resolve(TinySpec())
    pairs = tiny_adapter_pairs(spec, ADAPTER_TARGETS, rank=4)
    path = write_ggla_adapter(tmp_path / "a.bin", pairs, alpha=8, rank_header=4, a_type="F16")
    assert path.read_bytes()[:4] == b"algg"
    header, tensors = parse_ggla(path)
    assert header == (0x67676C61, 1, 4, 8)
    assert len(tensors) == 2 * len(pairs)
    ftype, ne, values = tensors["blk.0.attn_q.weight.loraA"]
    assert ftype == 1 and ne == [4, spec.n_embd]                       # A transposed: ne [r, n_in]
    ftype, ne, values = tensors["blk.1.ffn_down.weight.loraB"]
    assert ftype == 0 and ne == [4, spec.n_embd]                       # B: ne [r, n_out]
    for base, (a, b) in pairs.items():
        lora_a = tensors[base + ".loraA"][2].astype(np.float64)
        lora_b = tensors[base + ".loraB"][2].astype(np.float64)
        delta = a.astype(np.float64) @ b.T if base == "token_embd.weight" else b.astype(np.float64) @ a
        # old semantics: W += s · mul_mat(loraA, loraB), i.e. loraB_np @ loraA_np.T in numpy orientation
        np.testing.assert_allclose(lora_b @ lora_a.T, delta, rtol=2e-3, atol=1e-4)


GGLA_CASES = {"llama": TinySpec(), "tied": TinySpec(tied=True), "qwen2": TinySpec(arch="qwen2")}


@pytest.mark.parametrize("case", GGLA_CASES)
def test_ggla_equals_gguf_with_the_same_content(tmp_path, case):
    spec = GGLA_CASES[case]
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    gguf_path = write_tiny_adapter(tmp_path / "a.gguf", spec, ADAPTER_TARGETS, rank=4, alpha=8.0, seed=5)
    ggla_path = write_ggla_adapter(tmp_path / "a.bin", tiny_adapter_pairs(spec, ADAPTER_TARGETS, rank=4, seed=5),
                                   alpha=8, rank_header=4)
    from_gguf = engine_logits(model, adapters=[(gguf_path, 0.75)])
    assert rel_error(from_gguf, engine_logits(model)) > MIN_EFFECT
    assert rel_error(engine_logits(model, adapters=[(ggla_path, 0.75)]), from_gguf) <= GGLA_BOUND


def test_ggla_f16_equals_gguf_f16(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    gguf_path = write_tiny_adapter(tmp_path / "a.gguf", spec, ADAPTER_TARGETS, tensor_type="F16", seed=6)
    pairs = tiny_adapter_pairs(spec, ADAPTER_TARGETS, seed=6)
    ggla_path = write_ggla_adapter(tmp_path / "a.bin", pairs, alpha=8, rank_header=4, a_type="F16", b_type="F16")
    assert rel_error(engine_logits(model, adapters=[(ggla_path, 1.0)]),
                     engine_logits(model, adapters=[(gguf_path, 1.0)])) <= GGLA_BOUND


def test_ggla_ranks_come_from_the_tensors(tmp_path):
    """The header r is not used for the scale: per-pair ranks (lora.md §10.9), alpha from the header."""
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    ranks = {"attn_q": 2, "ffn_down": 8, "token_embd": 4}
    gguf_path = write_mixed_rank_adapter(tmp_path / "mixed.gguf", spec, ranks, alpha=8.0, seed=1)
    pairs = {name: (a.astype(np.float32), b.astype(np.float32))
             for name, (a, b) in load_ref_adapter(gguf_path).pairs.items()}
    ggla_path = write_ggla_adapter(tmp_path / "mixed.bin", pairs, alpha=8, rank_header=16)
    expected = engine_logits(model, adapters=[(gguf_path, 1.0)])
    assert rel_error(engine_logits(model, adapters=[(ggla_path, 1.0)]), expected) <= GGLA_BOUND
    with open_model(model) as m:
        adapter = m.load_adapter(ggla_path)
        assert adapter.alpha == 8.0
        assert adapter.ranks == {"blk.0.attn_q.weight": 2, "blk.1.attn_q.weight": 2, "blk.0.ffn_down.weight": 8,
                                 "blk.1.ffn_down.weight": 8, "token_embd.weight": 4}


# ----------------------------------------------------------------------------------------------------------
# The Adapter object and library errors
# ----------------------------------------------------------------------------------------------------------

def test_adapter_attributes(tmp_path):
    spec = TinySpec()
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    path = write_tiny_adapter(tmp_path / "a.gguf", spec, ("attn_q", "ffn_up", "output", "token_embd"), rank=8,
                              alpha=4.0, layers=[1])
    with open_model(model) as m:
        adapter = m.load_adapter(path)
        assert isinstance(adapter, hotlora.Adapter)
        assert str(adapter.path) == str(path)
        assert adapter.alpha == 4.0
        targets = ["blk.1.attn_q.weight", "blk.1.ffn_up.weight", "output.weight", "token_embd.weight"]
        assert adapter.targets == sorted(targets)
        assert adapter.ranks == {name: 8 for name in targets}


def test_bad_adapter_raises_hotlora_error(tmp_path):
    model = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    wrong_arch = write_tiny_adapter(tmp_path / "q.gguf", TinySpec(arch="qwen2"), ("attn_q",))
    with open_model(model) as m:
        with pytest.raises(hotlora.HotLoraError, match="arch mismatch"):
            m.load_adapter(wrong_arch)
        with pytest.raises(hotlora.HotLoraError):
            m.load_adapter(tmp_path / "missing.gguf")
        # a failed load leaves the model usable
        np.testing.assert_array_equal(m.eval(TOKENS), engine_logits(model))


def test_a_long_batch_runs_adapted_projections_in_row_chunks(tmp_path):
    """300 tokens: each thread's 256 rows of ffn_gate and ffn_up run as chunks of 208 and 48 rows (mul_mat.c,
    LORA_CHUNK_BYTES), each followed by its LoRA B half; the logits still match the reference."""
    spec = TinySpec(n_ff=512)
    model = write_tiny_model(tmp_path / "m.gguf", spec)
    adapters = make_adapters(tmp_path, spec, [(ADAPTER_TARGETS, {}, 1.0)])
    tokens = tokens_for(300)
    ref = ref_logits(model, tokens, adapters)
    assert rel_error(ref_logits(model, tokens), ref) > MIN_EFFECT
    assert rel_error(engine_logits(model, tokens, adapters, n_ctx=320), ref) <= F32_BOUND
