"""Hyper-parameters of a LLaMA-family model, read from GGUF metadata (gguf-llama.md §2.2)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelFileError
from .gguf_io import GGUFFile

ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    rope_freq_base: float
    rope_freq_scale: float
    rope_attn_factor: float
    rope_neox: bool


INT32_MAX = 2**31 - 1


def _int32(f: GGUFFile, key: str, value):
    """A field the core holds in an int32 (one value or one per layer): range-checked, naming the key."""
    for v in value if isinstance(value, list) else [value]:
        if v is not None and not -INT32_MAX - 1 <= v <= INT32_MAX:
            raise ModelFileError(f"{f.path}: key {key} = {v} is out of range (at most {INT32_MAX})")
    return value


def _get_int32(f: GGUFFile, key: str, default=None, required: bool = False):
    return _int32(f, key, f.get_int(key, default, required))


def _get_int32_or_array(f: GGUFFile, key: str, required: bool = False):
    return _int32(f, key, f.get_int_or_array(key, required=required))


def _uniform(f: GGUFFile, key: str, value, n_layer: int, default=None) -> int:
    """A per-layer array must hold one value for every layer, all equal (dense models)."""
    if value is None:
        return default
    if isinstance(value, list):
        if len(value) != n_layer or len(set(value)) != 1:
            raise ModelFileError(f"{f.path}: {key} varies per layer ({value[:8]}...), which hotlora does not support")
        return value[0]
    return value


def _rope_freq_scale(f: GGUFFile, arch: str) -> float:
    kind = f.get_str(f"{arch}.rope.scaling.type", "linear")
    if kind not in ("none", "linear"):
        raise ModelFileError(f"{f.path}: rope scaling type '{kind}' is not supported (supported: none, linear)")
    factor = f.get_float(f"{arch}.rope.scaling.factor")
    if factor is None:
        factor = f.get_float(f"{arch}.rope.scale_linear", 0.0)
    return 1.0 / factor if kind == "linear" and factor else 1.0


def read_hparams(f: GGUFFile, n_vocab: int) -> HParams:
    arch = f.get_str("general.architecture", required=True)
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"{f.path}: unknown model architecture: '{arch}' (supported: {', '.join(ARCHITECTURES)})")
    if (f.get_int(f"{arch}.expert_count", 0) or 0) > 0:
        raise ModelFileError(f"{f.path}: mixture-of-experts models are not supported")
    n_layer = _get_int32(f, f"{arch}.block_count", required=True)
    n_embd = _get_int32(f, f"{arch}.embedding_length", required=True)
    n_head = _uniform(f, "attention.head_count", _get_int32_or_array(f, f"{arch}.attention.head_count", required=True), n_layer)
    n_head_kv = _uniform(f, "attention.head_count_kv", _get_int32_or_array(f, f"{arch}.attention.head_count_kv"), n_layer, n_head)
    n_ff = _uniform(f, "feed_forward_length", _get_int32_or_array(f, f"{arch}.feed_forward_length", required=True), n_layer)
    if n_layer < 1 or n_embd < 1 or n_head < 1 or n_head_kv < 1 or n_ff < 1:
        raise ModelFileError(f"{f.path}: block_count, embedding_length, head counts and feed_forward_length must be positive")
    if n_layer > len(f.tensors):  # every block has its own tensors: checked before anything is sized by it
        raise ModelFileError(f"{f.path}: block_count {n_layer} is more than the file's {len(f.tensors)} tensors")
    head_dim = _get_int32(f, f"{arch}.attention.key_length", n_embd // n_head)
    value_dim = _get_int32(f, f"{arch}.attention.value_length", head_dim)
    n_rot = _get_int32(f, f"{arch}.rope.dimension_count", head_dim)
    if value_dim != head_dim or n_rot != head_dim:
        raise ModelFileError(f"{f.path}: invalid n_rot: {n_rot}, expected {head_dim} (key_length {head_dim}, value_length {value_dim})")
    if head_dim < 2 or head_dim % 2 or n_head % n_head_kv:
        raise ModelFileError(f"{f.path}: head_dim {head_dim} must be even and head_count {n_head} a multiple of head_count_kv {n_head_kv}")
    return HParams(
        arch=arch, n_vocab=n_vocab, n_ctx_train=_get_int32(f, f"{arch}.context_length", required=True),
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, n_ff=n_ff,
        rms_eps=f.get_float(f"{arch}.attention.layer_norm_rms_epsilon", required=True),
        rope_freq_base=f.get_float(f"{arch}.rope.freq_base", 10000.0),
        rope_freq_scale=_rope_freq_scale(f, arch),
        rope_attn_factor=f.get_float(f"{arch}.rope.scaling.attn_factor", 1.0),
        rope_neox=arch == "qwen2",
    )
