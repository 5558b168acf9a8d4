"""Tiny random LLaMA-family GGUF models and llama.cpp LoRA adapters for tests.

Models follow ../shared/spec/gguf-llama.md (§2.2 keys, §3 tensors; no q/k permutation — random weights need
none) with a small, self-consistent byte-level BPE vocabulary (tokenizers.md §5); adapters follow lora.md §2.

Weight types: every 2-D matrix (token_embd, output and all projections) gets `TinySpec.weight_type`; 1-D tensors
(norms, biases, rope_freqs) stay F32. Float and 32-element types are quantized from N(0, σ) floats with
`gguf.quants.quantize` (the pre-quantization floats are kept as `TinyTensor.intended`). `gguf` cannot quantize
K-quants, so K-quant matrices are random blocks: random bytes everywhere except the f16 `d`/`dmin` fields, which
are chosen so that the dequantized weights have mean ≈ 0 and standard deviation ≈ σ (each block's `d` jittered
by ×U(0.5, 1.5)); there `intended` is None and the truth is simply gguf's dequantization of the bytes. Real-range
random Q6_K scales make its `d` an f16 subnormal, as in real Q6_K files.

Block sizes: `resolve(spec)` rounds `n_embd` and `n_ff` up to the weight type's block size (256 for K-quants,
32 for Q4_0…Q8_0) so every row length `ne[0]` (n_embd, n_ff, head_dim·n_head) is a whole number of blocks; the
defaults give n_embd = n_ff = 256 (head_dim 64) for K-quants and leave 64/96 unchanged for the other types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType

WEIGHT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# general.file_type for a file whose matrices all have the type (gguf-llama.md §2.4).
FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
             "Q2_K": 10, "Q3_K": 11, "Q4_K": 14, "Q5_K": 16, "Q6_K": 18}

# Byte offsets of the f16 super-block scale `d` and min scale `dmin` (None: no dmin), quants.md §1.
K_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None)}


# ----------------------------------------------------------------------------------------------------------
# Vocabulary: 256 GPT-2 byte characters (id = byte value), a few merges, <|endoftext|>
# ----------------------------------------------------------------------------------------------------------

def gpt2_byte_chars() -> list[str]:
    """tokenizers.md §5: the printable bytes map to themselves, the other 68 to U+0100, U+0101, … in order."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, n_shifted = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(0x100 + n_shifted))
            n_shifted += 1
    return chars


MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"),
          ("o", "n"), ("Ġ", "s"), ("r", "e"), ("a", "t"), ("Ġ", "w"), ("o", "u")]
EOT = "<|endoftext|>"
TOKENS = gpt2_byte_chars() + [left + right for left, right in MERGES] + [EOT]
TOKEN_TYPES = [1] * (len(TOKENS) - 1) + [3]   # 1 normal, 3 control
EOT_ID = len(TOKENS) - 1
N_VOCAB = len(TOKENS)                         # 269


# ----------------------------------------------------------------------------------------------------------
# Model description
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TinySpec:
    arch: str = "llama"                 # "llama" (NORM rope) or "qwen2" (NEOX rope, q/k/v biases)
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 96
    weight_type: str = "F32"            # type of every 2-D matrix, one of WEIGHT_TYPES
    tied: bool = False                  # no output.weight: the output product uses token_embd
    biases: bool = False                # llama: all optional biases (q/k/v/o, gate/up/down)
    rope_freqs: bool = False            # llama3 rope_freqs.weight table (factor 8, low 1, high 4, L 8192)
    rope_freq_base: float = 10000.0
    rope_scale_factor: float | None = None  # writes rope.scaling.type = linear + rope.scaling.factor
    attn_factor: float | None = None    # rope.scaling.attn_factor
    head_dim: int | None = None         # writes attention.key_length/value_length (default n_embd/n_head)
    rms_eps: float = 1e-5
    context_length: int = 256
    seed: int = 0

    @property
    def n_vocab(self) -> int:
        return N_VOCAB

    @property
    def n_rot(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head


def resolve(spec: TinySpec) -> TinySpec:
    """The spec actually written: n_embd / n_ff rounded up to the weight type's block size; checked."""
    if spec.weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unsupported weight type {spec.weight_type!r}")
    if spec.arch not in ("llama", "qwen2"):
        raise ValueError(f"unsupported arch {spec.arch!r}")
    block = gguf.GGML_QUANT_SIZES[Q[spec.weight_type]][0]
    spec = dataclasses.replace(spec, n_embd=-(-spec.n_embd // block) * block,
                               n_ff=-(-spec.n_ff // block) * block)
    if spec.n_rot * spec.n_head % block:
        raise ValueError(f"head_dim·n_head = {spec.n_rot * spec.n_head} is not a multiple of {block}")
    if spec.n_rot % 2 or spec.n_head % spec.n_head_kv:
        raise ValueError("head_dim must be even and n_head a multiple of n_head_kv")
    if spec.arch == "qwen2" and (spec.rope_freqs or spec.n_rot * spec.n_head != spec.n_embd):
        raise ValueError("qwen2 has no rope_freqs and needs head_dim·n_head == n_embd")
    return spec


def llama3_rope_freqs(head_dim: int, base: float, factor: float = 8.0, low: float = 1.0,
                      high: float = 4.0, original_context: float = 8192.0) -> np.ndarray:
    """gguf-llama.md §5.2, Llama-3.1 scaling: the per-pair divisor of θ written as rope_freqs.weight."""
    out = np.empty(head_dim // 2, dtype=np.float64)
    for i in range(head_dim // 2):
        wavelen = 2 * np.pi / base ** (-2 * i / head_dim)
        if wavelen < original_context / high:
            out[i] = 1.0
        elif wavelen > original_context / low:
            out[i] = factor
        else:
            s = (original_context / wavelen - low) / (high - low)
            out[i] = 1.0 / ((1 - s) / factor + s)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Tensor encoding
# ----------------------------------------------------------------------------------------------------------

@dataclass
class TinyTensor:
    data: np.ndarray                 # what is written: float32 / float16, or uint8 block bytes (rows × bytes)
    raw_dtype: Q | None              # None for float32 / float16 arrays (the writer infers the type)
    intended: np.ndarray | None      # float32 values before quantization; None for random K-quant blocks


def encode(values: np.ndarray, type_name: str) -> TinyTensor:
    """Store float32 values (numpy orientation) as `type_name` (F32, F16, BF16 or a 32-element quant type)."""
    values = values.astype(np.float32)
    if type_name == "F32":
        return TinyTensor(values, None, values)
    if type_name == "F16":
        return TinyTensor(values.astype(np.float16), None, values)
    return TinyTensor(gguf.quants.quantize(values, Q[type_name]), Q[type_name], values)


def random_kquant(rng: np.random.Generator, n_rows: int, n_cols: int, type_name: str,
                  std: float) -> TinyTensor:
    """Random K-quant blocks whose dequantized values look like N(0, std).  -> uint8 (n_rows, row bytes)."""
    qtype = Q[type_name]
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = n_rows * n_cols // block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    d_at, dmin_at = K_SCALE_OFFSETS[type_name]

    def with_scales(d: np.ndarray, dmin: np.ndarray) -> np.ndarray:
        out = blocks.copy()
        out[:, d_at:d_at + 2] = d.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        if dmin_at is not None:
            out[:, dmin_at:dmin_at + 2] = dmin.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        return out

    ones, zeros = np.ones(n_blocks), np.zeros(n_blocks)
    # y = d·u + dmin·m (u: the d = 1 part, m: the dmin = 1 part); pick dmin/d to centre, then d for std.
    u = gguf.quants.dequantize(with_scales(ones, zeros), qtype)
    ratio = 0.0
    if dmin_at is not None:
        m = gguf.quants.dequantize(with_scales(zeros, ones), qtype)
        ratio = -u.mean() / m.mean()
        u = u + ratio * m
    d = std / u.std() * rng.uniform(0.5, 1.5, size=n_blocks)
    blocks = with_scales(d, ratio * d)
    return TinyTensor(blocks.reshape(n_rows, n_cols // block_elems * block_bytes), qtype, None)


def _matrix(rng: np.random.Generator, n_out: int, n_in: int, type_name: str, std: float) -> TinyTensor:
    """A (n_out, n_in) weight (ne [n_in, n_out]) of the given type."""
    if type_name in K_QUANTS:
        return random_kquant(rng, n_out, n_in, type_name, std)
    return encode(rng.normal(0.0, std, size=(n_out, n_in)), type_name)


def _vector(values: np.ndarray) -> TinyTensor:
    return encode(values, "F32")


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------

def tiny_model_tensors(spec: TinySpec) -> dict[str, TinyTensor]:
    """All tensors of the model described by `spec` (already resolved), in file order.

    Scales: projections N(0, 1/sqrt(n_in)); token_embd / output N(0, 3/sqrt(n_embd)) so logits are O(1–10);
    norm weights 1 + N(0, 0.1); biases N(0, 0.1).
    """
    rng = np.random.default_rng(spec.seed)
    t = spec.weight_type
    n_embd, n_ff, hd = spec.n_embd, spec.n_ff, spec.n_rot
    n_q, n_kv = hd * spec.n_head, hd * spec.n_head_kv

    def norm(n: int) -> TinyTensor:
        return _vector(1.0 + 0.1 * rng.standard_normal(n))

    def bias(n: int) -> TinyTensor:
        return _vector(0.1 * rng.standard_normal(n))

    tensors = {"token_embd.weight": _matrix(rng, spec.n_vocab, n_embd, t, 3.0 / np.sqrt(n_embd))}
    if spec.rope_freqs:
        tensors["rope_freqs.weight"] = _vector(llama3_rope_freqs(hd, spec.rope_freq_base))
    qkv_bias = spec.biases or spec.arch == "qwen2"
    other_bias = spec.biases and spec.arch == "llama"
    for il in range(spec.n_layer):
        blk = f"blk.{il}."
        tensors[blk + "attn_norm.weight"] = norm(n_embd)
        for name, n_out in (("attn_q", n_q), ("attn_k", n_kv), ("attn_v", n_kv)):
            tensors[blk + name + ".weight"] = _matrix(rng, n_out, n_embd, t, 1.0 / np.sqrt(n_embd))
            if qkv_bias:
                tensors[blk + name + ".bias"] = bias(n_out)
        tensors[blk + "attn_output.weight"] = _matrix(rng, n_embd, n_q, t, 1.0 / np.sqrt(n_q))
        if other_bias:
            tensors[blk + "attn_output.bias"] = bias(n_embd)
        tensors[blk + "ffn_norm.weight"] = norm(n_embd)
        for name, n_out, n_in in (("ffn_gate", n_ff, n_embd), ("ffn_up", n_ff, n_embd),
                                  ("ffn_down", n_embd, n_ff)):
            tensors[blk + name + ".weight"] = _matrix(rng, n_out, n_in, t, 1.0 / np.sqrt(n_in))
            if other_bias:
                tensors[blk + name + ".bias"] = bias(n_out)
    tensors["output_norm.weight"] = norm(n_embd)
    if not spec.tied:
        tensors["output.weight"] = _matrix(rng, spec.n_vocab, n_embd, t, 3.0 / np.sqrt(n_embd))
    return tensors


def _write(writer: gguf.GGUFWriter, tensors: dict[str, TinyTensor]) -> None:
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor.data, raw_dtype=tensor.raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_model(path: str | Path, spec: TinySpec = TinySpec()) -> Path:
    spec = resolve(spec)
    path = Path(path)
    arch = spec.arch
    w = gguf.GGUFWriter(path, arch)   # writes general.architecture
    w.add_string("general.name", f"tiny-{arch}-{spec.weight_type.lower()}")
    w.add_uint32("general.file_type", FILE_TYPE[spec.weight_type])
    w.add_uint32("general.quantization_version", 2)

    w.add_uint32(f"{arch}.context_length", spec.context_length)
    w.add_uint32(f"{arch}.embedding_length", spec.n_embd)
    w.add_uint32(f"{arch}.block_count", spec.n_layer)
    w.add_uint32(f"{arch}.feed_forward_length", spec.n_ff)
    w.add_uint32(f"{arch}.attention.head_count", spec.n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", spec.n_head_kv)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", spec.rms_eps)
    w.add_float32(f"{arch}.rope.freq_base", spec.rope_freq_base)
    w.add_uint32(f"{arch}.rope.dimension_count", spec.n_rot)
    if spec.head_dim is not None:
        w.add_uint32(f"{arch}.attention.key_length", spec.head_dim)
        w.add_uint32(f"{arch}.attention.value_length", spec.head_dim)
    if spec.rope_scale_factor is not None:
        w.add_string(f"{arch}.rope.scaling.type", "linear")
        w.add_float32(f"{arch}.rope.scaling.factor", spec.rope_scale_factor)
    if spec.attn_factor is not None:
        w.add_float32(f"{arch}.rope.scaling.attn_factor", spec.attn_factor)

    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "gpt-2")
    w.add_array("tokenizer.ggml.tokens", TOKENS)
    w.add_array("tokenizer.ggml.token_type", TOKEN_TYPES)          # i32 array
    w.add_array("tokenizer.ggml.merges", [f"{left} {right}" for left, right in MERGES])
    w.add_uint32("tokenizer.ggml.bos_token_id", EOT_ID)
    w.add_uint32("tokenizer.ggml.eos_token_id", EOT_ID)

    _write(w, tiny_model_tensors(spec))
    return path


# ----------------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------------

LAYER_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ADAPTER_TARGETS = LAYER_TARGETS + ("output", "token_embd")


def _projection_shape(spec: TinySpec, target: str) -> tuple[int, int]:
    """(n_out, n_in) of a per-layer projection or of `output`."""
    hd = spec.n_rot
    return {
        "attn_q": (hd * spec.n_head, spec.n_embd),
        "attn_k": (hd * spec.n_head_kv, spec.n_embd),
        "attn_v": (hd * spec.n_head_kv, spec.n_embd),
        "attn_output": (spec.n_embd, hd * spec.n_head),
        "ffn_gate": (spec.n_ff, spec.n_embd),
        "ffn_up": (spec.n_ff, spec.n_embd),
        "ffn_down": (spec.n_embd, spec.n_ff),
        "output": (spec.n_vocab, spec.n_embd),
    }[target]


def tiny_adapter_tensors(base_spec: TinySpec, targets: Sequence[str], rank: int = 4,
                         tensor_type: str = "F32", seed: int = 0,
                         layers: Sequence[int] | None = None) -> dict[str, TinyTensor]:
    """LoRA pairs (lora.md §2.2) for `targets` on the given layers (default: all) of the resolved base spec.

    Projections: lora_a (r, n_in) [ne n_in, r] ~ N(0, 1/sqrt(n_in)), lora_b (n_out, r) [ne r, n_out] ~
    N(0, 0.05/sqrt(r)). token_embd: lora_a (n_vocab, r) [ne r, n_vocab] ~ N(0, 1), lora_b (n_embd, r)
    [ne r, n_embd] ~ N(0, 0.05/sqrt(r)).  (PEFT would start B at 0; these are "trained" values.)
    """
    unknown = set(targets) - set(ADAPTER_TARGETS)
    if unknown:
        raise ValueError(f"unknown adapter targets {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    layers = range(base_spec.n_layer) if layers is None else layers
    b_std = 0.05 / np.sqrt(rank)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "token_embd" in targets:
        pairs["token_embd.weight"] = (rng.normal(0.0, 1.0, (base_spec.n_vocab, rank)),
                                      rng.normal(0.0, b_std, (base_spec.n_embd, rank)))
    for il in layers:
        for target in (t for t in LAYER_TARGETS if t in targets):
            n_out, n_in = _projection_shape(base_spec, target)
            pairs[f"blk.{il}.{target}.weight"] = (rng.normal(0.0, 1.0 / np.sqrt(n_in), (rank, n_in)),
                                                  rng.normal(0.0, b_std, (n_out, rank)))
    if "output" in targets:
        n_out, n_in = _projection_shape(base_spec, "output")
        pairs["output.weight"] = (rng.normal(0.0, 1.0 / np.sqrt(n_in), (rank, n_in)),
                                  rng.normal(0.0, b_std, (n_out, rank)))
    tensors = {}
    for base, (a, b) in pairs.items():
        tensors[base + ".lora_a"] = encode(a, tensor_type)
        tensors[base + ".lora_b"] = encode(b, tensor_type)
    return tensors


def write_tiny_adapter(path: str | Path, base_spec: TinySpec, targets: Sequence[str], rank: int = 4,
                       alpha: float = 8.0, tensor_type: str = "F32", seed: int = 0,
                       layers: Sequence[int] | None = None) -> Path:
    """A llama.cpp LoRA adapter GGUF with the keys convert_lora_to_gguf.py writes (lora.md §2.1).

    `tensor_type` may be any float or 32-element type; a quantized lora_b needs rank % 32 == 0.
    """
    base_spec = resolve(base_spec)
    path = Path(path)
    w = gguf.GGUFWriter(path, base_spec.arch)   # writes general.architecture
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_string("general.name", "Tiny Lora")
    w.add_float32("adapter.lora.alpha", alpha)
    w.add_uint32("general.quantization_version", 2)
    _write(w, tiny_adapter_tensors(base_spec, targets, rank, tensor_type, seed, layers))
    return path


def write_adapter_file(path: str | Path, arch: str, tensors: dict[str, TinyTensor | np.ndarray],
                       alpha: float | None = 8.0, general_type: str | None = "adapter",
                       adapter_type: str | None = "lora") -> Path:
    """An adapter GGUF with arbitrary tensors (for malformed-adapter tests): the keys of lora.md §2.1 (a None
    value leaves that key out) and `tensors` as given, in order (a numpy array is written as float32 with
    ne = reversed shape; a TinyTensor as encoded)."""
    path = Path(path)
    w = gguf.GGUFWriter(path, arch)
    if general_type is not None:
        w.add_string("general.type", general_type)
    if adapter_type is not None:
        w.add_string("adapter.type", adapter_type)
    w.add_string("general.name", "Tiny Lora")
    if alpha is not None:
        w.add_float32("adapter.lora.alpha", alpha)
    w.add_uint32("general.quantization_version", 2)
    _write(w, {name: t if isinstance(t, TinyTensor) else encode(np.asarray(t), "F32") for name, t in tensors.items()})
    return path


def adapter_pairs(tensors: dict[str, TinyTensor]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """base name -> (a, b) float32 arrays in numpy orientation (reference.RefAdapter.pairs layout) of the tensors
    of `tiny_adapter_tensors` (the values before any F16/BF16/Q8_0 rounding)."""
    bases = sorted({name.rpartition(".")[0] for name in tensors})
    return {base: (tensors[base + ".lora_a"].intended, tensors[base + ".lora_b"].intended) for base in bases}


def tiny_adapter_pairs(base_spec: TinySpec, targets: Sequence[str], rank: int = 4, seed: int = 0,
                       layers: Sequence[int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The float32 (a, b) pairs that `write_tiny_adapter` with the same arguments (and tensor_type F32) writes,
    in numpy orientation: projections a (r, n_in), b (n_out, r); token_embd a (n_vocab, r), b (n_embd, r)."""
    return adapter_pairs(tiny_adapter_tensors(resolve(base_spec), targets, rank, "F32", seed, layers))


# ----------------------------------------------------------------------------------------------------------
# Legacy ggla adapters (lora.md §8)
# ----------------------------------------------------------------------------------------------------------

GGLA_MAGIC = 0x67676C61
GGLA_FTYPE = {"F32": (0, np.float32), "F16": (1, np.float16)}


def ggla_tensors(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """ggla tensor name -> numpy array (shape = reversed ne) giving the same deltas as the GGUF `pairs`.

    `pairs` is in the GGUF adapter's numpy orientation (reference.RefAdapter.pairs, `tiny_adapter_pairs`).
    The ggla format had one rule for every tensor (lora.md §8, "old semantics"): `loraA` ne [r, n_in],
    `loraB` ne [r, n_out], checked as `W.ne[0] == loraA.ne[1]`, `W.ne[1] == loraB.ne[1]`, and
    `W += s · ggml_mul_mat(loraA, loraB)`, i.e. in numpy orientation `ΔW = loraB_np @ loraA_np.T`
    (loraA_np (n_in, r), loraB_np (n_out, r)).

    * projections / output: W (n_out, n_in), GGUF ΔW = b @ a with a (r, n_in), b (n_out, r) →
      loraA_np = a.T (A transposed, ne [r, n_in]), loraB_np = b (ne [r, n_out]).
    * token_embd: W (n_vocab, n_embd) is ne [n_embd, n_vocab], so the old rule reads it as a linear map with
      n_in = n_embd, n_out = n_vocab. GGUF ΔW = a @ b.T with a (n_vocab, r) [ne r, n_vocab], b (n_embd, r)
      [ne r, n_embd] → loraA_np = b (ne [r, n_embd]) and loraB_np = a (ne [r, n_vocab]): the GGUF halves
      swap places, without any transposition. Its row lookup is unchanged: x_t += s · loraA_np @ loraB_np[id_t].
    """
    out = {}
    for base, (a, b) in pairs.items():
        if base == "token_embd.weight":
            lora_a, lora_b = b, a
        else:
            lora_a, lora_b = a.T, b
        out[base + ".loraA"] = np.ascontiguousarray(lora_a)
        out[base + ".loraB"] = np.ascontiguousarray(lora_b)
    return out


def write_ggla_adapter(path: str | Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: int,
                       rank_header: int, a_type: str = "F32", b_type: str = "F32",
                       raw: dict[str, np.ndarray] | None = None) -> Path:
    """A legacy `ggla` LoRA file, byte for byte as lora.md §8 describes.

    Header: u32 magic 0x67676C61, i32 version 1, i32 r (`rank_header`, written as given: readers must take the
    rank of each pair from its tensors), i32 alpha. Then per tensor: i32 n_dims (2), i32 name_len, i32 ftype
    (0 F32, 1 F16), i32 ne[0], i32 ne[1], the UTF-8 name, zero padding up to a multiple of 32 counted from the
    start of the file, then the row-major data (ne[1] rows of ne[0] elements).

    `pairs`: GGUF-orientation pairs (see `ggla_tensors` for the mapping, including token_embd). Tensors are
    written in sorted base-name order, loraA before loraB, loraA as `a_type`, loraB as `b_type` ("F32"/"F16").
    `raw`, if given, replaces the whole tensor list (name -> numpy array, shape = reversed ne, written as F32
    unless float16) for malformed-file tests.
    """
    import struct

    tensors = raw if raw is not None else ggla_tensors(dict(sorted(pairs.items())))
    out = bytearray(struct.pack("<Iiii", GGLA_MAGIC, 1, int(rank_header), int(alpha)))
    for name, values in tensors.items():
        if raw is not None:
            ftype, dtype = (1, np.float16) if values.dtype == np.float16 else (0, np.float32)
        else:
            ftype, dtype = GGLA_FTYPE[a_type if name.endswith(".loraA") else b_type]
        values = np.ascontiguousarray(values, dtype=dtype)
        ne = list(reversed(values.shape))
        encoded = name.encode("utf-8")
        out += struct.pack(f"<iii{len(ne)}i", len(ne), len(encoded), ftype, *ne)
        out += encoded
        out += b"\0" * (-len(out) % 32)
        out += values.tobytes()
    path = Path(path)
    path.write_bytes(bytes(out))
    return path


# ----------------------------------------------------------------------------------------------------------
# Models from float weights (e.g. reference.merge results)
# ----------------------------------------------------------------------------------------------------------

def write_model_like(path: str | Path, src: str | Path, weights: dict[str, np.ndarray]) -> Path:
    """A copy of model file `src` (every metadata key) whose tensors are `weights` (numpy orientation), all
    written as F32, in `src`'s tensor order followed by any new names (e.g. the `output.weight` of a merged,
    untied model); `general.file_type` becomes 0 (all F32). Tensors of `src` missing from `weights` are dropped."""
    reader = gguf.GGUFReader(src)
    arch = reader.get_field("general.architecture").contents()
    writer = gguf.GGUFWriter(Path(path), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    writer.add_uint32("general.file_type", FILE_TYPE["F32"])
    order = [t.name for t in reader.tensors if t.name in weights]
    order += [name for name in weights if name not in order]
    for name in order:
        writer.add_tensor(name, np.ascontiguousarray(weights[name], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
