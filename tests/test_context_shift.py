"""Context shift (gguf-llama.md §6, cli-surface.md §3.1): when the context fills, keep n_keep tokens, drop half
of the rest and re-rotate the later cached K, as llama-cli does; checked against the float64 reference."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import hotlora
from hotlora.errors import HotLoraError
from hotlora.session import Session, kept_tokens

from cli_util import hotlora as run_cli
from factory import TinySpec, write_tiny_model
from reference import decode, empty_cache, forward, load_ref_model, shift_cache

N_CTX = 64
F32_BOUND = 1e-4        # relative to max |logit|, as tests/test_forward.py
F16_CACHE_BOUND = 5e-3  # K and V rounded to F16, K re-rounded after each re-rotation
PROMPT = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48]

SPECS = {
    "llama": TinySpec(),
    "qwen2-neox": TinySpec(arch="qwen2", seed=3),
    "llama3-freqs-linear": TinySpec(rope_freqs=True, rope_scale_factor=2.0, seed=5),
}


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def engine_run(path, n_keep: int, n_tokens: int, cache_type: str = "f32"):
    """Greedy generation through context shifts: the tokens and the logits each was sampled from."""
    with hotlora.Model(path, n_ctx=N_CTX, n_threads=2, cache_type=cache_type) as m:
        session = Session(m, m.sampler(temp=0.0, ignore_eos=True), n_keep=n_keep)
        session.feed(PROMPT)
        tokens, logits = [], []
        for token, _ in session.steps(n_tokens):
            tokens.append(token)
            logits.append(session.logits.copy())
        return tokens, np.array(logits), session.n_shifts


def reference_run(path, n_keep: int, tokens: list[int], rerotate: bool = True) -> np.ndarray:
    """llama-cli's loop on the float64 reference, fed the engine's tokens: before a token is evaluated, if
    n_past + 1 >= n_ctx, keep n_keep cells, drop n_discard = (n_past - n_keep) / 2 and shift the rest."""
    model = load_ref_model(path)
    cache = empty_cache(model)
    logits = [decode(model, cache, PROMPT)[-1]]
    for token in tokens[:-1]:
        if cache.n_past + 1 >= N_CTX:
            shift_cache(model, cache, n_keep, (cache.n_past - n_keep) // 2, rerotate)
        logits.append(decode(model, cache, [token])[-1])
    return np.array(logits)


def test_reference_decode_with_a_cache_equals_forward(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    model = load_ref_model(path)
    cache = empty_cache(model)
    chunked = np.concatenate([decode(model, cache, PROMPT[:4]), decode(model, cache, PROMPT[4:])])
    np.testing.assert_allclose(chunked, forward(model, PROMPT), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(SPECS))
def test_tokens_after_shifts_follow_llama_cpp_rule_on_the_reference(tmp_path, name):
    path = write_tiny_model(tmp_path / "m.gguf", SPECS[name])
    n_keep = kept_tokens(4, len(PROMPT), add_bos=True)  # --keep 4 plus BOS
    tokens, ours, n_shifts = engine_run(path, n_keep, 150)
    assert len(tokens) == 150 and n_shifts >= 3
    ref = reference_run(path, n_keep, tokens)
    errors = [rel_error(o, r) for o, r in zip(ours, ref)]
    assert max(errors) <= F32_BOUND, (int(np.argmax(errors)), max(errors))
    eog = list(hotlora.Tokenizer(path).eog_ids)
    masked = ref.copy()
    masked[:, eog] = -np.inf                            # --ignore-eos
    assert tokens == [int(np.argmax(r)) for r in masked]  # greedy: the reference picks the same tokens
    # The check sees a shift that forgets to re-rotate K: logits after the first shift then differ.
    first_shift = N_CTX - len(PROMPT)
    wrong = reference_run(path, n_keep, tokens[:first_shift + 5], rerotate=False)
    assert rel_error(ours[first_shift + 4], wrong[first_shift + 4]) > 100 * F32_BOUND


def test_f16_cache_shift_stays_close_to_the_reference(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec(seed=7))
    n_keep = kept_tokens(-1, len(PROMPT), add_bos=True)  # the whole prompt
    tokens, ours, n_shifts = engine_run(path, n_keep, 120, cache_type="f16")
    assert n_shifts >= 2
    ref = reference_run(path, n_keep, tokens)
    assert max(rel_error(o, r) for o, r in zip(ours, ref)) <= F16_CACHE_BOUND


def test_kept_tokens_is_llama_cli_n_keep():
    assert kept_tokens(0, 10, add_bos=True) == 1        # BOS always stays
    assert kept_tokens(4, 10, add_bos=True) == 5
    assert kept_tokens(4, 10, add_bos=False) == 4
    assert kept_tokens(-1, 10, add_bos=True) == 10      # the whole prompt (BOS included)
    assert kept_tokens(11, 10, add_bos=True) == 10


def test_without_shift_generation_stops_when_the_context_is_full(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    with hotlora.Model(path, n_ctx=N_CTX, n_threads=1) as m:
        session = Session(m, m.sampler(temp=0.0, ignore_eos=True))
        session.feed(PROMPT)
        tokens = [t for t, _ in session.steps(-1)]
    assert session.stop == "context_full" and len(tokens) == N_CTX - len(PROMPT)  # as llama-cli


def test_kv_shift_refuses_bad_ranges(tmp_path):
    path = write_tiny_model(tmp_path / "m.gguf", TinySpec())
    with hotlora.Model(path, n_ctx=N_CTX, n_threads=1) as m:
        m.eval_last(PROMPT)
        for n_keep, n_discard in ((-1, 2), (2, 0), (4, 7), (11, 1)):
            with pytest.raises(HotLoraError, match="context shift"):
                m.kv_shift(n_keep, n_discard)
            assert hotlora.model.lib.hl_sequence_shift(m.default_sequence.handle, n_keep, n_discard) != 0
        m.kv_shift(1, 9)
        assert m.n_past == 1 and m.default_sequence.history == PROMPT[:1]


def test_minus_one_runs_through_shifts_until_an_end_of_generation_token():
    """-n -1 with shifting on: the only stop is an end-of-generation token (some seed samples it after the
    context has shifted at least once)."""
    through_shift = 0
    with hotlora.Model(n_ctx=32, n_threads=1) as m:
        for seed in range(12):
            m.reset()
            session = Session(m, m.sampler(seed=seed), n_keep=kept_tokens(0, 2, m.tokenizer.add_bos))
            session.feed(m.tokenize("The"))
            tokens = [t for t, _ in itertools.islice(session.steps(-1), 2000)]  # bounded, should it never end
            assert session.stop == "eog" and m.tokenizer.is_eog(tokens[-1])
            through_shift += session.n_shifts > 0
    assert through_shift > 0


def test_cli_generates_1000_tokens_in_a_context_of_256():
    """The acceptance run: the bundled model, -c 256, 1,000 tokens through context shifts, in seconds."""
    proc = run_cli("run", "-m", hotlora.model.default_model_path(), "-p", "Once upon a time", "-c", "256",
                   "-n", "1000", "--ignore-eos", "--keep", "-1", "--json", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["tokens"]) == 1000 and result["stop"] == "n_predict"
    assert result["timings"]["total_ms"] < 15000


@pytest.mark.parametrize("option", [["--no-context-shift"], ["-n", "-2"]])
def test_cli_no_context_shift_stops_quietly(option):
    proc = run_cli("run", "-m", hotlora.model.default_model_path(), "-p", "Once upon a time", "-c", "64",
                   "--ignore-eos", "--json", *option)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stop"] == "context_full"
    assert len(result["tokens"]) == 64 - len(result["prompt_tokens"])
