"""The model's tensor table: names, expected shapes and types, and the core's descriptor.

Every tensor is checked here (name known, type supported, shape as expected)
before the core is handed pointers into the memory map.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ._native import TYPE_IDS, ffi, lib
from .errors import ModelFileError
from .gguf_io import GGUFFile, TensorInfo, dims_of
from .hparams import HParams
from .repack import repack

# layer tensor suffix -> (descriptor field, kind); kind: "matrix", "vector" or "bias"
LAYER_TENSORS = {
    "attn_norm.weight": ("attn_norm", "vector"),
    "attn_q.weight": ("wq", "matrix"), "attn_k.weight": ("wk", "matrix"), "attn_v.weight": ("wv", "matrix"),
    "attn_q.bias": ("bq", "bias"), "attn_k.bias": ("bk", "bias"), "attn_v.bias": ("bv", "bias"),
    "attn_output.weight": ("wo", "matrix"), "attn_output.bias": ("bo", "bias"),
    "ffn_norm.weight": ("ffn_norm", "vector"),
    "ffn_gate.weight": ("w_gate", "matrix"), "ffn_up.weight": ("w_up", "matrix"), "ffn_down.weight": ("w_down", "matrix"),
    "ffn_gate.bias": ("b_gate", "bias"), "ffn_up.bias": ("b_up", "bias"), "ffn_down.bias": ("b_down", "bias"),
}


def layer_shapes(hp: HParams) -> dict[str, tuple[int, ...]]:
    """Expected ne of each layer tensor (gguf-llama.md §3)."""
    e, q, kv, ff = hp.n_embd, hp.head_dim * hp.n_head, hp.head_dim * hp.n_head_kv, hp.n_ff
    return {
        "attn_norm.weight": (e,), "attn_q.weight": (e, q), "attn_k.weight": (e, kv), "attn_v.weight": (e, kv),
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
        "attn_output.weight": (q, e), "attn_output.bias": (e,), "ffn_norm.weight": (e,),
        "ffn_gate.weight": (e, ff), "ffn_up.weight": (e, ff), "ffn_down.weight": (ff, e),
        "ffn_gate.bias": (ff,), "ffn_up.bias": (ff,), "ffn_down.bias": (e,),
    }


def _ne_text(ne) -> str:
    return "[" + ", ".join(str(d) for d in ne) + "]"


def check_tensor(f: GGUFFile, info: TensorInfo, shape: tuple[int, ...], kind: str) -> None:
    if dims_of(info.ne) != dims_of(shape):
        raise ModelFileError(f"{f.path}: tensor '{info.name}' has wrong shape; expected {_ne_text(shape)}, "
                             f"got {_ne_text(dims_of(info.ne))}")
    if kind != "matrix" and info.type_name != "F32":
        raise ModelFileError(f"{f.path}: tensor '{info.name}' must be F32, got {info.type_name}")
    if kind == "matrix" and info.type_name not in TYPE_IDS:
        raise ModelFileError(f"{f.path}: tensor '{info.name}' has type {info.type_name}, which hotlora does not "
                             f"support (supported: {', '.join(TYPE_IDS)})")


class CoreModelDesc:
    """Fills hl_model_desc from a checked file, keeping every pointer's owner alive."""

    def __init__(self, f: GGUFFile, hp: HParams, repack_weights: bool = True, n_threads: int = 1):
        """repack_weights: projections and the output head in the core's repacked layouts where this CPU's
        kernels for them are faster (cli/repack.py), n_threads tensors at a time; the token embeddings always
        stay rows."""
        self.desc = ffi.new("hl_model_desc *")
        self.layers = ffi.new("hl_layer_desc[]", hp.n_layer)
        self._buffers = []  # cffi buffers over the memory map or repacked copies; must outlive the core model
        self._to_repack: list[tuple[object, TensorInfo]] = []  # (view, tensor) if repack_weights
        self._repack = repack_weights
        self.n_repacked = 0
        self._fill_hparams(hp)
        used = self._fill_globals(f, hp)
        shapes = layer_shapes(hp)
        for il in range(hp.n_layer):
            used |= self._fill_layer(f, hp, il, shapes)
        unexpected = sorted(set(f.tensors) - used)
        if unexpected:
            raise ModelFileError(f"{f.path}: unexpected tensor '{unexpected[0]}' ({len(unexpected)} not used by {hp.arch})")
        self._repack_views(f, n_threads)

    def _fill_hparams(self, hp: HParams) -> None:
        d = self.desc
        d.arch = lib.HL_ARCH_QWEN2 if hp.arch == "qwen2" else lib.HL_ARCH_LLAMA
        d.n_vocab, d.n_embd, d.n_layer = hp.n_vocab, hp.n_embd, hp.n_layer
        d.n_head, d.n_head_kv, d.head_dim, d.n_ff = hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff
        d.rope_mode = lib.HL_ROPE_NEOX if hp.rope_neox else lib.HL_ROPE_NORM
        d.rms_eps, d.rope_freq_base = hp.rms_eps, hp.rope_freq_base
        d.rope_freq_scale, d.rope_attn_factor = hp.rope_freq_scale, hp.rope_attn_factor
        d.layers = self.layers

    def _view(self, view, data, type_id: int, ne) -> None:
        buffer = ffi.from_buffer(data)
        self._buffers.append(buffer)
        view.data = buffer
        view.type = type_id
        view.ne = list(ne)

    def _repack_views(self, f: GGUFFile, n_threads: int) -> None:
        """Repacks the queued projections, n_threads at a time (the core's hl_repack runs without the GIL)."""
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            packed = list(pool.map(lambda job: repack(f, job[1]), self._to_repack))
        for (view, info), result in zip(self._to_repack, packed):
            if result is not None:
                self._view(view, result[0], result[1], info.ne)
                self.n_repacked += 1
        self._to_repack = []

    def _take(self, f: GGUFFile, view, name: str, shape, kind: str, required: bool) -> set[str]:
        info = f.tensor(name, required)
        if info is None:
            return set()
        check_tensor(f, info, shape, kind)
        self._view(view, info.data, info.type_id, info.ne)
        if self._repack and kind == "matrix" and name != "token_embd.weight":
            self._to_repack.append((view, info))
        return {name}

    def _fill_globals(self, f: GGUFFile, hp: HParams) -> set[str]:
        d, e = self.desc, hp.n_embd
        used = self._take(f, d.token_embd, "token_embd.weight", (e, hp.n_vocab), "matrix", True)
        used |= self._take(f, d.output_norm, "output_norm.weight", (e,), "vector", True)
        used |= self._take(f, d.output, "output.weight", (e, hp.n_vocab), "matrix", False)
        used |= self._take(f, d.rope_freqs, "rope_freqs.weight", (hp.head_dim // 2,), "vector", False)
        return used

    def _fill_layer(self, f: GGUFFile, hp: HParams, il: int, shapes) -> set[str]:
        used = set()
        for suffix, (field, kind) in LAYER_TENSORS.items():
            required = kind != "bias" or (hp.arch == "qwen2" and suffix in ("attn_q.bias", "attn_k.bias", "attn_v.bias"))
            used |= self._take(f, getattr(self.layers[il], field), f"blk.{il}.{suffix}", shapes[suffix], kind, required)
        return used
