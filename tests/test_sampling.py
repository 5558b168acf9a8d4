"""Tests for hotlora.sampling against independent references written from shared/spec/sampling.md."""

import math
import time
from collections import Counter

import numpy as np
import pytest

from hotlora.errors import HotLoraError
from hotlora.sampling import (
    Candidates,
    Mt19937,
    PenaltyWindow,
    Sampler,
    SamplerParams,
    apply_dist,
    apply_min_p,
    apply_penalties,
    apply_temperature,
    apply_temperature_ext,
    apply_top_k,
    apply_top_p,
    apply_typical,
    apply_xtc,
    draw_index,
)

F32 = np.float32
PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0, temp=1.0)  # no truncation, temperature 1


def mt19937_reference(seed: int, count: int) -> list[int]:
    """Textbook 32-bit MT19937 (init_genrand + tempering), written out in pure Python."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        prev = state[-1]
        state.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    outputs, index = [], 624
    for _ in range(count):
        if index == 624:
            for i in range(624):
                y = (state[i] & 0x80000000) | (state[(i + 1) % 624] & 0x7FFFFFFF)
                state[i] = state[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            index = 0
        y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        outputs.append(y)
    return outputs


def reference_u(a: int, b: int) -> float:
    return min((a + b * 2.0**32) / 2.0**64, math.nextafter(1.0, 0.0))


def softmax64(logits) -> list[float]:
    top = max(logits)
    weights = [math.exp(float(x) - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def candidates(logits) -> Candidates:
    logits = np.asarray(logits, dtype=F32)
    return Candidates(np.arange(len(logits)), logits.copy())


def random_logits(seed: int, n: int = 1000, scale: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, n).astype(F32)


# --- random numbers (§6) -------------------------------------------------------------------------------------

def test_reference_mt19937_matches_published_values():
    outputs = mt19937_reference(5489, 10000)
    assert outputs[0] == 3499211612
    assert outputs[9999] == 4123659995  # the C++ standard's check value for std::mt19937


@pytest.mark.parametrize("seed", [0, 1, 42, 5489, 0xFFFFFFFE])
def test_mt19937_stream_is_raw_mt19937(seed):
    rng = Mt19937(seed)
    assert rng.next_u32(1) + rng.next_u32(999) == mt19937_reference(seed, 1000)


def test_canonical_draws_follow_libstdcxx():
    a, b, c = mt19937_reference(7, 3)
    rng = Mt19937(7)
    assert rng.canonical_double() == reference_u(a, b)
    assert rng.canonical_float() == F32(c) / F32(2**32)


def test_discrete_draw_rule_hand_computed():
    probs = np.array([0.25, 0.5, 0.25], dtype=F32)  # cdf 0.25, 0.75, 1.0
    assert draw_index(probs, 0.0) == 0
    assert draw_index(probs, 0.25) == 0  # cdf >= u, not >
    assert draw_index(probs, math.nextafter(0.25, 1.0)) == 1
    assert draw_index(probs, 0.75) == 1
    assert draw_index(probs, math.nextafter(1.0, 0.0)) == 2
    assert draw_index(np.array([0.5, 0.0, 0.5], dtype=F32), 0.6) == 2  # zero-probability entries are skipped
    # unnormalised weights are divided by their sum: cdf 0.2, 0.6, 1.0
    assert draw_index(np.array([1.0, 2.0, 2.0], dtype=F32), 0.5) == 1


def test_dist_uses_two_outputs_per_draw_in_sorted_order():
    logits = np.log(np.array([0.2, 0.3, 0.5])).astype(F32)  # sorted: ids 2, 1, 0 with cdf 0.5, 0.8, 1.0
    checked = 0
    for seed in range(1, 40):
        outputs = mt19937_reference(seed, 4)
        expected = []
        for a, b in (outputs[0:2], outputs[2:4]):
            u = reference_u(a, b)
            if min(abs(u - 0.5), abs(u - 0.8)) < 1e-6:
                break
            expected.append(2 if u <= 0.5 else 1 if u <= 0.8 else 0)
        else:
            sampler = Sampler(SamplerParams(seed=seed, **PLAIN), 3, [], 16)
            assert [sampler.sample(logits), sampler.sample(logits)] == expected
            checked += 1
    assert checked > 30


def test_lone_candidate_consumes_no_random_numbers_but_greedy_does():
    rng = Mt19937(99)
    assert apply_dist(candidates([1.0]), rng) == 0
    assert rng.next_u32(1) == mt19937_reference(99, 1)

    rng = Mt19937(99)
    greedy = candidates([0.5, 2.0, 1.0])
    apply_temperature(greedy, F32(0.0))
    assert apply_dist(greedy, rng) == 1
    assert rng.next_u32(1) == mt19937_reference(99, 3)[2:]


# --- sampler behaviour -------------------------------------------------------------------------------------

def test_greedy_keeps_first_maximal_logit():
    cands = candidates([1.0, 3.0, 2.0, 3.0])
    apply_temperature(cands, F32(0.0))
    assert cands.logits.tolist() == [-math.inf, 3.0, -math.inf, -math.inf]

    sampler = Sampler(SamplerParams(seed=3, temp=0.0, top_k=0, top_p=1.0, min_p=0.0), 4, [], 16)
    assert sampler.sample(np.array([1.0, 3.0, 2.0, 3.0], dtype=F32)) == 1


def test_greedy_with_default_truncation_returns_argmax():
    sampler = Sampler(SamplerParams(temp=0.0), 5000, [], 64)
    for trial in range(20):
        logits = random_logits(trial, 5000)
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_negative_temperature_is_greedy():
    sampler = Sampler(SamplerParams(temp=-1.0, **{k: v for k, v in PLAIN.items() if k != "temp"}), 50, [], 64)
    logits = random_logits(5, 50)
    assert all(sampler.sample(logits) == int(np.argmax(logits)) for _ in range(10))


def generate(sampler: Sampler, steps: int) -> list[int]:
    tokens = []
    for step in range(steps):
        token = sampler.sample(random_logits(step, 300, 1.0))
        sampler.accept(token)
        tokens.append(token)
    return tokens


def test_fixed_seed_reproduces_sequence_across_instances_and_reset():
    params = SamplerParams(seed=1234, repeat_penalty=1.3, **PLAIN)
    first = Sampler(params, 300, [], 64)
    sequence = generate(first, 40)
    assert generate(Sampler(params, 300, [], 64), 40) == sequence
    first.reset()
    assert first.seed == 1234
    assert generate(first, 40) == sequence
    assert generate(Sampler(SamplerParams(seed=1235, **PLAIN), 300, [], 64), 40) != sequence


def test_random_seed_is_fresh_at_creation_and_reset():
    params = SamplerParams(seed=0xFFFFFFFF)
    sampler = Sampler(params, 10, [], 16)
    seeds = {sampler.seed, Sampler(params, 10, [], 16).seed}
    sampler.reset()
    seeds.add(sampler.seed)
    assert len(seeds) == 3
    assert all(0 <= seed < 2**32 for seed in seeds)
    assert Sampler(SamplerParams(seed=-1), 10, [], 16).seed != Sampler(SamplerParams(seed=-1), 10, [], 16).seed


def test_unconstrained_draws_follow_softmax():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5], dtype=F32)
    expected = softmax64(logits)
    sampler = Sampler(SamplerParams(seed=2024, **PLAIN), len(logits), [], 16)
    draws = 30000
    counts = Counter(sampler.sample(logits) for _ in range(draws))
    chi_square = sum((counts[i] - draws * p) ** 2 / (draws * p) for i, p in enumerate(expected))
    assert chi_square < 20.52  # chi-square, 5 degrees of freedom, alpha = 0.001


def test_temperature_sharpens_distribution():
    logits = np.array([1.0, 0.0], dtype=F32)
    sampler = Sampler(SamplerParams(seed=11, top_k=0, top_p=1.0, min_p=0.0, temp=0.5), 2, [], 16)
    draws = 20000
    share = sum(sampler.sample(logits) == 0 for _ in range(draws)) / draws
    assert abs(share - softmax64([2.0, 0.0])[0]) < 0.015


CORE_CASES = [
    dict(),                                                              # llama-cli's defaults
    dict(top_k=0, top_p=1.0, min_p=0.0, temp=1.0),                       # no truncation: sorts the whole vocabulary
    dict(temp=0.0),                                                      # greedy
    dict(top_k=3, typical_p=0.5, top_p=1.0),                             # typical reorders; min-p then runs unsorted
    dict(typical_p=0.9, top_p=0.8, min_p=0.2),
    dict(repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2, repeat_last_n=8),
    dict(xtc_probability=0.7, xtc_threshold=0.05, top_k=0),
    dict(dynatemp_range=0.5, dynatemp_exponent=1.7, top_k=100),
    dict(logit_bias={3: 2.5, 7: -1.0}, ignore_eos=True),
]


@pytest.mark.parametrize("case", range(len(CORE_CASES)))
def test_core_chain_draws_the_reference_chains_tokens(case):
    """The C core's chain (Sampler.sample) against the numpy reference (sample_reference), same seed, over
    logits with many ties, signed zeros and -inf (as a bias leaves): the same token at every step, penalties included."""
    rng = np.random.default_rng(case)
    params = SamplerParams(seed=1000 + case, **CORE_CASES[case])
    core, ref = (Sampler(params, 3000, [2], 64) for _ in range(2))
    for step in range(40):
        logits = (rng.integers(-6, 7, 3000) * 0.5).astype(F32) if step % 2 else rng.normal(0, 3, 3000).astype(F32)
        logits[rng.choice(3000, 30, replace=False)] = -0.0
        logits[rng.choice(3000, 2, replace=False)] = -np.inf
        token = core.sample(logits)
        assert token == ref.sample_reference(logits), (case, step)
        core.accept(token), ref.accept(token)


# --- truncation samplers against float64 references (§3) ---------------------------------------------------

def reference_top_k(logits, k):
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    return set(order[: len(logits) if k <= 0 else min(k, len(logits))])


def reference_top_p(logits, p):
    """(kept ids, distance of the nearest running sum to p): float32 sums may cut differently within ~1e-6."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    probs = softmax64([logits[i] for i in order])
    total, margin = 0.0, math.inf
    for n, prob in enumerate(probs, 1):
        total += prob
        margin = min(margin, abs(total - p))
        if total >= p:
            return set(order[:n]), margin
    return set(order), margin


def reference_min_p(logits, p):
    probs = softmax64(logits)
    return {i for i, prob in enumerate(probs) if prob >= p * max(probs)}


@pytest.mark.parametrize("trial", range(10))
def test_top_k_matches_reference(trial):
    logits = random_logits(trial)
    for k in (-1, 0, 1, 40, 200, 999, 1000, 5000):
        cands = candidates(logits)
        apply_top_k(cands, k)
        assert set(cands.ids.tolist()) == reference_top_k(logits.tolist(), k)
        assert cands.is_sorted and np.all(np.diff(cands.logits) <= 0)


@pytest.mark.parametrize("trial", range(10))
def test_top_p_matches_reference(trial):
    logits = random_logits(100 + trial)
    checked = 0
    for p in (0.05, 0.5, 0.9, 0.95, 0.999):
        expected, margin = reference_top_p(logits.tolist(), p)
        if margin < 2e-6:
            continue
        cands = candidates(logits)
        apply_top_p(cands, F32(p))
        assert set(cands.ids.tolist()) == expected
        checked += 1
    assert checked >= 4
    cands = candidates(logits)
    apply_top_p(cands, F32(1.0))
    assert len(cands) == len(logits) and not cands.is_sorted


@pytest.mark.parametrize("trial", range(10))
def test_min_p_matches_reference_sorted_and_unsorted(trial):
    logits = random_logits(200 + trial)
    for p in (0.01, 0.05, 0.3, 0.9):
        unsorted = candidates(logits)
        apply_min_p(unsorted, F32(p))
        assert set(unsorted.ids.tolist()) == reference_min_p(logits.tolist(), p)
        assert np.all(np.diff(unsorted.ids) > 0)  # the unsorted rule keeps the current order

        ordered = candidates(logits)
        apply_top_k(ordered, 0)
        apply_min_p(ordered, F32(p))
        assert set(ordered.ids.tolist()) == reference_min_p(logits.tolist(), p)


def test_top_p_stops_when_sum_reaches_p_exactly():
    equal = candidates([0.0, 0.0])  # p = 0.5, 0.5 exactly
    apply_top_p(equal, F32(0.5))
    assert equal.ids.tolist() == [0]


def test_min_p_sorted_rule_stops_at_first_low_logit():
    cands = Candidates(np.arange(4), np.array([0.0, -5.0, 0.0, 0.0], dtype=F32), is_sorted=True)
    apply_min_p(cands, F32(0.5))
    assert cands.ids.tolist() == [0]


@pytest.mark.parametrize("trial", range(5))
def test_default_chain_samples_inside_reference_set(trial):
    logits = random_logits(300 + trial, scale=1.5)
    values = logits.tolist()
    top40 = sorted(reference_top_k(values, 40), key=lambda i: -values[i])
    nucleus, _ = reference_top_p([values[i] for i in top40], 0.95)
    kept_after_top_p = [top40[i] for i in sorted(nucleus)]
    allowed = {kept_after_top_p[i] for i in reference_min_p([values[i] for i in kept_after_top_p], 0.05)}
    sampler = Sampler(SamplerParams(seed=trial), len(logits), [], 64)
    seen = {sampler.sample(logits) for _ in range(300)}
    assert seen <= allowed and len(seen) > 1


def test_typical_reorders_by_surprise_without_truncating():
    logits = random_logits(400, 50)
    cands = candidates(logits)
    apply_typical(cands, F32(0.2))
    probs = softmax64(logits.tolist())
    entropy = -sum(p * math.log(p) for p in probs)
    expected = sorted(range(len(probs)), key=lambda i: abs(-math.log(probs[i]) - entropy))
    assert cands.ids.tolist() == expected
    assert not cands.is_sorted


def test_xtc_drops_top_choices_but_the_least_likely():
    cands = candidates(np.log([0.4, 0.3, 0.2, 0.06, 0.04]))
    apply_xtc(cands, F32(1.0), F32(0.1), Mt19937(1))
    assert cands.ids.tolist() == [2, 3, 4]

    rng = Mt19937(1)
    untouched = candidates(np.log([0.4, 0.3, 0.2, 0.06, 0.04]))
    apply_xtc(untouched, F32(1.0), F32(0.6), rng)  # threshold > 0.5: off, and no draw
    assert untouched.ids.tolist() == [0, 1, 2, 3, 4]
    assert rng.next_u32(1) == mt19937_reference(1, 1)


def test_xtc_respects_its_probability():
    u = F32(mt19937_reference(8, 1)[0]) / F32(2**32)
    for probability, applied in ((u, True), (np.nextafter(u, F32(0)), False)):
        cands = candidates(np.log([0.5, 0.3, 0.2]))
        apply_xtc(cands, F32(probability), F32(0.1), Mt19937(8))
        assert (cands.ids.tolist() == [2]) == applied


def test_dynamic_temperature_follows_entropy():
    logits = random_logits(500, 30, 1.0)
    cands = candidates(logits)
    apply_temperature_ext(cands, F32(1.0), F32(0.5), F32(1.0))
    probs = softmax64(logits.tolist())
    entropy = -sum(p * math.log(p) for p in probs)
    temperature = 0.5 + 1.0 * (entropy / math.log(len(probs)))
    by_id = dict(zip(cands.ids.tolist(), cands.logits.tolist()))
    assert all(math.isclose(by_id[i], float(logits[i]) / temperature, rel_tol=1e-5, abs_tol=1e-6)
               for i in range(len(logits)))


# --- penalties (§3, §5) ------------------------------------------------------------------------------------

def test_penalty_arithmetic():
    window = PenaltyWindow(5, 64)
    for token in (0, 0, 1, 4):
        window.accept(token)
    cands = candidates([-1.0, 2.0, 0.5, 3.0, 0.0])
    apply_penalties(cands, window, F32(1.5), F32(0.25), F32(0.5))
    expected = [-1.0 * 1.5 - (2 * 0.25 + 0.5), 2.0 / 1.5 - 0.75, 0.5, 3.0, 0.0 * 1.5 - 0.75]
    assert np.allclose(cands.logits, expected, rtol=0, atol=1e-6)
    assert not cands.is_sorted


@pytest.mark.parametrize("last_n", [1, 3, 8])
def test_penalty_window_is_a_ring_buffer(last_n):
    window = PenaltyWindow(6, last_n)
    history = np.random.default_rng(last_n).integers(0, 6, 50).tolist()
    for step, token in enumerate(history, 1):
        window.accept(token)
        ids, counts = window.occurrences()
        assert dict(zip(ids.tolist(), counts.tolist())) == Counter(history[max(0, step - last_n):step])


def test_penalty_window_drops_old_tokens_end_to_end():
    logits = np.array([2.0, 1.5, -5.0, -5.0, -5.0], dtype=F32)
    sampler = Sampler(SamplerParams(temp=0.0, repeat_penalty=2.0, repeat_last_n=3), 5, [], 64)
    assert sampler.sample(logits) == 0
    sampler.accept(0)
    assert sampler.sample(logits) == 1  # 2.0 / 2 = 1.0 < 1.5
    for token in (2, 3):
        sampler.accept(token)
    assert sampler.sample(logits) == 1
    sampler.accept(4)  # token 0 falls out of the 3-token window
    assert sampler.sample(logits) == 0
    sampler.accept(0)
    sampler.reset()  # empties the window
    assert sampler.sample(logits) == 0


def test_repeat_last_n_minus_one_means_context_and_zero_means_off():
    logits = np.array([2.0, 1.5, -5.0], dtype=F32)
    whole_context = Sampler(SamplerParams(temp=0.0, repeat_penalty=2.0, repeat_last_n=-1), 3, [], 4)
    off = Sampler(SamplerParams(temp=0.0, repeat_penalty=2.0, repeat_last_n=0), 3, [], 4)
    for sampler in (whole_context, off):
        for token in (0, 2, 2, 2):
            sampler.accept(token)
    assert whole_context.sample(logits) == 1
    assert off.sample(logits) == 0
    whole_context.accept(2)
    assert whole_context.sample(logits) == 0


# --- logit bias and end-of-generation (§3) -----------------------------------------------------------------

def test_ignore_eos_never_samples_end_of_generation():
    logits = np.array([5.0, 0.0, 0.1, 5.0, -0.2, 0.3], dtype=F32)
    free = Sampler(SamplerParams(seed=5, **PLAIN), 6, [0, 3], 16)
    assert {free.sample(logits) for _ in range(200)} & {0, 3}
    for params in (SamplerParams(seed=5, ignore_eos=True, **PLAIN), SamplerParams(seed=5, ignore_eos=True),
                   SamplerParams(temp=0.0, ignore_eos=True)):
        sampler = Sampler(params, 6, [0, 3], 16)
        assert not {sampler.sample(logits) for _ in range(500)} & {0, 3}


def test_logit_bias_is_added_by_id():
    logits = random_logits(600, 100)
    low = int(np.argmin(logits))
    sampler = Sampler(SamplerParams(temp=0.0, logit_bias={low: 100.0}), 100, [], 16)
    assert sampler.sample(logits) == low


# --- validation, counters, description ---------------------------------------------------------------------

def test_invalid_repeat_last_n():
    with pytest.raises(HotLoraError, match=r"^invalid repeat-last-n = -5$"):
        Sampler(SamplerParams(repeat_last_n=-5), 10, [], 16)


def test_out_of_range_ids_are_rejected():
    with pytest.raises(HotLoraError):
        Sampler(SamplerParams(logit_bias={10: 1.0}), 10, [], 16)
    with pytest.raises(HotLoraError):
        Sampler(SamplerParams(ignore_eos=True), 10, [12], 16)
    with pytest.raises(HotLoraError):
        Sampler(SamplerParams(), 10, [], 16).accept(-1)


def test_perf_counters_count_accepts_and_reset():
    sampler = Sampler(SamplerParams(seed=1), 300, [], 64)
    for token in (1, 2, 3):
        sampler.accept(token)
    sampler.accept(sampler.sample(random_logits(0, 300)))
    assert sampler.n_accept == 4 and sampler.sample_ms > 0
    sampler.reset()
    assert sampler.n_accept == 0 and sampler.sample_ms == 0.0


def test_chain_description():
    assert Sampler(SamplerParams(), 10, [], 16).chain_description() == (
        "logits -> logit-bias -> penalties -> top-k -> typical -> top-p -> min-p -> xtc -> temp-ext -> dist ")


def test_sampling_is_fast_at_32k_vocabulary():
    rows = np.random.default_rng(0).normal(0.0, 3.0, (50, 32000)).astype(F32)
    sampler = Sampler(SamplerParams(seed=1, repeat_penalty=1.1), 32000, [2], 4096)
    for token in range(64):
        sampler.accept(token)
    start = time.perf_counter()
    for row in rows:
        sampler.accept(sampler.sample(row))
    assert (time.perf_counter() - start) / len(rows) < 2e-3
