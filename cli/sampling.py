"""llama-cli's default sampler chain (spec: shared/spec/sampling.md): run by the C core (native/src/sampler.c),
and here in numpy, step by step, as the reference the core is tested against.

The chain is fixed to llama-cli's default order (sampling.md §1):

    logit-bias -> penalties -> top-k -> typical -> top-p -> min-p -> xtc -> temp-ext -> dist

DRY and mirostat are not implemented (llama-cli's defaults leave both off), nor are the replacement chains,
grammars or a user-chosen order. Every `min_keep` test uses llama-cli's value 0, so those tests always pass and
are not spelled out; typical sampling then only reorders (§3, "Quirk").

Arithmetic follows llama.cpp: logits and probabilities are float32 (`expf`/`logf` are evaluated in double and
rounded, which agrees with glibc's correctly-rounded-in-practice float functions), running sums are sequential
float32 sums, and the final draw uses libstdc++'s `std::discrete_distribution` over `std::mt19937` (§6). Sorts
are stable, so ties keep their current order (llama.cpp leaves that order unspecified), and -0.0 ties +0.0.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from hotlora._native import check, ffi, lib
from hotlora.errors import HotLoraError

F32 = np.float32
RANDOM_SEED = 0xFFFFFFFF
CHAIN_NAMES = ("logit-bias", "penalties", "top-k", "typical", "top-p", "min-p", "xtc", "temp-ext", "dist")

_TWO_32 = 4294967296.0
_TWO_64 = 18446744073709551616.0
_DOUBLE_BELOW_ONE = math.nextafter(1.0, 0.0)
_FLOAT_BELOW_ONE = np.nextafter(F32(1.0), F32(0.0))
_FLT_MAX = np.finfo(F32).max


@dataclass
class SamplerParams:
    """llama-cli's sampling options and defaults (sampling.md §2); DRY and mirostat are not offered."""

    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    seed: int = RANDOM_SEED
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)


class Mt19937:
    """`std::mt19937` seeded with a 32-bit value (§6): numpy's RandomState uses the same initialisation."""

    def __init__(self, seed: int):
        self._state = np.random.RandomState(seed)

    def next_u32(self, count: int) -> list[int]:
        """The next `count` raw 32-bit outputs."""
        return self._state.randint(0, 1 << 32, size=count, dtype=np.uint32).tolist()

    def canonical_double(self) -> float:
        """libstdc++ `generate_canonical<double, 53>`: two outputs, `(a + b·2^32) / 2^64`, kept below 1 (§6)."""
        low, high = self.next_u32(2)
        return min((float(low) + float(high) * _TWO_32) / _TWO_64, _DOUBLE_BELOW_ONE)

    def canonical_float(self) -> np.float32:
        """libstdc++ `generate_canonical<float, 24>`: one output, `float(a) / 2^32`, kept below 1 (§6, XTC)."""
        (value,) = self.next_u32(1)
        return min(F32(value) / F32(_TWO_32), _FLOAT_BELOW_ONE)


@dataclass
class Candidates:
    """The candidate array (§1): token ids and float32 logits in current order, plus the "sorted" flag."""

    ids: np.ndarray
    logits: np.ndarray
    is_sorted: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index) -> None:
        """Keep the candidates picked by `index` (an index array, boolean mask or slice), in that order."""
        self.ids = self.ids[index]
        self.logits = self.logits[index]


class PenaltyWindow:
    """Ring buffer of the last `last_n` accepted tokens with a count per token id (§5); `last_n = 0` is off."""

    def __init__(self, n_vocab: int, last_n: int):
        self.last_n = last_n
        self.counts = np.zeros(n_vocab, dtype=np.int32)
        self._ring: deque[int] = deque()

    def accept(self, token: int) -> None:
        """Count `token`; once the buffer is full, the oldest token falls out and loses one count."""
        if self.last_n == 0:
            return
        self.counts[token] += 1
        if len(self._ring) >= self.last_n:
            self.counts[self._ring.popleft()] -= 1
        self._ring.append(token)

    def clear(self) -> None:
        self.counts[:] = 0
        self._ring.clear()

    def occurrences(self) -> tuple[np.ndarray, np.ndarray]:
        """(token ids with a count > 0, their counts)."""
        ids = np.flatnonzero(self.counts)
        return ids, self.counts[ids]


def _expf(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.exp(x.astype(np.float64)).astype(F32)


def _logf(x) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(x, dtype=np.float64)).astype(F32)


def _sequential_sum(values: np.ndarray) -> np.float32:
    """`float s = 0; for (...) s += v;` — numpy's cumsum adds in order, unlike its pairwise `sum`."""
    return np.cumsum(values, dtype=F32)[-1]


def descending_order(values: np.ndarray) -> np.ndarray:
    """Stable argsort, largest first, of float32 values: sorts 64-bit keys (order-preserving float bits, then
    position), several times faster than numpy's stable float argsort on large vocabularies."""
    bits = (values + F32(0)).view(np.uint32)
    ascending_key = np.where(bits >> 31 != 0, ~bits, bits | np.uint32(0x80000000))
    keys = ((~ascending_key).astype(np.uint64) << np.uint64(32)) | np.arange(len(values), dtype=np.uint64)
    return (np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.int64)


def sort_descending(cands: Candidates) -> None:
    """Sort by logit, largest first, unless already flagged sorted; flag sorted (§3 "Softmax")."""
    if not cands.is_sorted:
        cands.select(descending_order(cands.logits))
        cands.is_sorted = True


def softmax(cands: Candidates) -> np.ndarray:
    """§3 "Softmax": sort if needed, then `p_i = expf(l_i − l_0) / Σ` in float32; returns p in current order."""
    sort_descending(cands)
    weights = _expf(cands.logits - cands.logits[0])
    return weights / _sequential_sum(weights)


def apply_logit_bias(cands: Candidates, bias_ids: np.ndarray, bias_values: np.ndarray) -> None:
    """logit-bias (§3): add each bias to its token's logit. Runs first, on the id-ordered full array."""
    np.add.at(cands.logits, bias_ids, bias_values)


def apply_penalties(cands: Candidates, window: PenaltyWindow, repeat: F32, frequency: F32, presence: F32) -> None:
    """penalties (§3, §5): for tokens seen in the window, `l <= 0 → l·repeat`, else `l / repeat`; then subtract
    `count·frequency + presence`. Runs on the id-ordered full array (its place in the chain)."""
    if window.last_n == 0 or (repeat == 1 and frequency == 0 and presence == 0):
        return
    ids, counts = window.occurrences()
    logits = cands.logits[ids]
    logits = np.where(logits <= 0, logits * repeat, logits / repeat)
    cands.logits[ids] = logits - (counts.astype(F32) * frequency + presence)
    cands.is_sorted = False


def apply_top_k(cands: Candidates, k: int) -> None:
    """top-k (§3): `k <= 0 → n`; put the `k` largest logits first in descending order, flag sorted, keep `k`."""
    n = len(cands)
    k = n if k <= 0 else min(k, n)
    if not cands.is_sorted and k < n:
        cands.select(_first_k_largest(cands.logits, k))
    sort_descending(cands)
    cands.select(slice(0, k))


def _kth_largest(logits: np.ndarray, k: int) -> np.float32:
    """The k-th largest logit. On a large vocabulary the k-th largest of the maxima of 64-logit blocks is a
    lower bound t (k distinct logits reach it), so only the logits >= t need the exact selection."""
    n = len(logits)
    n_blocks = n // 64
    if n_blocks >= 4 * k:
        maxima = logits[: n_blocks * 64].reshape(n_blocks, 64).max(axis=1)
        bound = np.partition(maxima, n_blocks - k)[n_blocks - k]
        if not np.isnan(bound):
            above = logits[logits >= bound]
            return np.partition(above, len(above) - k)[len(above) - k]
    return np.partition(logits, n - k)[n - k]


def _first_k_largest(logits: np.ndarray, k: int) -> np.ndarray:
    """Positions of the `k` largest logits, in position order within each value; ties at the cut keep the
    earliest positions."""
    kth = _kth_largest(logits, k)
    above = np.flatnonzero(logits > kth)
    at_cut = np.flatnonzero(logits == kth)[: k - len(above)]
    return np.concatenate([above, at_cut])


def apply_typical(cands: Candidates, p: F32) -> None:
    """typical (§3), skipped if `p >= 1`: order by `|−ln p_i − H|` ascending. With llama-cli's `min_keep = 0`
    the truncation test never passes, so nothing is dropped; the array is flagged unsorted."""
    if p >= 1:
        return
    probs = softmax(cands)
    neg_log = -_logf(probs)
    with np.errstate(invalid="ignore"):
        entropy = _sequential_sum(probs * neg_log)
    cands.select(descending_order(-np.abs(neg_log - entropy)))
    cands.is_sorted = False


def apply_top_p(cands: Candidates, p: F32) -> None:
    """top-p (§3), skipped if `p >= 1`: keep the shortest prefix whose float running sum of p is `>= p`."""
    if p >= 1:
        return
    reached = np.flatnonzero(np.cumsum(softmax(cands), dtype=F32) >= p)
    if reached.size:
        cands.select(slice(0, reached[0] + 1))


def apply_min_p(cands: Candidates, p: F32) -> None:
    """min-p (§3), skipped if `p <= 0`: threshold `l_max + logf(p)`. Unsorted: keep, in order, every candidate
    at or above it. Sorted: keep the first candidate and each following one while at or above it."""
    if p <= 0:
        return
    log_p = _logf(p)
    if not cands.is_sorted:
        threshold = max(F32(cands.logits.max()), -_FLT_MAX) + log_p
        cands.select(cands.logits >= threshold)
        return
    threshold = cands.logits[0] + log_p
    below = np.flatnonzero(cands.logits[1:] < threshold)
    if below.size:
        cands.select(slice(0, below[0] + 1))


def apply_xtc(cands: Candidates, probability: F32, threshold: F32, rng: Mt19937) -> None:
    """xtc (§3), skipped if probability <= 0, threshold > 0.5 or fewer than 2 candidates: draw u; if
    `u <= probability`, drop all leading candidates with `p >= threshold` except the last of them."""
    if probability <= 0 or threshold > F32(0.5) or len(cands) < 2:
        return
    if rng.canonical_float() > probability:
        return
    below = np.flatnonzero(softmax(cands) < threshold)
    leading_run = below[0] if below.size else len(cands)
    if leading_run > 1:
        cands.select(slice(leading_run - 1, None))


def apply_temperature(cands: Candidates, temp: F32) -> None:
    """Plain temperature (§3): `temp > 0 → l / temp`; else greedy: keep the first maximal logit, others −inf."""
    if temp > 0:
        cands.logits = cands.logits / temp
        return
    best = int(np.argmax(cands.logits))
    greedy = np.full_like(cands.logits, -np.inf)
    greedy[best] = cands.logits[best]
    cands.logits = greedy


def apply_temperature_ext(cands: Candidates, temp: F32, temp_range: F32, exponent: F32) -> None:
    """temp-ext (§3): with `range > 0` and more than one candidate, dynamic temperature
    `t_min + (t_max − t_min)·(H / ln n)^exponent`; otherwise plain `temp`. (llama.cpp then recomputes p in
    double, which nothing reads before dist's own softmax, so that step is left out.)"""
    if temp_range <= 0:
        apply_temperature(cands, temp)
        return
    if len(cands) <= 1:
        return
    t_min = max(F32(0), temp - temp_range)
    t_max = temp + temp_range
    max_entropy = -_logf(F32(1) / F32(len(cands)))
    probs = softmax(cands)
    positive = probs[probs > 0]
    entropy = _sequential_sum(-(positive * _logf(positive)))
    normalized = entropy / max_entropy
    scale = F32(math.pow(float(normalized), float(exponent)))
    apply_temperature(cands, t_min + (t_max - t_min) * scale)


def draw_index(probs: np.ndarray, u: float) -> int:
    """libstdc++ `discrete_distribution` (§6): widen to double, divide by the sequential double sum, cumulate,
    force the last entry to 1.0, return the first index with `cdf >= u`."""
    weights = probs.astype(np.float64)
    cdf = np.cumsum(weights / np.cumsum(weights)[-1])
    cdf[-1] = 1.0
    return int(np.searchsorted(cdf, u, side="left"))


def apply_dist(cands: Candidates, rng: Mt19937) -> int:
    """dist (§3): softmax, then one draw; a lone candidate is returned without consuming random numbers."""
    if len(cands) == 1:
        return int(cands.ids[0])
    probs = softmax(cands)
    return int(cands.ids[draw_index(probs, rng.canonical_double())])


def effective_seed(seed: int) -> int:
    """`-s` is parsed as unsigned 32-bit; `0xFFFFFFFF` draws a fresh value each time (§6)."""
    seed %= 1 << 32
    if seed == RANDOM_SEED:
        return int.from_bytes(os.urandom(4), "little")
    return seed


class Sampler:
    """llama-cli's sampler chain with its penalty window, RNGs and perf counters (sampling.md §1–§7)."""

    def __init__(self, params: SamplerParams, n_vocab: int, eog_ids: Iterable[int], n_ctx: int):
        if n_vocab < 1:
            raise HotLoraError(f"invalid vocabulary size {n_vocab}")
        if n_ctx < 1:
            raise HotLoraError(f"invalid context size {n_ctx}")
        if params.repeat_last_n < -1:
            raise HotLoraError(f"invalid repeat-last-n = {params.repeat_last_n}")
        self.params = params
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int64)
        self._bias_ids, self._bias_values = _bias_arrays(params, list(eog_ids), n_vocab)
        last_n = n_ctx if params.repeat_last_n == -1 else params.repeat_last_n
        self._window = PenaltyWindow(n_vocab, last_n)
        self._temp = max(F32(params.temp), F32(0))
        self._core = _core_sampler(params, self._temp, n_vocab)
        self._bias_ids32 = self._bias_ids.astype(np.int32)
        self.seed = 0
        self.n_accept = 0
        self.sample_ms = 0.0
        self.reset()

    def reset(self) -> None:
        """Empty the penalty window, re-seed both RNGs (fresh values if the seed is random), zero the counters."""
        self._window.clear()
        self.seed = effective_seed(self.params.seed)
        xtc_seed = effective_seed(self.params.seed)
        self._dist_rng, self._xtc_rng = Mt19937(self.seed), Mt19937(xtc_seed)  # the reference's streams
        lib.hl_sampler_seed(self._core, self.seed, xtc_seed)
        self.n_accept = 0
        self.sample_ms = 0.0

    def sample(self, logits: np.ndarray) -> int:
        """Run the chain on one token's logits (float32 [n_vocab]) in the C core and return the chosen id; does
        not accept. Draws the tokens sample_reference draws."""
        start = time.perf_counter()
        logits = self._checked(logits)
        counts = ffi.cast("int32_t *", ffi.from_buffer(self._window.counts)) if self._window.last_n else ffi.NULL
        token = ffi.new("int32_t *")
        check(lib.hl_sampler_sample(self._core, ffi.cast("float *", ffi.from_buffer(logits)),
                                    ffi.cast("int32_t *", ffi.from_buffer(self._bias_ids32)),
                                    ffi.cast("float *", ffi.from_buffer(self._bias_values)), len(self._bias_ids32),
                                    counts, token), "sample")
        self.sample_ms += (time.perf_counter() - start) * 1e3
        return int(token[0])

    def sample_reference(self, logits: np.ndarray) -> int:
        """The same chain in numpy, step by step: the reference `sample` is tested against."""
        p = self.params
        cands = Candidates(self._ids, np.array(self._checked(logits), dtype=F32))
        apply_logit_bias(cands, self._bias_ids, self._bias_values)
        apply_penalties(cands, self._window, F32(p.repeat_penalty), F32(p.frequency_penalty),
                        F32(p.presence_penalty))
        apply_top_k(cands, p.top_k)
        apply_typical(cands, F32(p.typical_p))
        apply_top_p(cands, F32(p.top_p))
        apply_min_p(cands, F32(p.min_p))
        apply_xtc(cands, F32(p.xtc_probability), F32(p.xtc_threshold), self._xtc_rng)
        apply_temperature_ext(cands, self._temp, F32(p.dynatemp_range), F32(p.dynatemp_exponent))
        return apply_dist(cands, self._dist_rng)

    def _checked(self, logits: np.ndarray) -> np.ndarray:
        if logits.shape != (self.n_vocab,):
            raise ValueError(f"expected logits of shape ({self.n_vocab},), got {logits.shape}")
        return np.ascontiguousarray(logits, dtype=F32)

    def accept(self, token: int) -> None:
        """Add a prompt, input or sampled token to the penalty window (§5) and count it."""
        start = time.perf_counter()
        if not 0 <= token < self.n_vocab:
            raise HotLoraError(f"token id {token} is outside the vocabulary (0..{self.n_vocab - 1})")
        self._window.accept(token)
        self.n_accept += 1
        self.sample_ms += (time.perf_counter() - start) * 1e3

    def chain_description(self) -> str:
        """The chain as llama-cli logs it after `sampler chain: ` (§1), trailing space included."""
        return "logits " + "".join(f"-> {name} " for name in CHAIN_NAMES)


def _core_sampler(params: SamplerParams, temp: np.float32, n_vocab: int):
    """The C core's sampler for these parameters, freed with the Python object."""
    fields = dict(temp=float(temp), top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
                  typical_p=params.typical_p, repeat_penalty=params.repeat_penalty,
                  frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
                  xtc_probability=params.xtc_probability, xtc_threshold=params.xtc_threshold,
                  dynatemp_range=params.dynatemp_range, dynatemp_exponent=params.dynatemp_exponent)
    out = ffi.new("hl_sampler **")
    check(lib.hl_sampler_create(ffi.new("hl_sampler_params *", fields), n_vocab, out), "sampler")
    return ffi.gc(out[0], lib.hl_sampler_free)


def _bias_arrays(params: SamplerParams, eog_ids: list[int], n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The logit-bias entries: the configured ones, then −inf on every end-of-generation id with ignore-eos."""
    entries = [(int(token), float(bias)) for token, bias in params.logit_bias.items()]
    if params.ignore_eos:
        entries += [(int(token), -math.inf) for token in eog_ids]
    for token, _ in entries:
        if not 0 <= token < n_vocab:
            raise HotLoraError(f"logit bias token id {token} is outside the vocabulary (0..{n_vocab - 1})")
    ids = np.array([token for token, _ in entries], dtype=np.int64)
    values = np.array([bias for _, bias in entries], dtype=F32)
    return ids, values
