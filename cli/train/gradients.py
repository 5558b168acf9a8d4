"""LoraGradients: the C core's training forward and backward (hl_train) over one window of tokens."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._native import check, ffi, lib
from ..adapters import LAYER_TARGETS, target_of
from ..errors import HotLoraError
from .params import LoraParams, projection_shape

if TYPE_CHECKING:
    from ..model import Model

def _site(model: "Model", name: str) -> tuple[int, int]:
    """(layer, hl_lora_target) of a trainable base tensor name: a block's projection (adapters.target_of's
    rule, without the output head and token embeddings, which the core does not train)."""
    target, layer = target_of(model.path, name, model.n_layer)
    if layer < 0:
        raise HotLoraError(f"LoRA parameter '{name}' is not a projection of a block "
                           f"(blk.N.{{{','.join(LAYER_TARGETS)}}}.weight): only those train")
    return layer, target


def _check_matrix(what: str, x: np.ndarray, shape: tuple[int, int]) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.flags.c_contiguous or x.shape != shape:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise HotLoraError(f"{what}: expected a C-contiguous float32 array of shape {list(shape)}, got {got}")


class LoraGradients:
    """Gradients of the summed next-token cross-entropy of a window with respect to every LoRA A and B.

    >>> with LoraGradients(model, params, n_tokens_max=256, n_threads=8) as g:
    ...     loss_sum, n = g.accumulate(tokens, targets, grad_a, grad_b)
    """

    def __init__(self, model: "Model", params: LoraParams, n_tokens_max: int, n_threads: int,
                 keep_activations: bool = False):
        """keep_activations: keep every layer's intermediates from the forward instead of recomputing each layer
        in the backward (one forward pass fewer per step, n_layer times one layer's activation memory)."""
        for what, value in (("n_tokens_max", n_tokens_max), ("n_threads", n_threads)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise HotLoraError(f"LoraGradients: {what} must be a positive integer, got {value}")
        if model._model is None:
            raise HotLoraError("LoraGradients: the model is closed")
        self.model, self.params, self.n_tokens_max = model, params, int(n_tokens_max)
        if len(params.a) != len(params.names) or len(params.b) != len(params.names):
            raise HotLoraError(f"LoraParams: {len(params.names)} names, {len(params.a)} A and {len(params.b)} B")
        if len(set(params.names)) != len(params.names):
            raise HotLoraError("LoraParams: a tensor name appears twice")
        self._sites = [_site(model, name) for name in params.names]
        self._shapes = [projection_shape(model, name) for name in params.names]
        self._check_params()
        out = ffi.new("hl_train **")
        check(lib.hl_train_create(model._model, self.n_tokens_max, int(n_threads), int(bool(keep_activations)), out),
              "training")
        self._train = out[0]
        self._abort_flag = ffi.new("int32_t *")
        lib.hl_train_set_abort(self._train, self._abort_flag)

    # ---- checks -----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        r = self.params.rank
        if not isinstance(r, (int, np.integer)) or r < 1 or not np.isfinite(self.params.lora_scale):
            raise HotLoraError(f"LoraParams: rank {r} and alpha {self.params.alpha} must be a positive integer "
                               "and a finite number")
        for name, a, b, (n_in, n_out) in zip(self.params.names, self.params.a, self.params.b, self._shapes):
            _check_matrix(f"LoRA A of {name}", a, (r, n_in))
            _check_matrix(f"LoRA B of {name}", b, (n_out, r))

    def _check_grads(self, grad_a: list[np.ndarray], grad_b: list[np.ndarray]) -> None:
        if len(grad_a) != len(self.params.names) or len(grad_b) != len(self.params.names):
            raise HotLoraError(f"gradients: {len(grad_a)} A and {len(grad_b)} B buffers for "
                               f"{len(self.params.names)} LoRA pairs")
        for name, ga, gb, a, b in zip(self.params.names, grad_a, grad_b, self.params.a, self.params.b):
            _check_matrix(f"gradient of LoRA A of {name}", ga, a.shape)
            _check_matrix(f"gradient of LoRA B of {name}", gb, b.shape)

    def _tokens(self, what: str, x: np.ndarray, low: int) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 1 or not 1 <= len(x) <= self.n_tokens_max or x.dtype.kind not in "iu":
            raise HotLoraError(f"{what}: expected 1 to {self.n_tokens_max} integer ids, got {x.dtype} {list(x.shape)}")
        if len(x) and (x.min() < low or x.max() >= self.model.n_vocab):
            raise HotLoraError(f"{what}: ids must lie in {low}..{self.model.n_vocab - 1}")
        return np.ascontiguousarray(x, dtype=np.int32)

    def _pairs(self, grad_a=None, grad_b=None):
        """The hl_train_pair array of the current params (and the buffers it points into, kept alive)."""
        self._check_params()
        n = len(self.params.names)
        pairs = ffi.new("hl_train_pair[]", max(n, 1))
        keep = []
        for i, ((layer, target), a, b) in enumerate(zip(self._sites, self.params.a, self.params.b)):
            p = pairs[i]
            p.target, p.layer, p.rank, p.scale = target, layer, self.params.rank, self.params.lora_scale
            bufs = [ffi.from_buffer("float[]", a), ffi.from_buffer("float[]", b)]
            p.a, p.b = bufs
            if grad_a is not None:
                bufs += [ffi.from_buffer("float[]", grad_a[i]), ffi.from_buffer("float[]", grad_b[i])]
                p.grad_a, p.grad_b = bufs[2], bufs[3]
            keep += bufs
        return pairs, n, keep

    def _live(self):
        if self._train is None:
            raise HotLoraError("LoraGradients: closed")
        if self.model._model is None:
            raise HotLoraError("LoraGradients: the model is closed")
        return self._train

    # ---- compute ----------------------------------------------------------------------------------
    def accumulate(self, tokens: np.ndarray, targets: np.ndarray,
                   grad_a: list[np.ndarray], grad_b: list[np.ndarray]) -> tuple[float, int]:
        """One forward + backward over a window: tokens [T] int32, targets [T] int32 (the next token at each
        position, -1 = no loss there), T <= n_tokens_max. Uses params.a / params.b as they are at call time.
        ADDS d(sum of losses)/dA and d(...)/dB into grad_a / grad_b and returns (sum of the token losses in
        nats, number of loss positions). The gradients are unchanged when it raises, except after abort()."""
        train = self._live()
        tokens = self._tokens("tokens", tokens, 0)
        targets = self._tokens("targets", targets, -1)
        if len(targets) != len(tokens):
            raise HotLoraError(f"targets: {len(targets)} ids for {len(tokens)} tokens")
        self._check_grads(grad_a, grad_b)
        pairs, n, _keep = self._pairs(grad_a, grad_b)
        loss, count = ffi.new("double *"), ffi.new("int32_t *")
        self._abort_flag[0] = 0
        check(lib.hl_train_step(train, pairs, n, ffi.from_buffer("int32_t[]", tokens),
                                ffi.from_buffer("int32_t[]", targets), len(tokens), loss, count), "training step")
        return float(loss[0]), int(count[0])

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """The training forward's logits, float32 [T, n_vocab]."""
        train = self._live()
        tokens = self._tokens("tokens", tokens, 0)
        out = np.empty((len(tokens), self.model.n_vocab), dtype=np.float32)
        pairs, n, _keep = self._pairs()
        self._abort_flag[0] = 0
        check(lib.hl_train_logits(train, pairs, n, ffi.from_buffer("int32_t[]", tokens), len(tokens),
                                  ffi.from_buffer("float[]", out)), "training forward")
        return out

    def abort(self) -> None:
        """Stops a running accumulate() or logits() between blocks (safe from another thread): it raises
        hotlora.errors.Interrupted, and the gradient buffers then hold part of that window's gradient."""
        self._abort_flag[0] = 1

    @property
    def n_bytes(self) -> int:
        """Bytes of activations and scratch the core holds for training."""
        return int(lib.hl_train_bytes(self._live()))

    def close(self) -> None:
        if getattr(self, "_train", None) is not None:
            lib.hl_train_free(self._train)
            self._train = None

    def __enter__(self) -> "LoraGradients":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()
