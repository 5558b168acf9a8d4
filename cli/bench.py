"""One timed run of a llama-bench test: prompt processing (ppN), text generation (tgN) or both (ppN+tgM).

As llama-bench: the prompt is random tokens (BOS first when the model adds one) evaluated in n_batch
chunks; generation decodes n_gen single tokens starting from BOS. Unlike llama-bench, generation
goes through the loop `hotlora run` uses (Session.steps and the default sampler chain), so the time
spent in Python around the core's hl_decode_batch calls is part of what is measured; end-of-generation
tokens are never sampled (ignore-eos), so every run generates exactly n_gen tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import HotLoraError
from .model import Model
from .session import Session

SAMPLER_SEED = 0  # every run samples the same way; the sampler's work does not depend on the seed


@dataclass(frozen=True)
class TestSpec:
    n_prompt: int
    n_gen: int

    @property
    def name(self) -> str:
        """llama-bench's test name: pp512, tg128, pp512+tg128."""
        if not self.n_gen:
            return f"pp{self.n_prompt}"
        return f"tg{self.n_gen}" if not self.n_prompt else f"pp{self.n_prompt}+tg{self.n_gen}"

    @property
    def is_generation_only(self) -> bool:
        return self.n_gen > 0 and self.n_prompt == 0

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen


@dataclass(frozen=True)
class RunTime:
    total_ns: int   # the whole run
    decode_ns: int  # inside the core's hl_decode_batch calls


def random_prompt(model: Model, n: int, rng: np.random.Generator) -> list[int]:
    ids = rng.integers(0, model.n_vocab, size=n).tolist()
    if ids and model.tokenizer.add_bos and model.tokenizer.bos_id is not None:
        ids[0] = model.tokenizer.bos_id
    return ids


def first_token(model: Model, rng: np.random.Generator) -> int:
    """What generation starts from: BOS when the model adds one, else a random token (as llama-bench)."""
    tok = model.tokenizer
    return tok.bos_id if tok.add_bos and tok.bos_id is not None else int(rng.integers(0, model.n_vocab))


def _decode_ms(model: Model) -> float:
    return model.perf.prompt_ms + model.perf.eval_ms


def _generate(session: Session, start_token: int, n_gen: int) -> None:
    """n_gen decodes: start_token, then each sampled token but the last; n_gen tokens sampled."""
    session.feed([start_token])
    generated = sum(1 for _ in session.steps(n_gen))
    if generated != n_gen:
        raise HotLoraError(f"bench: generation stopped ({session.stop}) after {generated} of {n_gen} tokens")


def run_once(model: Model, prompt: list[int], start_token: int, n_gen: int) -> RunTime:
    """One run from an empty cache under the model's current adapter set."""
    model.reset()
    session = Session(model, model.sampler(ignore_eos=True, seed=SAMPLER_SEED))
    decode_before = _decode_ms(model)
    start = time.perf_counter_ns()
    if prompt:
        model.eval_last(prompt)
    if n_gen:
        _generate(session, start_token, n_gen)
    total_ns = time.perf_counter_ns() - start
    return RunTime(total_ns, round((_decode_ms(model) - decode_before) * 1e6))
