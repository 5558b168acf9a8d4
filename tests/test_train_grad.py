"""LoRA gradients of the C core (hotlora.train.gradients.LoraGradients) against the float64 numpy backward
(tests/reference_backward.py), which is itself checked against central finite differences of
tests/reference.py's forward.

Bounds:
- FD_BOUND = 1e-3: the numpy backward vs central differences (h = 1e-5, float64) per sampled element of A and
  B, relative to max(|fd|, 1e-3); measured ≤ 2e-7 (a quantized base is its dequantized weights to both).
- Core vs numpy backward, as max |core − reference| / max |reference| per gradient matrix:
  FLOAT_BOUND = 1e-4 for F32 and F16 bases (float32 accumulation over tiny sums; measured ≤ 2e-6).
  The reference reads the same dequantized weights (gguf.quants.dequantize), so the bases agree exactly.
  QUANT_BOUND = 1e-3 for quantized and BF16 bases: the engine dots their weights against activations rounded to
  Q8_0 / Q8_K / BF16, and the reference reproduces that rounding in the forward (tests/activations.py, act_quant;
  the backward is straight-through in both); measured ≤ 3e-6. An activation on a rounding near-tie that float32
  and float64 round differently moves all later positions (measured up to 2e-2 with B ~ N(0, 0.2), which makes
  the LoRA term as large as the base); with B ~ N(0, 0.05) no such flip occurred in 8 seeds x 2 types.
- Training logits vs the inference engine with the same weights loaded as an adapter (F32 KV cache), and vs
  the reference (with the activation rounding of a quantized base): LOGIT_BOUND = 1e-4 of max |logit|
  (different float order only; measured ≤ 1e-6, and 0 against the engine on a quantized base).
"""
from __future__ import annotations

import numpy as np
import pytest

import hotlora
import reference as R
import reference_backward as RB
from activations import roundtrip
from factory import TinySpec, write_adapter_file, write_tiny_model
from hotlora._native import ffi, lib
from hotlora.errors import HotLoraError, Interrupted
from hotlora.train.gradients import LoraGradients
from hotlora.train.params import TARGETS, LoraParams

FD_BOUND = 1e-3
FLOAT_BOUND = 1e-4
QUANT_BOUND = 1e-3
LOGIT_BOUND = 1e-4
ALL = list(TARGETS)
RANK, ALPHA = 4, 8.0

SPECS = {
    "llama": TinySpec(),
    "llama-tied": TinySpec(tied=True, n_head_kv=1),
    "llama-rope-freqs": TinySpec(rope_freqs=True, rope_scale_factor=2.0, attn_factor=1.1),
    "llama-biases": TinySpec(biases=True, tied=True),
    "llama-head-dim": TinySpec(head_dim=32),  # n_head * head_dim = 128 != n_embd
    "qwen2": TinySpec(arch="qwen2"),
    "qwen2-tied": TinySpec(arch="qwen2", tied=True),
}


def model_file(tmp_path, spec: TinySpec):
    return write_tiny_model(tmp_path / "m.gguf", spec)


def random_params(model: hotlora.Model, targets, seed: int) -> LoraParams:
    """PEFT init, then B random too (B = 0 gives dA = 0)."""
    rng = np.random.default_rng(seed)
    params = LoraParams.init(model, targets, RANK, ALPHA, rng)
    for b in params.b:
        b[:] = rng.normal(0.0, 0.05, size=b.shape)
    return params


def window(n_vocab: int, seed: int, n: int = 12):
    """tokens, their next-token targets, with the last and one middle position without loss."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, n_vocab, n + 1).astype(np.int32)
    targets = tokens[1:].copy()
    targets[n // 2] = -1
    targets[-1] = -1
    return tokens[:-1], targets


def as_pairs(params: LoraParams) -> RB.Pairs:
    return {n: (a.astype(np.float64), b.astype(np.float64)) for n, a, b in zip(params.names, params.a, params.b)}


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def core_gradients(model, params, tokens, targets, n_threads=2):
    with LoraGradients(model, params, n_tokens_max=16, n_threads=n_threads) as g:
        grad_a, grad_b = params.zeros_like()
        loss, count = g.accumulate(tokens, targets, grad_a, grad_b)
    return loss, count, grad_a, grad_b


# ---- the numpy backward against finite differences --------------------------------------------------------

@pytest.mark.parametrize("name,targets", [("llama", ["q", "v", "down"]), ("llama-tied", ["k", "o", "gate"]),
                                          ("qwen2", ["q", "k", "up"]), ("qwen2-tied", ALL),
                                          ("llama-rope-freqs", ["q", "k"]), ("llama-biases", ["v", "up"]),
                                          ("q4_k", ["o", "down"])])
def test_numpy_backward_matches_finite_differences(tmp_path, name, targets):
    spec = SPECS.get(name) or TinySpec(weight_type="Q4_K", n_embd=256, n_ff=256)
    path = model_file(tmp_path, spec)
    ref = R.load_ref_model(path)
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        pairs = as_pairs(random_params(model, targets, seed=1))
    tokens, labels = window(ref.hparams.n_vocab, seed=2, n=7)
    total, _, grads = RB.loss_and_grads(ref, tokens, labels, pairs, ALPHA)
    assert total == pytest.approx(RB.loss(ref, tokens, labels, pairs, ALPHA), rel=1e-12)
    rng, h, worst = np.random.default_rng(3), 1e-5, 0.0
    for base in list(pairs)[::2]:
        for half in (0, 1):
            x = pairs[base][half]
            for _ in range(2):
                i = tuple(int(rng.integers(0, n)) for n in x.shape)
                x[i] += h
                up = RB.loss(ref, tokens, labels, pairs, ALPHA)
                x[i] -= 2 * h
                down = RB.loss(ref, tokens, labels, pairs, ALPHA)
                x[i] += h
                fd = (up - down) / (2 * h)
                worst = max(worst, abs(fd - grads[base][half][i]) / max(abs(fd), 1e-3))
    assert worst <= FD_BOUND


# ---- the core against the numpy backward ------------------------------------------------------------------

def check_core(tmp_path, spec: TinySpec, targets, bound: float):
    path = model_file(tmp_path, spec)
    ref = R.load_ref_model(path)
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        types = {n: info.type_name for n, info in model.file.tensors.items()}
        rounds_inputs = spec.weight_type not in ("F32", "F16")
        act_quant = (lambda n, x: roundtrip(x, types[n])) if rounds_inputs else None
        params = random_params(model, targets, seed=4)
        tokens, labels = window(model.n_vocab, seed=5)
        loss, count, grad_a, grad_b = core_gradients(model, params, tokens, labels)
    total, _, grads = RB.loss_and_grads(ref, tokens, labels, as_pairs(params), ALPHA, act_quant)
    assert count == int((labels >= 0).sum())
    assert loss == pytest.approx(total, rel=bound)
    for name, ga, gb in zip(params.names, grad_a, grad_b):
        assert rel_error(ga, grads[name][0]) <= bound, name
        assert rel_error(gb, grads[name][1]) <= bound, name


@pytest.mark.parametrize("name", list(SPECS))
def test_core_matches_numpy_backward_f32(tmp_path, name):
    check_core(tmp_path, SPECS[name], ALL, FLOAT_BOUND)


@pytest.mark.parametrize("weight_type,tied,arch", [("F16", False, "llama"), ("BF16", True, "qwen2"),
                                                   ("Q8_0", False, "llama"), ("Q4_0", True, "qwen2"),
                                                   ("Q4_K", True, "llama"), ("Q6_K", False, "qwen2")])
def test_core_matches_numpy_backward_quantized(tmp_path, weight_type, tied, arch):
    spec = TinySpec(arch=arch, tied=tied, weight_type=weight_type, n_embd=256, n_ff=256, n_head=4, n_head_kv=2)
    check_core(tmp_path, spec, ["q", "v", "o", "down"] if tied else ["k", "gate", "up"],
               FLOAT_BOUND if weight_type == "F16" else QUANT_BOUND)


# ---- the training forward is the inference forward --------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "qwen2-tied", "q4_k-tied"])
def test_logits_match_inference_with_the_params_as_adapter(tmp_path, name):
    spec = SPECS.get(name) or TinySpec(weight_type="Q4_K", tied=True, n_embd=256, n_ff=256)
    path = model_file(tmp_path, spec)
    with hotlora.Model(path, n_ctx=32, n_threads=2, cache_type="f32", repack=False) as model:
        types = {n: info.type_name for n, info in model.file.tensors.items()}
        act_quant = (lambda n, x: roundtrip(x, types[n])) if spec.weight_type == "Q4_K" else None
        params = random_params(model, ALL, seed=6)
        tokens, _ = window(model.n_vocab, seed=7)
        with LoraGradients(model, params, n_tokens_max=16, n_threads=2) as g:
            ours = g.logits(tokens)
        tensors = {}
        for base, a, b in zip(params.names, params.a, params.b):
            tensors[base + ".lora_a"], tensors[base + ".lora_b"] = a, b
        adapter = model.load_adapter(write_adapter_file(tmp_path / "a.gguf", model.hparams.arch, tensors, ALPHA))
        base = model.eval(tokens.tolist())
        model.reset()
        model.set_adapters({adapter: 1.0})
        engine = model.eval(tokens.tolist())
    ref_model = R.load_ref_model(path)
    ref = R.forward(ref_model, tokens.tolist(), [(RB.adapter_of(ref_model, as_pairs(params), ALPHA), 1.0)],
                    act_quant=act_quant)
    assert rel_error(ours, engine) <= LOGIT_BOUND
    assert rel_error(ours, ref) <= LOGIT_BOUND
    assert rel_error(base, engine) > 100 * LOGIT_BOUND  # the adapter matters


# ---- accumulation and masked positions --------------------------------------------------------------------

def test_gradients_accumulate_and_masked_positions_add_nothing(tmp_path):
    path = model_file(tmp_path, SPECS["qwen2"])
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        params = random_params(model, ["q", "down"], seed=8)
        tokens, labels = window(model.n_vocab, seed=9)
        with LoraGradients(model, params, n_tokens_max=16, n_threads=2) as g:
            once_a, once_b = params.zeros_like()
            g.accumulate(tokens, labels, once_a, once_b)
            twice_a, twice_b = params.zeros_like()
            for _ in range(2):
                loss, count = g.accumulate(tokens, labels, twice_a, twice_b)
            none_a, none_b = params.zeros_like()
            assert g.accumulate(tokens, np.full_like(labels, -1), none_a, none_b) == (0.0, 0)
            other = labels.copy()
            other[labels < 0] = 1  # a loss at the masked positions changes the gradient
            moved_a, moved_b = params.zeros_like()
            g.accumulate(tokens, other, moved_a, moved_b)
    for one, two in zip(once_a + once_b, twice_a + twice_b):
        np.testing.assert_allclose(two, 2 * one, rtol=1e-6, atol=1e-7)
    assert all(not x.any() for x in none_a + none_b)
    assert max(rel_error(m, o) for m, o in zip(moved_b, once_b)) > 1e-3
    assert count == int((labels >= 0).sum()) and loss > 0


# ---- params and bad input ---------------------------------------------------------------------------------

def test_params_init_is_peft_init(tmp_path):
    path = model_file(tmp_path, SPECS["llama"])
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        params = LoraParams.init(model, ["down", "q"], 8, 16.0, np.random.default_rng(0))
    n_embd, n_ff = SPECS["llama"].n_embd, SPECS["llama"].n_ff
    assert params.names == ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight",
                            "blk.1.ffn_down.weight"]
    assert [a.shape for a in params.a[:2]] == [(8, n_embd), (8, n_ff)]
    assert [b.shape for b in params.b[:2]] == [(n_embd, 8), (n_embd, 8)]
    assert params.lora_scale == 2.0
    assert all(not b.any() for b in params.b)
    assert 0.9 / np.sqrt(n_ff) < np.abs(params.a[1]).max() <= 1 / np.sqrt(n_ff)
    with pytest.raises(HotLoraError, match="unknown LoRA target 'x'"):
        LoraParams.init(model, ["q", "x"], 8, 16.0, np.random.default_rng(0))
    with pytest.raises(HotLoraError, match="rank"):
        LoraParams.init(model, ["q"], 0, 16.0, np.random.default_rng(0))


def test_bad_shapes_are_refused_in_python(tmp_path):
    path = model_file(tmp_path, SPECS["llama"])
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        params = random_params(model, ["q"], seed=10)
        tokens, labels = window(model.n_vocab, seed=11)
        with LoraGradients(model, params, n_tokens_max=8, n_threads=1) as g:
            grad_a, grad_b = params.zeros_like()
            with pytest.raises(HotLoraError, match="1 to 8"):
                g.accumulate(tokens, labels, grad_a, grad_b)  # 12 tokens
            with pytest.raises(HotLoraError, match="gradient of LoRA A of blk.0.attn_q.weight"):
                g.accumulate(tokens[:8], labels[:8], [x.astype(np.float64) for x in grad_a], grad_b)
            with pytest.raises(HotLoraError, match="targets: ids must lie in -1"):
                g.accumulate(tokens[:8], np.full(8, model.n_vocab, np.int32), grad_a, grad_b)
            params.a[0] = params.a[0][:, :-1]
            with pytest.raises(HotLoraError, match="LoRA A of blk.0.attn_q.weight"):
                g.logits(tokens[:8])


def test_kept_activations_give_the_recomputed_gradients(tmp_path):
    path = model_file(tmp_path, SPECS["llama-tied"])
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        params = random_params(model, ALL, seed=12)
        tokens, labels = window(model.n_vocab, seed=13)
        results = []
        for keep in (False, True):
            with LoraGradients(model, params, n_tokens_max=16, n_threads=2, keep_activations=keep) as g:
                grad_a, grad_b = params.zeros_like()
                results.append((g.accumulate(tokens, labels, grad_a, grad_b), grad_a + grad_b, g.n_bytes))
    (loss0, grads0, bytes0), (loss1, grads1, bytes1) = results
    assert loss0 == loss1
    assert all(np.array_equal(x, y) for x, y in zip(grads0, grads1))  # the recompute is the same computation
    assert bytes1 > bytes0


def test_gradients_do_not_depend_on_the_thread_count(tmp_path):
    path = model_file(tmp_path, SPECS["qwen2-tied"])
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        params = random_params(model, ALL, seed=14)
        tokens, labels = window(model.n_vocab, seed=15)
        runs = [core_gradients(model, params, tokens, labels, n) for n in (1, 3, 8)]
    for loss, _, grad_a, grad_b in runs[1:]:
        assert loss == runs[0][0]
        assert all(np.array_equal(x, y) for x, y in zip(grad_a + grad_b, runs[0][2] + runs[0][3]))


def test_abort_stops_a_step(tmp_path):
    path = model_file(tmp_path, SPECS["llama"])
    with hotlora.Model(path, n_ctx=32, n_threads=1, repack=False) as model:
        params = random_params(model, ["q"], seed=16)
        tokens, labels = window(model.n_vocab, seed=17)
        with LoraGradients(model, params, n_tokens_max=16, n_threads=1) as g:
            grad_a, grad_b = params.zeros_like()
            raised = ffi.new("int32_t *", 1)  # as if abort() came from another thread once the step began
            lib.hl_train_set_abort(g._train, raised)
            with pytest.raises(Interrupted, match="training step aborted"):
                g.accumulate(tokens, labels, grad_a, grad_b)
            lib.hl_train_set_abort(g._train, g._abort_flag)
            assert g.accumulate(tokens, labels, grad_a, grad_b)[1] == int((labels >= 0).sum())
