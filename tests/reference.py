"""Float64 reference forward pass for LLaMA-family GGUF models (the test oracle).

Written straight from ../shared/spec/gguf-llama.md (§2 keys, §3 tensors, §5 forward pass) and
../shared/spec/lora.md (§2 adapter files, §3 where deltas apply), independent of hotlora's own code: it
reads files with the `gguf` package and dequantizes every tensor with `gguf.quants.dequantize`.

Orientation: every matrix is kept in numpy orientation, i.e. the GGUF `ne` reversed. A projection weight of
`ne = [n_in, n_out]` is a numpy array of shape `(n_out, n_in)` and acts on row-vector activations as
`y = x @ W.T`. Activations are `(T, n)` arrays (one row per token).

Deliberate simplifications (the reference is the mathematical definition, not a llama.cpp emulation):
all arithmetic is float64; RoPE angles are `p · base^(−2i/n_rot)` computed directly (not a float running
product); the KV cache is implicit (one causal pass over positions 0..T-1); YaRN / longrope and MoE are not
supported (NotImplementedError).

LoRA (lora.md §3): a pair on a projection adds `s · B (A x)` before that projection's bias; a `token_embd` pair
adds `s · b · a[id]` to the looked-up embedding row, with `s = user_scale · alpha / rank` (`user_scale` alone when
alpha is 0) and `rank = lora_b.ne[0]`. Pairs on tensors that are never multiplied through a LoRA-aware product
(norms, rope_freqs) are rejected with ValueError instead of being silently ignored (lora.md §10.2).

Tied-output models (no `output.weight`; the output head multiplies by `token_embd.weight`) — hotlora's decision,
unlike llama.cpp (lora.md §3 "tied output trap"): the LoRA of a product is looked up by the *site*, not by the
name of the weight tensor it happens to use. A `token_embd.weight` pair applies at the input row lookup only
(PEFT's embedding-LoRA semantics); an `output.weight` pair applies at the output head (shapes checked against
token_embd, which the head uses: a (r, n_embd), b (n_vocab, r)). Merging therefore unties the model: `merge()`
gives `output.weight = token_embd + Δ_output` and `token_embd.weight = token_embd + Δ_embd` as two tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import gguf
import numpy as np

ROPE_MODE = {"llama": "norm", "qwen2": "neox"}  # gguf-llama.md §5.2

# Projections multiplied through llama.cpp's lora_mm (lora.md §3), per layer; plus `output.weight`.
LAYER_PROJECTIONS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class HParams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_base: float
    freq_scale: float   # 1 / rope.scaling.factor (linear scaling); 1 when absent or type "none"
    attn_factor: float  # mscale multiplying RoPE cos/sin

    @property
    def rope_mode(self) -> str:
        return ROPE_MODE[self.arch]


@dataclass
class RefModel:
    hparams: HParams
    weights: dict[str, np.ndarray]  # name -> float64, numpy orientation (reversed ne)


@dataclass
class RefAdapter:
    arch: str
    alpha: float
    # base tensor name -> (a, b), float64 numpy orientation (reversed ne):
    #   projections: a (r, n_in)     [ne n_in, r],    b (n_out, r)  [ne r, n_out]
    #   token_embd:  a (n_vocab, r)  [ne r, n_vocab], b (n_embd, r) [ne r, n_embd]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]

    def scale(self, name: str, user_scale: float) -> float:
        """lora.md §2.3: user_scale · alpha / rank, rank = lora_b.ne[0]; plain user_scale when alpha == 0."""
        rank = self.pairs[name][1].shape[1]
        return user_scale * self.alpha / rank if self.alpha != 0 else user_scale


AdapterList = Sequence[tuple[RefAdapter, float]]


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------

def _kv(reader: gguf.GGUFReader) -> dict[str, object]:
    return {name: field.contents() for name, field in reader.fields.items()}


def _read_tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float64, numpy shape = reversed ne."""
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        expected = tuple(int(n) for n in reversed(t.shape.tolist()))
        assert values.shape == expected, (t.name, values.shape, expected)
        out[t.name] = values
    return out


def _read_hparams(kv: dict[str, object], n_vocab: int) -> HParams:
    arch = kv["general.architecture"]
    if arch not in ROPE_MODE:
        raise ValueError(f"unknown model architecture: '{arch}'")

    def get(key: str, default=None):
        value = kv.get(f"{arch}.{key}", default)
        if value is None:
            raise KeyError(f"key not found in model: {arch}.{key}")
        return value

    n_embd = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", n_embd // n_head))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise ValueError("key_length != value_length")
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"invalid n_rot: {get('rope.dimension_count')}, expected {head_dim}")

    scaling_type = get("rope.scaling.type", "linear")
    if scaling_type not in ("linear", "none"):
        raise NotImplementedError(f"rope scaling type {scaling_type!r}")
    factor = float(kv.get(f"{arch}.rope.scaling.factor", kv.get(f"{arch}.rope.scale_linear", 0.0)))
    freq_scale = 1.0 / factor if (factor != 0.0 and scaling_type == "linear") else 1.0

    return HParams(
        arch=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=int(get("block_count")),
        n_head=n_head,
        n_head_kv=int(get("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(get("feed_forward_length")),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_base=float(get("rope.freq_base", 10000.0)),
        freq_scale=freq_scale,
        attn_factor=float(get("rope.scaling.attn_factor", 1.0)),
    )


def load_ref_model(path: str | Path) -> RefModel:
    reader = gguf.GGUFReader(path)
    kv = _kv(reader)
    if kv.get("general.type", "model") != "model":
        raise ValueError(f"not a model file: general.type = {kv['general.type']!r}")
    weights = _read_tensors(reader)
    n_vocab = weights["token_embd.weight"].shape[0]
    tokens = kv.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != n_vocab:
        raise ValueError(f"vocabulary has {len(tokens)} tokens but token_embd has {n_vocab} rows")
    hparams = _read_hparams(kv, n_vocab)
    if hparams.arch == "qwen2" and "rope_freqs.weight" in weights:
        raise ValueError("qwen2 does not use rope_freqs.weight")
    return RefModel(hparams, weights)


def load_ref_adapter(path: str | Path) -> RefAdapter:
    """A llama.cpp LoRA adapter GGUF, validated in the order of lora.md §5 (model-independent checks)."""
    reader = gguf.GGUFReader(path)
    kv = _kv(reader)
    if kv.get("general.type", "") != "adapter":
        raise ValueError(f"expect general.type to be 'adapter', but got: {kv.get('general.type', '')}")
    if kv.get("adapter.type", "") != "lora":
        raise ValueError(f"expect adapter.type to be 'lora', but got: {kv.get('adapter.type', '')}")
    alpha_field = reader.fields.get("adapter.lora.alpha")
    if alpha_field is not None and alpha_field.types != [gguf.GGUFValueType.FLOAT32]:
        raise ValueError("adapter.lora.alpha must be float32")
    alpha = float(alpha_field.contents()) if alpha_field is not None else 0.0

    halves: dict[str, dict[str, np.ndarray]] = {}
    for name, values in _read_tensors(reader).items():
        if name.endswith("_norm.weight"):
            continue  # mergekit leftovers, skipped by the loader
        base, dot, half = name.rpartition(".")
        if not dot or half not in ("lora_a", "lora_b"):
            raise ValueError(f"LoRA tensor '{name}' has unexpected suffix")
        halves.setdefault(base, {})[half] = values

    pairs = {}
    for base in sorted(halves):
        if set(halves[base]) != {"lora_a", "lora_b"}:
            raise ValueError(f"LoRA tensor pair for '{base}' is missing one component")
        pairs[base] = (halves[base]["lora_a"], halves[base]["lora_b"])
    return RefAdapter(arch=kv["general.architecture"], alpha=alpha, pairs=pairs)


# ----------------------------------------------------------------------------------------------------------
# Adapter validation and merging
# ----------------------------------------------------------------------------------------------------------

def is_tied(model: RefModel) -> bool:
    """No `output.weight`: the output head multiplies by `token_embd.weight`."""
    return "output.weight" not in model.weights


def base_weight(model: RefModel, name: str) -> np.ndarray | None:
    """The weight a LoRA pair named `name` must fit (None: no such tensor in the base model).

    Only difference from `model.weights.get(name)`: `output.weight` on a tied model is the head's weight,
    i.e. `token_embd.weight`.
    """
    if name == "output.weight" and is_tied(model):
        return model.weights.get("token_embd.weight")
    return model.weights.get(name)


def _lora_aware(model: RefModel, name: str) -> bool:
    """Is `name` a site that the graph multiplies through a LoRA-aware product (lora.md §3)?"""
    if name in ("token_embd.weight", "output.weight"):
        return base_weight(model, name) is not None
    parts = name.split(".")  # blk.N.<projection>.weight
    return (len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_PROJECTIONS
            and parts[3] == "weight" and name in model.weights)


def check_adapter(model: RefModel, adapter: RefAdapter) -> None:
    """Model-dependent checks of lora.md §5.7, plus our refusal of inert targets.

    On a tied model an `output.weight` pair is checked against token_embd (the head's weight).
    """
    if adapter.arch != model.hparams.arch:
        raise ValueError("model arch and LoRA arch mismatch")
    for name, (a, b) in adapter.pairs.items():
        w = base_weight(model, name)
        if w is None:
            raise ValueError(f"LoRA tensor '{name}' does not exist in base model")
        if not _lora_aware(model, name):
            raise ValueError(f"LoRA tensor '{name}' is not used by any LoRA-aware product")
        if name == "token_embd.weight":
            # W (n_vocab, n_embd); a (n_vocab, r); b (n_embd, r)
            shapes_ok = a.shape[0] == w.shape[0] and b.shape[0] == w.shape[1]
            rank_ok = a.shape[1] == b.shape[1]
        else:
            # W (n_out, n_in); a (r, n_in); b (n_out, r)
            shapes_ok = a.shape[1] == w.shape[1] and b.shape[0] == w.shape[0]
            rank_ok = a.shape[0] == b.shape[1]
        if not shapes_ok:
            raise ValueError(f"tensor '{name}' has incorrect shape")
        if not rank_ok:
            raise ValueError(f"lora_a tensor of '{name}' is not transposed")


def _delta(adapter: RefAdapter, name: str, user_scale: float) -> np.ndarray:
    """The dense update s·B·A in the base tensor's numpy orientation."""
    a, b = adapter.pairs[name]
    s = adapter.scale(name, user_scale)
    if name == "token_embd.weight":
        return s * (a @ b.T)  # (n_vocab, r) @ (r, n_embd) -> (n_vocab, n_embd)
    return s * (b @ a)        # (n_out, r) @ (r, n_in) -> (n_out, n_in)


def merge(model: RefModel, adapters: AdapterList) -> RefModel:
    """W' = W + Σ s·B·A in float64 (lora.md §7); the embedding delta is b·a arranged as the embedding.

    On a tied model whose token_embd or output site has a pair, the result is untied: `output.weight` starts
    as a copy of the original token_embd and takes the `output.weight` deltas, `token_embd.weight` takes the
    `token_embd.weight` deltas (module docstring). Other tied models stay tied.
    """
    weights = {name: w.copy() for name, w in model.weights.items()}
    for adapter, _ in adapters:
        check_adapter(model, adapter)
    if is_tied(model) and any(name in ("token_embd.weight", "output.weight")
                              for adapter, _ in adapters for name in adapter.pairs):
        weights["output.weight"] = model.weights["token_embd.weight"].copy()
    for adapter, user_scale in adapters:
        for name in adapter.pairs:
            weights[name] += _delta(adapter, name, user_scale)
    return RefModel(model.hparams, weights)


# ----------------------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------------------

ActQuant = Callable[[str, np.ndarray], np.ndarray]


class _Lora:
    """Active LoRA terms: base name -> [(s, a, b), ...] in adapter order."""

    def __init__(self, model: RefModel, adapters: AdapterList, act_quant: ActQuant | None = None):
        self.act_quant = act_quant
        self.terms: dict[str, list[tuple[float, np.ndarray, np.ndarray]]] = {}
        for adapter, user_scale in adapters:
            check_adapter(model, adapter)
            for name, (a, b) in adapter.pairs.items():
                self.terms.setdefault(name, []).append((adapter.scale(name, user_scale), a, b))

    def get(self, name: str) -> Iterable[tuple[float, np.ndarray, np.ndarray]]:
        return self.terms.get(name, ())


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x (T, n), weight (n,)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def linear(model: RefModel, lora: _Lora, name: str, x: np.ndarray, site: str | None = None) -> np.ndarray:
    """y = W x + Σ s·B(A x) + bias.  x (T, n_in) -> (T, n_out).

    `name` is the weight multiplied; `site` (default `name`) the name the LoRA pairs are looked up by — they
    differ only at a tied output head (W = token_embd.weight, site output.weight).
    With lora.act_quant set, W sees act_quant(name, x) (the engine's activation rounding).
    """
    xw = lora.act_quant(name, x) if lora.act_quant else x
    y = xw @ model.weights[name].T                     # (T, n_out)
    for s, a, b in lora.get(site or name):
        y = y + s * ((x @ a.T) @ b.T)                  # (T, r) -> (T, n_out)
    bias = model.weights.get(name.removesuffix(".weight") + ".bias")
    return y if bias is None else y + bias


def embed(model: RefModel, lora: _Lora, tokens: Sequence[int]) -> np.ndarray:
    """Row lookup (+ s·b·a[id] per token_embd pair).  -> (T, n_embd)."""
    ids = np.asarray(tokens, dtype=np.int64)
    x = model.weights["token_embd.weight"][ids]        # (T, n_embd)
    for s, a, b in lora.get("token_embd.weight"):
        x = x + s * (a[ids] @ b.T)                     # (T, r) @ (r, n_embd)
    return x


def rope_angles(model: RefModel, positions: np.ndarray) -> np.ndarray:
    """θ[t, i] = p_t · base^(−2i/n_rot) / rope_freqs[i] · freq_scale.  -> (T, n_rot/2)."""
    hp = model.hparams
    n_rot = hp.head_dim
    inv_freq = hp.rope_base ** (-2.0 * np.arange(n_rot // 2) / n_rot)   # (n_rot/2,)
    if hp.arch == "llama" and "rope_freqs.weight" in model.weights:
        inv_freq = inv_freq / model.weights["rope_freqs.weight"]
    inv_freq = inv_freq * hp.freq_scale
    return np.outer(positions, inv_freq)


def rope(x: np.ndarray, theta: np.ndarray, mode: str, mscale: float) -> np.ndarray:
    """Rotate pairs of every head vector.  x (T, H, hd), theta (T, hd/2) -> (T, H, hd).

    NORM pairs (v[2i], v[2i+1]); NEOX pairs (v[i], v[i + hd/2]).
    """
    half = x.shape[-1] // 2
    cos = mscale * np.cos(theta)[:, None, :]           # (T, 1, hd/2)
    sin = mscale * np.sin(theta)[:, None, :]
    if mode == "norm":
        x0, x1 = x[..., 0::2], x[..., 1::2]
    else:
        x0, x1 = x[..., :half], x[..., half:]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    out = np.empty_like(x)
    if mode == "norm":
        out[..., 0::2], out[..., 1::2] = r0, r1
    else:
        out[..., :half], out[..., half:] = r0, r1
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal GQA attention.  q (T, H, hd), k/v (T, H_kv, hd) -> (T, H·hd), heads concatenated in order.

    Query head h reads KV head h // (H / H_kv).
    """
    T, n_head, hd = q.shape
    group = n_head // k.shape[1]
    k = np.repeat(k, group, axis=1)                    # (T, H, hd): [k0, k0, k1, k1, ...]
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)      # (H, T_query, T_key)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)          # key position > query position
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)                       # (H, T, T)
    out = np.einsum("hts,shd->thd", p, v)                       # (T, H, hd)
    return out.reshape(T, n_head * hd)


def forward(model: RefModel, tokens: Sequence[int], adapters: AdapterList = (),
            act_quant: ActQuant | None = None) -> np.ndarray:
    """Logits of every position for tokens at positions 0..T-1.  -> float64 (T, n_vocab).

    act_quant(weight name, x) -> x', if given, replaces each weight product's input.
    """
    hp = model.hparams
    w = model.weights
    lora = _Lora(model, adapters, act_quant)
    T = len(tokens)
    theta = rope_angles(model, np.arange(T, dtype=np.float64))  # (T, hd/2)

    x = embed(model, lora, tokens)                                  # (T, n_embd)
    for il in range(hp.n_layer):
        blk = f"blk.{il}."
        h = rmsnorm(x, w[blk + "attn_norm.weight"], hp.rms_eps)     # (T, n_embd)
        q = linear(model, lora, blk + "attn_q.weight", h)           # (T, H·hd)
        k = linear(model, lora, blk + "attn_k.weight", h)           # (T, H_kv·hd)
        v = linear(model, lora, blk + "attn_v.weight", h)           # (T, H_kv·hd)
        q = q.reshape(T, hp.n_head, hp.head_dim)
        k = k.reshape(T, hp.n_head_kv, hp.head_dim)
        v = v.reshape(T, hp.n_head_kv, hp.head_dim)
        q = rope(q, theta, hp.rope_mode, hp.attn_factor)
        k = rope(k, theta, hp.rope_mode, hp.attn_factor)
        a = attention(q, k, v)                                      # (T, H·hd)
        a = linear(model, lora, blk + "attn_output.weight", a)      # (T, n_embd)
        r = x + a
        f = rmsnorm(r, w[blk + "ffn_norm.weight"], hp.rms_eps)     # (T, n_embd)
        gate = silu(linear(model, lora, blk + "ffn_gate.weight", f))  # (T, n_ff)
        up = linear(model, lora, blk + "ffn_up.weight", f)            # (T, n_ff)
        x = r + linear(model, lora, blk + "ffn_down.weight", gate * up)  # (T, n_embd)

    h = rmsnorm(x, w["output_norm.weight"], hp.rms_eps)               # (T, n_embd)
    output = "output.weight" if "output.weight" in w else "token_embd.weight"  # tied: W = token_embd
    return linear(model, lora, output, h, site="output.weight")       # (T, n_vocab)


def with_hparams(model: RefModel, **changes) -> RefModel:
    """A copy of `model` with some hyper-parameters replaced (weights copied)."""
    return RefModel(dataclasses.replace(model.hparams, **changes),
                    {name: w.copy() for name, w in model.weights.items()})


# ----------------------------------------------------------------------------------------------------------
# Incremental decoding over a KV cache, and llama.cpp's context shift (gguf-llama.md §6)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class RefKVCache:
    """Per layer, K (rotated at its cell's position) and V of the cached tokens, each (n, H_kv, hd) float64;
    cell j holds position j (llama-cli's single sequence, also after a shift)."""
    k: list[np.ndarray]
    v: list[np.ndarray]

    @property
    def n_past(self) -> int:
        return self.k[0].shape[0]


def empty_cache(model: RefModel) -> RefKVCache:
    hp = model.hparams
    shape = (0, hp.n_head_kv, hp.head_dim)
    return RefKVCache([np.zeros(shape) for _ in range(hp.n_layer)], [np.zeros(shape) for _ in range(hp.n_layer)])


def cached_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray) -> np.ndarray:
    """Attention of T queries at positions q_pos over the S cells 0..S-1.  q (T, H, hd), k/v (S, H_kv, hd)
    -> (T, H·hd); a cell is seen when its position <= the query's."""
    T, n_head, hd = q.shape
    group = n_head // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)      # (S, H, hd)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)              # (H, T, S)
    scores = np.where(np.arange(k.shape[0])[None, :] > q_pos[:, None], -np.inf, scores)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(T, n_head * hd)


def decode(model: RefModel, cache: RefKVCache, tokens: Sequence[int], adapters: AdapterList = ()) -> np.ndarray:
    """Appends tokens at positions n_past.. to the cache (in place); logits of each.  -> (T, n_vocab).

    With an empty cache this is forward(); the layer body is forward()'s, attending over the cache.
    """
    hp, w = model.hparams, model.weights
    lora = _Lora(model, adapters)
    T = len(tokens)
    pos = np.arange(cache.n_past, cache.n_past + T, dtype=np.float64)
    theta = rope_angles(model, pos)                                     # (T, hd/2)
    x = embed(model, lora, tokens)                                      # (T, n_embd)
    for il in range(hp.n_layer):
        blk = f"blk.{il}."
        h = rmsnorm(x, w[blk + "attn_norm.weight"], hp.rms_eps)
        q = linear(model, lora, blk + "attn_q.weight", h).reshape(T, hp.n_head, hp.head_dim)
        k = linear(model, lora, blk + "attn_k.weight", h).reshape(T, hp.n_head_kv, hp.head_dim)
        v = linear(model, lora, blk + "attn_v.weight", h).reshape(T, hp.n_head_kv, hp.head_dim)
        q = rope(q, theta, hp.rope_mode, hp.attn_factor)
        cache.k[il] = np.concatenate([cache.k[il], rope(k, theta, hp.rope_mode, hp.attn_factor)])
        cache.v[il] = np.concatenate([cache.v[il], v])
        a = cached_attention(q, cache.k[il], cache.v[il], pos)
        r = x + linear(model, lora, blk + "attn_output.weight", a)
        f = rmsnorm(r, w[blk + "ffn_norm.weight"], hp.rms_eps)
        gate = silu(linear(model, lora, blk + "ffn_gate.weight", f))
        x = r + linear(model, lora, blk + "ffn_down.weight", gate * linear(model, lora, blk + "ffn_up.weight", f))
    h = rmsnorm(x, w["output_norm.weight"], hp.rms_eps)
    output = "output.weight" if "output.weight" in w else "token_embd.weight"
    return linear(model, lora, output, h, site="output.weight")


def shift_cache(model: RefModel, cache: RefKVCache, n_keep: int, n_discard: int, rerotate: bool = True) -> None:
    """llama.cpp's context shift, in place: seq_rm of cells n_keep .. n_keep+n_discard-1, then seq_add of
    -n_discard to the later cells, whose stored K is rotated again by the angles of -n_discard (a pure
    rotation: mscale 1). rerotate=False leaves K as stored (a wrong shift, to show what the check catches)."""
    hp = model.hparams
    theta = rope_angles(model, np.array([-float(n_discard)]))           # (1, hd/2)
    for il in range(hp.n_layer):
        later = cache.k[il][n_keep + n_discard:]
        if rerotate:
            later = rope(later, theta, hp.rope_mode, 1.0)                # theta broadcasts over the cells
        cache.k[il] = np.concatenate([cache.k[il][:n_keep], later])
        cache.v[il] = np.concatenate([cache.v[il][:n_keep], cache.v[il][n_keep + n_discard:]])
