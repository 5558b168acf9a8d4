"""Float64 reference backward pass: gradients of the summed next-token cross-entropy with respect to LoRA A and B.

Written from the math on top of tests/reference.py's forward pieces (rmsnorm, linear, rope, attention, silu
are reference.py's own functions; nothing of hotlora is used). The forward below is reference.forward()
step for step, keeping what the backward needs.

Loss: L = Σ_t [targets[t] >= 0] · (logsumexp(logits_t) − logits_t[targets[t]]).

Per op, with dy = ∂L/∂y:
  linear     y = x Wᵀ + s (x Aᵀ) Bᵀ + bias        dx = dy W + s (dy B) A, dA = s (dy B)ᵀ x, dB = s dyᵀ (x Aᵀ)
  rmsnorm    y = x·c·w, c = (mean(x²)+ε)^(−½)     dx = c (w dy) − x c³ Σ(w dy x) / n
  rope       a rotation by θ scaled by mscale       dx = the rotation by −θ (the transpose), same mscale
  attention  P = softmax(q kᵀ/√d) (causal), o = P v  dP = do vᵀ, dS = P (dP − Σ_j P dP)/√d, dq = dS k,
                                                     dk = dSᵀ q, dv = Pᵀ do (summed over a KV head's group)
  swiglu     h = silu(g) u                           dg = dh u σ(g)(1 + g(1 − σ(g))), du = dh silu(g)
  loss       dlogits = softmax − onehot(target)      (0 in rows with target −1)

act_quant (as reference.forward's): each frozen weight product sees act_quant(name, x) in the forward, as the
engine's quantized dot products do; the backward treats that rounding as the identity (straight-through),
which is what the engine's backward computes: dx = dy W.

Scope: LoRA pairs on the block projections (attn_q/k/v/output, ffn_gate/up/down), one adapter at one scale;
the token_embd and output-head LoRA sites are not trainable here (hotlora's trainer does not train them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import reference as R

Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # base name -> (a (r, n_in), b (n_out, r)), float64


def adapter_of(model: R.RefModel, pairs: Pairs, alpha: float) -> R.RefAdapter:
    """The pairs as a reference adapter (scale alpha / rank at user scale 1)."""
    return R.RefAdapter(model.hparams.arch, alpha, {n: (np.asarray(a, np.float64), np.asarray(b, np.float64))
                                                    for n, (a, b) in pairs.items()})


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(summed loss over rows with a target, dlogits)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    rows = np.flatnonzero(targets >= 0)
    loss = float(-np.log(p[rows, targets[rows]]).sum())
    d = np.zeros_like(p)
    d[rows] = p[rows]
    d[rows, targets[rows]] -= 1.0
    return loss, d


def loss(model: R.RefModel, tokens, targets, pairs: Pairs, alpha: float) -> float:
    """The loss through reference.forward itself (the finite-difference oracle)."""
    logits = R.forward(model, list(tokens), [(adapter_of(model, pairs, alpha), 1.0)])
    return cross_entropy(logits, np.asarray(targets))[0]


@dataclass
class _Tape:
    """The forward's intermediates of one block."""
    x: np.ndarray
    h: np.ndarray = None
    q: np.ndarray = None
    k: np.ndarray = None
    v: np.ndarray = None
    a: np.ndarray = None
    r: np.ndarray = None
    f: np.ndarray = None
    g: np.ndarray = None
    up: np.ndarray = None


def rmsnorm_backward(x: np.ndarray, w: np.ndarray, eps: float, dy: np.ndarray) -> np.ndarray:
    c = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    wdy = w * dy
    return c * wdy - x * c ** 3 * np.sum(wdy * x, axis=-1, keepdims=True) / x.shape[-1]


def attention_backward(q, k, v, do):
    """q (T, H, d), k/v (T, Hkv, d) rotated as the forward used them; do (T, H·d) -> dq, dk, dv."""
    T, n_head, hd = q.shape
    group = n_head // k.shape[1]
    kr, vr = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    do = do.reshape(T, n_head, hd)
    s = np.einsum("thd,shd->hts", q, kr) / np.sqrt(hd)
    s = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, s)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)                                  # (H, T, T)
    dp = np.einsum("thd,shd->hts", do, vr)
    ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True)) / np.sqrt(hd)
    dq = np.einsum("hts,shd->thd", ds, kr)
    dk = np.einsum("hts,thd->shd", ds, q)
    dv = np.einsum("hts,thd->shd", p, do)
    fold = lambda x: x.reshape(T, k.shape[1], group, hd).sum(axis=2)   # noqa: E731  query heads -> KV head
    return dq, fold(dk), fold(dv)


class _Backward:
    def __init__(self, model: R.RefModel, pairs: Pairs, alpha: float, act_quant: R.ActQuant | None):
        self.model, self.hp, self.w = model, model.hparams, model.weights
        self.adapter = adapter_of(model, pairs, alpha)
        self.lora = R._Lora(model, [(self.adapter, 1.0)], act_quant)
        self.grads = {n: (np.zeros_like(a), np.zeros_like(b)) for n, (a, b) in self.adapter.pairs.items()}

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        return R.linear(self.model, self.lora, name, x)

    def linear_backward(self, name: str, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
        dx = dy @ self.w[name]
        if name in self.adapter.pairs:
            a, b = self.adapter.pairs[name]
            s = self.adapter.scale(name, 1.0)
            dt = s * (dy @ b)                                           # (T, r)
            ga, gb = self.grads[name]
            ga += dt.T @ x
            gb += s * dy.T @ (x @ a.T)
            dx = dx + dt @ a
        return dx

    def block_forward(self, il: int, x: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, _Tape]:
        hp, w, blk, T = self.hp, self.w, f"blk.{il}.", x.shape[0]
        t = _Tape(x)
        t.h = R.rmsnorm(x, w[blk + "attn_norm.weight"], hp.rms_eps)
        shape = lambda n: (T, n, hp.head_dim)                            # noqa: E731
        t.q = R.rope(self.linear(blk + "attn_q.weight", t.h).reshape(shape(hp.n_head)), theta, hp.rope_mode,
                     hp.attn_factor)
        t.k = R.rope(self.linear(blk + "attn_k.weight", t.h).reshape(shape(hp.n_head_kv)), theta, hp.rope_mode,
                     hp.attn_factor)
        t.v = self.linear(blk + "attn_v.weight", t.h).reshape(shape(hp.n_head_kv))
        t.a = R.attention(t.q, t.k, t.v)
        t.r = x + self.linear(blk + "attn_output.weight", t.a)
        t.f = R.rmsnorm(t.r, w[blk + "ffn_norm.weight"], hp.rms_eps)
        t.g = self.linear(blk + "ffn_gate.weight", t.f)
        t.up = self.linear(blk + "ffn_up.weight", t.f)
        return t.r + self.linear(blk + "ffn_down.weight", R.silu(t.g) * t.up), t

    def block_backward(self, il: int, t: _Tape, dx: np.ndarray, theta: np.ndarray) -> np.ndarray:
        hp, w, blk, T = self.hp, self.w, f"blk.{il}.", dx.shape[0]
        dh = self.linear_backward(blk + "ffn_down.weight", R.silu(t.g) * t.up, dx)
        sig = 1.0 / (1.0 + np.exp(-t.g))
        dg = dh * t.up * sig * (1.0 + t.g * (1.0 - sig))
        du = dh * R.silu(t.g)
        df = (self.linear_backward(blk + "ffn_gate.weight", t.f, dg)
              + self.linear_backward(blk + "ffn_up.weight", t.f, du))
        dr = dx + rmsnorm_backward(t.r, w[blk + "ffn_norm.weight"], hp.rms_eps, df)
        da = self.linear_backward(blk + "attn_output.weight", t.a, dr)
        dq, dk, dv = attention_backward(t.q, t.k, t.v, da)
        dq = R.rope(dq, -theta, hp.rope_mode, hp.attn_factor).reshape(T, -1)
        dk = R.rope(dk, -theta, hp.rope_mode, hp.attn_factor).reshape(T, -1)
        dxn = (self.linear_backward(blk + "attn_q.weight", t.h, dq)
               + self.linear_backward(blk + "attn_k.weight", t.h, dk)
               + self.linear_backward(blk + "attn_v.weight", t.h, dv.reshape(T, -1)))
        return dr + rmsnorm_backward(t.x, w[blk + "attn_norm.weight"], hp.rms_eps, dxn)


def loss_and_grads(model: R.RefModel, tokens, targets, pairs: Pairs, alpha: float,
                   act_quant: R.ActQuant | None = None):
    """(summed loss, logits, {name: (dL/da, dL/db)}) for pairs on block projections at scale alpha / rank."""
    for name in pairs:
        if name.split(".")[-2] not in R.LAYER_PROJECTIONS or not name.startswith("blk."):
            raise ValueError(f"{name}: only block projections are trainable")
    bw = _Backward(model, pairs, alpha, act_quant)
    hp, w = bw.hp, bw.w
    targets = np.asarray(targets)
    theta = R.rope_angles(model, np.arange(len(tokens), dtype=np.float64))
    x = R.embed(model, bw.lora, list(tokens))
    tapes = []
    for il in range(hp.n_layer):
        x, tape = bw.block_forward(il, x, theta)
        tapes.append(tape)
    h = R.rmsnorm(x, w["output_norm.weight"], hp.rms_eps)
    head = "output.weight" if "output.weight" in w else "token_embd.weight"
    logits = (act_quant(head, h) if act_quant else h) @ w[head].T
    total, dlogits = cross_entropy(logits, targets)
    dx = rmsnorm_backward(x, w["output_norm.weight"], hp.rms_eps, dlogits @ w[head])
    for il in reversed(range(hp.n_layer)):
        dx = bw.block_backward(il, tapes[il], dx, theta)
    return total, logits, bw.grads
