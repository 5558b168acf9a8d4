#!/usr/bin/env python3
"""Make hotlora's bundled default model, ``data/hotlora-tiny.gguf``.

The model is a LLaMA-architecture GGUF with a real byte-level BPE vocabulary (GPT-2 style) trained here on
``data/corpus.txt``. It is not trained by gradient descent. Its logits are a low-rank factorisation of a smoothed
*bigram* model of the corpus:

* ``token_embd`` rows carry the left factor (rank n_embd − 32) of the centred bigram log-probability matrix,
  plus one block of 32 extra dimensions: a constant (it lets ``output.weight`` add a per-token bias) and
  padding that gives every row the same norm, so every RMSNorm scales every token by the same constant;
* ``output.weight`` holds the right factor, divided by ``output_norm`` (so that ``output_norm`` matters);
* the transformer blocks have small random weights: they exist, RoPE/attention/GQA/SwiGLU all change the logits
  a little, but greedy decoding stays close to the bigram model, which gives word-like English.

Everything is deterministic: the corpus is a committed file, iteration is sorted, ties are broken by strings,
and the random weights come from a fixed seed. Running the script twice gives byte-identical output; the result
also does not change with the BLAS thread count (checked). The SVD is float64 BLAS/LAPACK work rounded to
Q8_0 afterwards, so a different numpy/BLAS build or CPU could in principle flip a rounding somewhere.

Usage::

    python data/make_default.py [--out-dir data] [--rebuild-corpus] [--check]

``--rebuild-corpus`` regenerates ``corpus.txt`` from the docstrings of the running Python's standard library
(the committed file was made with CPython 3.11.7; other versions give a different corpus, hence a different
model). ``--check`` reads the written file back and runs a float64 reference forward pass on it: next-token
accuracy on the corpus, 20 greedy tokens and a temperature-0.8 sample.

The same run also writes two LoRA adapters for this model, ``hotlora-tiny-numbers.lora.gguf`` and
``hotlora-tiny-concurrency.lora.gguf`` (llama.cpp's adapter GGUF, ``output.weight`` only, rank 16, F16). Each
shifts the next-token distribution towards the bigram of a topic's documents: the documents that use the topic's
words (numbers and arithmetic; threads, locks, queues and coroutines) at least twice. The adapter is a
reduced-rank least-squares fit, over every corpus position, of that log-probability shift against the base
model's own input to ``output.weight``. ``--check`` also compares base and adapted models on topic and other text
and prints greedy continuations of both.

Last, it makes the demo adapter ``hotlora-tiny-hot-lora.lora.gguf`` by training on ``hot-lora.txt`` with
``hotlora finetune``'s library function (``make_hot_lora.py`` beside this script; it needs hotlora built). That
adapter is the one ``hotlora run`` with no argument shows.

The functions are split by stage (corpus, vocabulary, weights, writing, adapters).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import heapq
import pathlib
import re
import sysconfig
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import regex

import gguf

CORPUS_FILE = "corpus.txt"
MODEL_FILE = "hotlora-tiny.gguf"
MODEL_NAME = "hotlora-tiny"
SEED = 20250214

# GPT-2 pre-tokenizer (tokenizers.md §4.2 "GPT2", plus the trailing `|\s+` that llama.cpp's matcher implements).
GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
EOT_TEXT = "<|endoftext|>"
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3
# ChatML's shape ("role\ncontent<end>\n", then "assistant\n" to prompt a reply) with the vocabulary's one special
# token, <|endoftext|>, ending each message: it is the end-of-generation token, so a reply stops there.
CHAT_TEMPLATE = ("{% for message in messages %}\n"
                 "{{ message['role'] }}\n"
                 "{{ message['content'] }}{{ eos_token }}\n"
                 "{% endfor %}\n"
                 "{% if add_generation_prompt %}\n"
                 "assistant\n"
                 "{% endif %}\n")
NORM_BLOCK = 32  # embedding dimensions reserved for the bias constant and the norm padding (one Q8_0 block)


@dataclass(frozen=True)
class HParams:
    """Hyper-parameters of the bundled model (written under the ``llama.`` prefix)."""

    n_vocab: int = 4096  # 256 byte tokens + 3839 merges + <|endoftext|>
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 8
    n_head_kv: int = 4  # GQA: two query heads per KV head
    n_ff: int = 704  # 2.75 * n_embd, a multiple of 32
    n_ctx_train: int = 2048
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_merges(self) -> int:
        return self.n_vocab - 256 - 1


# --------------------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------------------

# Parts of the standard library whose docstrings are tests, demos, GUI code or vendored data.
_STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo",
                               "ensurepip", "pydoc_data", "__pycache__", "encodings"})
_PROSE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'\"-?!()/")


def _prose_paragraphs(docstring: str) -> list[str]:
    """Split a docstring at blank lines and keep only the paragraphs that read as plain English sentences.

    A kept paragraph is unindented (no code block or argument table), starts with a capital letter, ends with a
    full stop, has at least 5 words and uses only letters, digits, spaces and ordinary punctuation (so no
    identifiers with ``_``, no ``>>>`` examples, no markup). Its lines are joined with single spaces.
    """
    kept = []
    for para in re.split(r"\n\s*\n", docstring):
        lines = para.split("\n")
        if any(line[:1].isspace() for line in lines):
            continue
        text = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines)).strip()
        if len(text) < 30 or not text[0].isupper() or not text.endswith("."):
            continue
        if not set(text) <= _PROSE_CHARS or "()" in text or " -- " in text or text.count("(") != text.count(")"):
            continue
        if len(text.split()) >= 5:
            kept.append(text)
    return kept


def build_corpus_from_stdlib() -> str:
    """Collect the prose of the standard library's docstrings (modules, classes, functions) as a corpus.

    Source files are parsed with ``ast`` (never imported), in sorted path order; nodes are visited in
    ``ast.walk`` order. Each docstring with at least one prose paragraph becomes one document (its paragraphs
    joined by ``\\n``); documents are separated by a blank line. A paragraph seen before is dropped.
    """
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not set(p.relative_to(root).parts[:-1]) & _STDLIB_SKIP_DIRS and not p.name.startswith("test_"))
    seen: set[str] = set()
    documents = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            paragraphs = [p for p in _prose_paragraphs(ast.get_docstring(node) or "") if p not in seen]
            seen.update(paragraphs)
            if paragraphs:
                documents.append("\n".join(paragraphs))
    return "\n\n".join(documents) + "\n"


def read_documents(corpus_path: pathlib.Path) -> list[str]:
    """Read the corpus: documents are separated by blank lines, paragraphs inside one by a single newline."""
    text = corpus_path.read_text(encoding="utf-8")
    return [doc.strip("\n") for doc in text.split("\n\n") if doc.strip()]


# --------------------------------------------------------------------------------------------------------------
# Vocabulary: byte-level BPE
# --------------------------------------------------------------------------------------------------------------

def gpt2_byte_table() -> list[str]:
    """GPT-2's byte → printable code point table (tokenizers.md §5.1); index = byte value."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_BYTE_TABLE = gpt2_byte_table()
_BYTE_INVERSE = {ch: b for b, ch in enumerate(_BYTE_TABLE)}


def pretokenize(text: str) -> list[str]:
    """Split text into GPT-2 pieces, each already mapped through the byte table (e.g. ``" the"`` → ``"Ġthe"``)."""
    return ["".join(_BYTE_TABLE[b] for b in piece.encode("utf-8")) for piece in GPT2_PATTERN.findall(text)]


def _merge_word(word: tuple[str, ...], left: str, right: str) -> tuple[str, ...]:
    """Replace every non-overlapping occurrence of the pair (left, right) in ``word``, scanning left to right."""
    out = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(documents: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Learn ``n_merges`` byte-level BPE merges greedily by pair frequency.

    Works on the multiset of pre-tokenized pieces ("words" with their counts), not on occurrences. Each step
    takes the most frequent adjacent pair; ties go to the lexicographically smallest (left, right) texts. Pair
    counts are kept up to date incrementally (only words containing the merged pair are revisited) and the best
    pair is found with a lazy max-heap. Returns the merges in learning order (= rank order).
    """
    counts = Counter(piece for doc in documents for piece in pretokenize(doc))
    vocab_words = sorted(counts)
    words = [tuple(w) for w in vocab_words]  # symbols: one mapped byte each to begin with
    freqs = [counts[w] for w in vocab_words]

    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair → indices of the words containing it
    for wi, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges and heap:
        neg_count, left, right = heapq.heappop(heap)
        if pair_counts.get((left, right), 0) != -neg_count:
            continue  # stale heap entry
        merges.append((left, right))
        changed = set()
        for wi in sorted(where.pop((left, right))):
            word, freq = words[wi], freqs[wi]
            for pair in zip(word, word[1:]):
                pair_counts[pair] -= freq
                where[pair].discard(wi)
                changed.add(pair)
            word = words[wi] = _merge_word(word, left, right)
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where[pair].add(wi)
                changed.add(pair)
        for pair in sorted(changed):
            count = pair_counts[pair]
            if count > 0:
                heapq.heappush(heap, (-count, *pair))
            else:
                del pair_counts[pair]
    if len(merges) < n_merges:
        raise ValueError(f"corpus too small: only {len(merges)} merges of {n_merges} could be learned")
    return merges


@dataclass
class Vocab:
    """A GPT-2 style byte-level BPE vocabulary as written to GGUF (tokenizers.md §1, §5)."""

    tokens: list[str]  # [n_vocab] token texts in byte-mapped form; id = index
    token_types: list[int]  # [n_vocab] 1 = NORMAL, 3 = CONTROL
    merges: list[tuple[str, str]]  # rank order
    eot_id: int  # <|endoftext|>: BOS and EOS

    def __post_init__(self) -> None:
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._ranks = {m: r for r, m in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    def _encode_piece(self, piece: str) -> list[int]:
        """BPE one mapped piece: repeatedly merge the adjacent pair of lowest rank (all its occurrences)."""
        if piece not in self._cache:
            word = tuple(piece)
            while len(word) > 1:
                best = min(zip(word, word[1:]), key=lambda p: self._ranks.get(p, len(self._ranks)))
                if best not in self._ranks:
                    break
                word = _merge_word(word, *best)
            self._cache[piece] = [self._ids[s] for s in word]
        return self._cache[piece]

    def encode(self, text: str) -> list[int]:
        """Tokenize plain text (no BOS, no special-token parsing)."""
        return [i for piece in pretokenize(text) for i in self._encode_piece(piece)]

    def decode(self, ids: list[int]) -> str:
        """Detokenize (control tokens print nothing; invalid UTF-8 is replaced)."""
        data = bytes(_BYTE_INVERSE[ch] for i in ids if self.token_types[i] == TOKEN_NORMAL for ch in self.tokens[i])
        return data.decode("utf-8", errors="replace")


def build_vocab(documents: list[str], hp: HParams) -> Vocab:
    """Byte tokens (id = byte value), then one token per learned merge, then ``<|endoftext|>`` last."""
    merges = train_bpe(documents, hp.n_merges)
    tokens = [*_BYTE_TABLE, *(a + b for a, b in merges), EOT_TEXT]
    if len(set(tokens)) != len(tokens):
        raise AssertionError("duplicate token texts")
    types = [TOKEN_NORMAL] * (len(tokens) - 1) + [TOKEN_CONTROL]
    return Vocab(tokens=tokens, token_types=types, merges=merges, eot_id=len(tokens) - 1)


def tokenize_documents(vocab: Vocab, documents: list[str]) -> list[np.ndarray]:
    """Each document as ``[EOT] + tokens + [EOT]`` (EOT is both BOS and EOS), int64."""
    return [np.array([vocab.eot_id, *vocab.encode(doc), vocab.eot_id], dtype=np.int64) for doc in documents]


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------

def bigram_counts(sequences: list[np.ndarray], n_vocab: int) -> np.ndarray:
    """``count[cur, next]`` over the adjacent pairs of every sequence, [n_vocab, n_vocab] float64."""
    cur = np.concatenate([s[:-1] for s in sequences])
    nxt = np.concatenate([s[1:] for s in sequences])
    return np.bincount(cur * n_vocab + nxt, minlength=n_vocab * n_vocab).reshape(n_vocab, n_vocab).astype(np.float64)


def smoothed_bigram(counts: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """Dirichlet smoothing: ``P(n | c) = (count(c, n) + prior_weight · prior[c, n]) / (count(c) + prior_weight)``.

    counts [n_vocab, n_vocab]; prior [1, n_vocab] (one distribution for every row) or [n_vocab, n_vocab] (one per
    row); each prior row sums to 1, so each row of the result does too.
    """
    return (counts + prior_weight * prior) / (counts.sum(axis=1, keepdims=True) + prior_weight)


def bigram_probs(sequences: list[np.ndarray], n_vocab: int, prior_weight: float = 2.0) -> np.ndarray:
    """The corpus bigram ``P(next | cur)``, [n_vocab, n_vocab] float64, smoothed towards the add-one unigram."""
    pair = bigram_counts(sequences, n_vocab)
    unigram = (pair.sum(axis=0) + 1.0) / (pair.sum() + n_vocab)  # [n_vocab]
    return smoothed_bigram(pair, unigram[None, :], prior_weight)


def bigram_logprobs(probs: np.ndarray, floor: float = 3e-5) -> np.ndarray:
    """``L[cur, next] = log(P(next | cur) + floor)``, [n_vocab, n_vocab] float64.

    The small ``floor`` flattens the far tail (below ≈ −10.4), which the low-rank factorisation cannot follow
    anyway; it improves both top-1 accuracy and perplexity of the factorised model and evens out the embedding
    row norms.
    """
    return np.log(probs + floor)


def truncated_svd(m: np.ndarray, rank: int, seed: int = SEED, oversample: int = 32,
                  n_iter: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``rank`` SVD of m [r, c] by randomized subspace iteration (Halko et al. 2011, alg. 4.4).

    Returns u [r, rank], s [rank], vt [rank, c]. A full LAPACK SVD of the 4096² matrix takes 30-60 s on two
    cores; this takes a few seconds and, with this many power iterations, is accurate to far below the Q8_0
    rounding of the result. Signs are fixed (the largest-magnitude entry of each column of u is positive) so the
    output does not depend on BLAS rounding (e.g. the thread count).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(m @ rng.standard_normal((m.shape[1], rank + oversample)))  # [r, rank+p]
    for _ in range(n_iter):
        z, _ = np.linalg.qr(m.T @ q)  # [c, rank+p]
        q, _ = np.linalg.qr(m @ z)
    u_small, s, vt = np.linalg.svd(q.T @ m, full_matrices=False)  # [rank+p, rank+p], [rank+p], [rank+p, c]
    u = (q @ u_small)[:, :rank]
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(rank)])
    return u * signs, s[:rank], vt[:rank] * signs[:, None]


def factorise_logits(logp: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate ``logp`` up to per-row constants (which softmax ignores) as ``A @ B.T + bias``.

    Rows are centred, the column means of the centred matrix become ``bias`` [n_vocab], and the rest is cut to
    ``rank`` by SVD: ``A`` [n_vocab, rank] = U·√S, ``B`` [n_vocab, rank] = V·√S.
    """
    centred = logp - logp.mean(axis=1, keepdims=True)
    bias = centred.mean(axis=0)
    u, s, vt = truncated_svd(centred - bias[None, :], rank)
    return u * np.sqrt(s), vt.T * np.sqrt(s), bias


def embedding_weights(a: np.ndarray, b: np.ndarray, bias: np.ndarray, hp: HParams,
                      output_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn the factorisation into ``token_embd`` and ``output.weight`` (both numpy [n_vocab, n_embd]).

    Embedding dimensions ``[0, rank)`` carry ``α·A``. The last ``NORM_BLOCK`` dimensions (one whole Q8_0 block)
    hold the constant ``β`` (so the output matrix can add ``bias``) and an even spread of padding that gives
    every row the same norm ``√n_embd`` (RMS 1). Then ``rmsnorm(e) = e`` up to ε and
    ``output @ (e ⊙ output_norm) = A·Bᵀ + bias`` for every token; the padding columns of the output matrix
    are zero. Keeping the large padding and bias values in a block of their own matters for engines that
    quantize activations per block of 32 (llama.cpp converts them to Q8_0 for Q8_0 weights): in a shared
    block they would swamp the small informative values.
    """
    n_vocab, rank = a.shape
    if rank + NORM_BLOCK != hp.n_embd:
        raise ValueError(f"rank must be n_embd - {NORM_BLOCK}")
    beta = 1.0
    budget = hp.n_embd - beta**2  # squared norm left for α·A and the padding
    alpha = np.sqrt(0.9 * budget) / np.linalg.norm(a, axis=1).max()  # the largest row keeps 10% for padding
    pad = np.sqrt((budget - alpha**2 * (a**2).sum(axis=1)) / (NORM_BLOCK - 1))  # [n_vocab]
    embd = np.zeros((n_vocab, hp.n_embd))
    embd[:, :rank] = alpha * a
    embd[:, rank] = beta
    embd[:, rank + 1:] = pad[:, None]
    out = np.zeros((n_vocab, hp.n_embd))
    out[:, :rank] = b / alpha
    out[:, rank] = bias / beta
    return embd, out / output_norm[None, :]


def build_weights(logp: np.ndarray, hp: HParams, seed: int = SEED) -> dict[str, np.ndarray]:
    """All tensors of the model as float32 numpy arrays (numpy shape = ggml ``ne`` reversed).

    Norm weights are ``1 + N(0, 0.1)`` (output_norm: uniform [0.5, 1.5], compensated in ``output.weight``), so
    an engine that skips one of them gets visibly different logits. Block matrices are N(0, σ): σ = 0.06 for
    q/k (attention is far from uniform, so RoPE and the causal mask matter), 0.02 for v/gate/up and 0.005 for the
    projections back into the residual stream: the blocks move the logits by ~0.5 and change ~5% of the greedy
    choices, so the bigram signal stays dominant.
    """
    rng = np.random.default_rng(seed)
    a, b, bias = factorise_logits(logp, hp.n_embd - NORM_BLOCK)
    output_norm = rng.uniform(0.5, 1.5, size=hp.n_embd)
    embd, out = embedding_weights(a, b, bias, hp, output_norm)

    def normal(std: float, *shape: int) -> np.ndarray:
        return rng.normal(0.0, std, size=shape)

    d, q_dim, kv_dim = hp.n_embd, hp.head_dim * hp.n_head, hp.head_dim * hp.n_head_kv
    tensors = {"token_embd.weight": embd}  # [n_vocab, n_embd]
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        tensors[p + "attn_norm.weight"] = 1.0 + normal(0.1, d)  # [n_embd]
        tensors[p + "attn_q.weight"] = normal(0.06, q_dim, d)  # [n_head·head_dim, n_embd]
        tensors[p + "attn_k.weight"] = normal(0.06, kv_dim, d)  # [n_head_kv·head_dim, n_embd]
        tensors[p + "attn_v.weight"] = normal(0.02, kv_dim, d)  # [n_head_kv·head_dim, n_embd]
        tensors[p + "attn_output.weight"] = normal(0.005, d, q_dim)  # [n_embd, n_head·head_dim]
        tensors[p + "ffn_norm.weight"] = 1.0 + normal(0.1, d)  # [n_embd]
        tensors[p + "ffn_gate.weight"] = normal(0.02, hp.n_ff, d)  # [n_ff, n_embd]
        tensors[p + "ffn_up.weight"] = normal(0.02, hp.n_ff, d)  # [n_ff, n_embd]
        tensors[p + "ffn_down.weight"] = normal(0.005, d, hp.n_ff)  # [n_embd, n_ff]
    tensors["output_norm.weight"] = output_norm  # [n_embd]
    tensors["output.weight"] = out  # [n_vocab, n_embd]
    return {name: t.astype(np.float32) for name, t in tensors.items()}


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def write_model(path: pathlib.Path, hp: HParams, vocab: Vocab, tensors: dict[str, np.ndarray]) -> None:
    """Write the GGUF: 1-D tensors as F32, 2-D tensors as Q8_0 (``general.file_type`` 7 = mostly Q8_0)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(MODEL_NAME)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(hp.n_vocab)
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_freq_base)
    writer.add_layer_norm_rms_eps(hp.rms_eps)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges([f"{a} {b}" for a, b in vocab.merges])
    writer.add_bos_token_id(vocab.eot_id)
    writer.add_eos_token_id(vocab.eot_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, tensor in tensors.items():
        if tensor.ndim == 1:
            writer.add_tensor(name, tensor)
        else:
            q8 = gguf.quants.quantize(tensor, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --------------------------------------------------------------------------------------------------------------
# Reference forward pass (for --check and the adapter fit)
# --------------------------------------------------------------------------------------------------------------

def load_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Read a GGUF back and dequantize every tensor to float64 (numpy shape = ``ne`` reversed)."""
    reader = gguf.GGUFReader(path)
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
        [int(n) for n in reversed(t.shape)]) for t in reader.tensors}


def _rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, base: float) -> np.ndarray:
    """NORM-mode RoPE on x [T, heads, head_dim]: rotate adjacent pairs (2i, 2i+1) by p·base^(−2i/head_dim)."""
    n_tok, _, hd = x.shape
    theta = np.arange(n_tok)[:, None] * base ** (-np.arange(0, hd, 2) / hd)[None, :]  # [T, hd/2]
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def final_hidden(w: dict[str, np.ndarray], hp: HParams, ids: np.ndarray, n_layer: int | None = None) -> np.ndarray:
    """float64 LLaMA forward (gguf-llama.md §5) of one sequence from position 0, up to and including the final
    RMSNorm and ``output_norm``: the input of ``output.weight``, [T, n_embd].

    ``n_layer=0`` skips the blocks (the pure factorised bigram model).
    """
    n_tok, hd = len(ids), hp.head_dim
    x = w["token_embd.weight"][ids]  # [T, n_embd]
    mask = np.triu(np.full((n_tok, n_tok), -np.inf), k=1)  # [T, T] causal
    for il in range(hp.n_layer if n_layer is None else n_layer):
        p = f"blk.{il}."
        h = _rmsnorm(x, w[p + "attn_norm.weight"], hp.rms_eps)
        q = _rope((h @ w[p + "attn_q.weight"].T).reshape(n_tok, hp.n_head, hd), hp.rope_freq_base)
        k = _rope((h @ w[p + "attn_k.weight"].T).reshape(n_tok, hp.n_head_kv, hd), hp.rope_freq_base)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n_tok, hp.n_head_kv, hd)
        group = hp.n_head // hp.n_head_kv
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # [T, n_head, hd]
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask  # [n_head, T, T]
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hts,shd->thd", probs, v).reshape(n_tok, hp.n_head * hd)
        r = x + attn @ w[p + "attn_output.weight"].T
        f = _rmsnorm(r, w[p + "ffn_norm.weight"], hp.rms_eps)
        gate, up = f @ w[p + "ffn_gate.weight"].T, f @ w[p + "ffn_up.weight"].T  # [T, n_ff]
        x = r + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    return _rmsnorm(x, w["output_norm.weight"], hp.rms_eps)


def forward(w: dict[str, np.ndarray], hp: HParams, ids: np.ndarray, n_layer: int | None = None) -> np.ndarray:
    """float64 LLaMA forward of one sequence from position 0; returns logits [T, n_vocab] (see ``final_hidden``)."""
    return final_hidden(w, hp, ids, n_layer) @ w["output.weight"].T


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def generate(w: dict[str, np.ndarray], hp: HParams, prompt: list[int], n_new: int, temperature: float,
             eos_id: int, rng: np.random.Generator) -> list[int]:
    """Generate up to ``n_new`` tokens (greedy when ``temperature == 0``, else plain softmax sampling).

    Stops after ``eos_id``. Recomputes the whole sequence each step (no KV cache): fine for a few dozen tokens.
    """
    ids = list(prompt)
    for _ in range(n_new):
        logits = forward(w, hp, np.array(ids))[-1]  # [n_vocab]
        if temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            nxt = int(rng.choice(len(logits), p=np.exp(_log_softmax(logits / temperature))))
        ids.append(nxt)
        if nxt == eos_id:
            break
    return ids[len(prompt):]


def check(path: pathlib.Path, hp: HParams, vocab: Vocab, sequences: list[np.ndarray], logp: np.ndarray) -> None:
    """Print next-token accuracy of the exact bigram, the factorised bigram and the full model, and samples.

    Evaluated on the first 128 tokens of every 40th corpus document, with the weights read back from ``path``.
    """
    w = load_tensors(path)
    sample = [s[:128] for s in sequences[::40]]
    targets = np.concatenate([s[1:] for s in sample])
    exact = np.concatenate([logp[s[:-1]].argmax(axis=1) for s in sample])
    bigram = np.concatenate([forward(w, hp, s[:-1], n_layer=0).argmax(axis=1) for s in sample])
    full_logp = [_log_softmax(forward(w, hp, s[:-1])) for s in sample]  # each [T-1, n_vocab]
    full = np.concatenate([lp.argmax(axis=1) for lp in full_logp])
    nll = -np.concatenate([lp[np.arange(len(lp)), s[1:]] for lp, s in zip(full_logp, sample)]).mean()
    print(f"check: {len(targets)} positions; top-1 accuracy: exact bigram {np.mean(exact == targets):.3f}, "
          f"factorised {np.mean(bigram == targets):.3f}, full model {np.mean(full == targets):.3f}; "
          f"full vs factorised agreement {np.mean(full == bigram):.3f}; full-model perplexity {np.exp(nll):.1f}")
    rng = np.random.default_rng(0)
    for prompt_text in ("The", "Return the", "This module"):
        prompt = [vocab.eot_id, *vocab.encode(prompt_text)]
        greedy = generate(w, hp, prompt, 20, 0.0, vocab.eot_id, rng)
        print(f"greedy   {prompt_text!r} + {greedy}\n         -> {prompt_text + vocab.decode(greedy)!r}")
        sampled = generate(w, hp, prompt, 40, 0.8, vocab.eot_id, rng)
        print(f"temp 0.8 -> {prompt_text + vocab.decode(sampled)!r}")


# --------------------------------------------------------------------------------------------------------------
# LoRA adapters: topic shifts of the next-token distribution
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Topic:
    """A topic adapter: the corpus documents that use the topic's words at least twice form its sub-corpus."""

    name: str  # file hotlora-tiny-<name>.lora.gguf, general.name hotlora-tiny-<name>
    words: str  # regex alternation, matched as whole words, case-insensitive


TOPICS = (
    Topic("numbers", r"numbers?|integers?|float|floating|decimal|fractions?|digits?|exponent|round|rounding|rounded|"
                     r"arithmetic|precision|infinity|nan|zero|square|logarithm|complex|sum|product|division|divide|"
                     r"multiply|negative|positive"),
    Topic("concurrency", r"threads?|locks?|process|processes|signals?|queues?|tasks?|futures?|coroutines?|event loop|"
                         r"wait|waiting|blocking"),
)
LORA_RANK = 16
TOPIC_PRIOR_WEIGHT = 4.0  # Dirichlet weight of the whole-corpus bigram in the topic bigram
SHIFT_CLIP = 6.0  # bound on |log P_topic − log P_corpus|
RIDGE = 1e-3  # ridge of the least-squares fit, relative to the mean eigenvalue of HᵀH


def adapter_file(topic: Topic) -> str:
    """The adapter's file name, e.g. ``hotlora-tiny-numbers.lora.gguf``."""
    return f"{MODEL_NAME}-{topic.name}.lora.gguf"


def select_topic(documents: list[str], topic: Topic) -> list[int]:
    """Indices of the documents that contain at least two whole-word matches of the topic's words."""
    pattern = re.compile(rf"\b(?:{topic.words})\b", re.IGNORECASE)
    return [i for i, doc in enumerate(documents) if len(pattern.findall(doc)) >= 2]


def topic_logit_shift(topic_sequences: list[np.ndarray], probs: np.ndarray, logp: np.ndarray,
                      prior_weight: float = TOPIC_PRIOR_WEIGHT, clip: float = SHIFT_CLIP) -> np.ndarray:
    """What the topic adds to the base logits: ``D[cur, next]`` [n_vocab, n_vocab] float64, rows centred.

    The topic bigram is the sub-corpus counts smoothed towards the whole-corpus bigram ``probs`` (so a current
    token the topic never uses keeps the corpus distribution and gets ``D = 0``);
    ``D = clip(log(P_topic + floor) − logp)`` with the base model's floor, then each row is centred (softmax
    ignores per-row constants, so the fit need not spend rank on them).
    """
    counts = bigram_counts(topic_sequences, probs.shape[0])
    shift = np.clip(bigram_logprobs(smoothed_bigram(counts, probs, prior_weight)) - logp, -clip, clip)
    return shift - shift.mean(axis=1, keepdims=True)


def output_inputs(w: dict[str, np.ndarray], hp: HParams,
                  sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Run the base model (float64, dequantized weights) over every corpus position that predicts a token.

    Returns the Gram matrix ``HᵀH`` [n_embd, n_embd] of the inputs ``h_t`` of ``output.weight`` (after the final
    RMSNorm and ``output_norm``) and their sums per current token ``S[c] = Σ_{t: cur_t = c} h_t`` [n_vocab, n_embd].
    These are all the least-squares fit needs, for any topic.
    """
    gram = np.zeros((hp.n_embd, hp.n_embd))
    sums = np.zeros((hp.n_vocab, hp.n_embd))
    for seq in sequences:
        h = final_hidden(w, hp, seq[:-1])  # [T-1, n_embd]
        gram += h.T @ h
        np.add.at(sums, seq[:-1], h)
    return gram, sums


def fit_output_lora(gram: np.ndarray, sums: np.ndarray, shift: np.ndarray, rank: int = LORA_RANK,
                    ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``rank`` LoRA for ``output.weight``: ``B·A·h_t ≈ D[cur_t]`` in least squares over all positions t.

    Minimises ``Σ_t |M h_t − D[cur_t]|² + λ|M|²`` over M = B·A [n_vocab, n_embd] of rank ≤ r (reduced-rank ridge
    regression). With ``R = (HᵀH + λI)^½`` (symmetric) the objective is ``|M R − Dᵀ S R⁻¹|²`` + const, so
    ``M R`` is the truncated SVD ``U_r Σ_r V_rᵀ`` of ``C = Dᵀ S R⁻¹`` [n_vocab, n_embd] (Eckart–Young). Returns
    ``A = c V_rᵀ R⁻¹`` [r, n_embd] and ``B = U_r Σ_r / c`` [n_vocab, r], with signs fixed as in ``truncated_svd``
    and each component's ``c`` chosen so that its row of A and column of B have the same largest magnitude.
    """
    lam = ridge * np.trace(gram) / len(gram)
    evals, evecs = np.linalg.eigh(gram + lam * np.eye(len(gram)))
    r_inv = (evecs / np.sqrt(evals)) @ evecs.T  # [n_embd, n_embd] = (HᵀH + λI)^-½
    u, s, vt = np.linalg.svd(shift.T @ sums @ r_inv, full_matrices=False)  # [n_vocab, n_embd], [n_embd], [n_embd]²
    signs = np.sign(u[np.abs(u[:, :rank]).argmax(axis=0), np.arange(rank)])  # [r]
    lora_a, lora_b = signs[:, None] * vt[:rank] @ r_inv, u[:, :rank] * (signs * s[:rank])  # [r, n_embd], [n_vocab, r]
    balance = np.sqrt(np.abs(lora_b).max(axis=0) / np.abs(lora_a).max(axis=1))  # [r]
    return lora_a * balance[:, None], lora_b / balance


def write_adapter(path: pathlib.Path, name: str, rank: int, tensors: dict[str, np.ndarray]) -> None:
    """Write a llama.cpp LoRA adapter GGUF (lora.md §2) with ``alpha = rank`` (runtime scale = user scale).

    ``tensors`` maps ``<base>.lora_a`` / ``<base>.lora_b`` to numpy arrays in torch layout (``lora_a`` [r, n_in],
    ``lora_b`` [n_out, r], i.e. ``ne`` [n_in, r] and [r, n_out]). They are written as F16: besides halving the
    file, the coarser rounding absorbs the last-bit differences that BLAS thread counts cause in the fit (with F32
    one value in ~30,000 differed between 1 and 2 threads; the F16 files are identical).
    """
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_name(name)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, tensor in tensors.items():
        writer.add_tensor(tensor_name, tensor.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_adapters(model_path: pathlib.Path, hp: HParams, documents: list[str], sequences: list[np.ndarray],
                  probs: np.ndarray, logp: np.ndarray) -> dict[Topic, list[int]]:
    """Fit and write one ``output.weight`` adapter per topic next to the model; returns each topic's documents."""
    gram, sums = output_inputs(load_tensors(model_path), hp, sequences)
    topic_docs = {}
    for topic in TOPICS:
        docs = topic_docs[topic] = select_topic(documents, topic)
        lora_a, lora_b = fit_output_lora(gram, sums, topic_logit_shift([sequences[i] for i in docs], probs, logp))
        path = model_path.parent / adapter_file(topic)
        write_adapter(path, f"{MODEL_NAME}-{topic.name}", LORA_RANK,
                      {"output.weight.lora_a": lora_a, "output.weight.lora_b": lora_b})
        print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}) "
              f"from {len(docs)} topic documents ({sum(len(sequences[i]) for i in docs)} tokens)")
    return topic_docs


def merged(w: dict[str, np.ndarray], adapters: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The base weights with linear-target LoRAs (read back with ``load_tensors``) merged in at user scale 1.

    ``W + s·B·A`` with ``s = alpha / r = 1`` for these files; equal to run-time application (lora.md §7).
    """
    out = dict(w)
    for adapter in adapters:
        for name in adapter:
            if name.endswith(".lora_a"):
                base = name[: -len(".lora_a")]
                out[base] = out[base] + adapter[base + ".lora_b"] @ adapter[name]  # [n_out, n_in]
    return out


def check_adapters(model_path: pathlib.Path, hp: HParams, vocab: Vocab, sequences: list[np.ndarray],
                   topic_docs: dict[Topic, list[int]]) -> None:
    """For each adapter: top-1 accuracy and perplexity of base vs adapted on its topic's documents and on every
    40th other document (first 128 tokens of each), then 30 greedy tokens per prompt for the base, each adapter
    and both stacked.
    """
    w = load_tensors(model_path)
    adapters = {topic.name: load_tensors(model_path.parent / adapter_file(topic)) for topic in topic_docs}

    def score(weights: dict[str, np.ndarray], seqs: list[np.ndarray]) -> tuple[float, float]:
        logps = [_log_softmax(forward(weights, hp, s[:-1])) for s in seqs]  # each [T-1, n_vocab]
        picked = np.concatenate([lp[np.arange(len(lp)), s[1:]] for lp, s in zip(logps, seqs)])
        hits = np.concatenate([lp.argmax(axis=1) == s[1:] for lp, s in zip(logps, seqs)])
        return float(hits.mean()), float(np.exp(-picked.mean()))

    for topic, docs in topic_docs.items():
        name = topic.name
        adapted = merged(w, [adapters[name]])
        chosen = set(docs)
        for label, seqs in (("topic", [sequences[i][:128] for i in docs]),
                            ("other", [s[:128] for i, s in enumerate(sequences) if i not in chosen][::40])):
            (acc0, ppl0), (acc1, ppl1) = score(w, seqs), score(adapted, seqs)
            print(f"adapter {name}: {label} docs ({len(seqs)}, {sum(len(s) - 1 for s in seqs)} positions): "
                  f"top-1 {acc0:.3f} -> {acc1:.3f}, perplexity {ppl0:.1f} -> {ppl1:.1f}")
    variants = {"base": w, **{name: merged(w, [a]) for name, a in adapters.items()},
                "+".join(adapters): merged(w, list(adapters.values()))}
    for prompt_text in ("The", "Return the", "This module"):
        prompt = [vocab.eot_id, *vocab.encode(prompt_text)]
        for label, weights in variants.items():
            greedy = generate(weights, hp, prompt, 30, 0.0, vocab.eot_id, np.random.default_rng(0))
            print(f"greedy {label:>16}: {prompt_text + vocab.decode(greedy)!r}")


# --------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent,
                        help="directory holding corpus.txt and receiving the model and adapters (default: this "
                             "script's folder)")
    parser.add_argument("--rebuild-corpus", action="store_true",
                        help="regenerate corpus.txt from this Python's standard-library docstrings first")
    parser.add_argument("--check", action="store_true", help="run the float64 reference forward pass afterwards")
    args = parser.parse_args()

    start = time.perf_counter()
    hp = HParams()
    corpus_path = args.out_dir / CORPUS_FILE
    if args.rebuild_corpus:
        corpus_path.write_text(build_corpus_from_stdlib(), encoding="utf-8")
    documents = read_documents(corpus_path)
    vocab = build_vocab(documents, hp)
    sequences = tokenize_documents(vocab, documents)
    probs = bigram_probs(sequences, hp.n_vocab)
    logp = bigram_logprobs(probs)
    tensors = build_weights(logp, hp)
    model_path = args.out_dir / MODEL_FILE
    write_model(model_path, hp, vocab, tensors)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes, sha256 {digest}) "
          f"from {sum(map(len, sequences))} corpus tokens in {time.perf_counter() - start:.1f} s")
    topic_docs = make_adapters(model_path, hp, documents, sequences, probs, logp)
    from make_hot_lora import make_hot_lora_adapter   # beside this script; needs hotlora built (pip install .)
    make_hot_lora_adapter(args.out_dir)
    print(f"done in {time.perf_counter() - start:.1f} s")
    if args.check:
        check(model_path, hp, vocab, sequences, logp)
        check_adapters(model_path, hp, vocab, sequences, topic_docs)


if __name__ == "__main__":
    main()
