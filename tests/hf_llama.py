"""Hugging Face-layout LLaMA / Qwen2 models and PEFT LoRA adapters in numpy, for `convert-lora` tests.

An independent oracle: nothing here uses hotlora. Weights are float64 in HF (torch) orientation, named as in a
HF checkpoint (`model.layers.0.self_attn.q_proj.weight` is `(n_head·head_dim, hidden)`); the forward pass is
HF's: rotate-half RoPE on the *un-permuted* q/k, GQA by repeating KV heads, `x @ W.T + b`, and PEFT's LoRA
`W_eff = W + s · B @ A` with PEFT's per-module scale `s = alpha_t / r_t` (`alpha_t / sqrt(r_t)` with rsLoRA;
`alpha_t`, `r_t` from `alpha_pattern` / `rank_pattern` by PEFT's suffix-regex rule). An embedding LoRA adds
`s · A.T[id] @ B.T` to the looked-up row (PEFT `Embedding`: `lora_embedding_A (r, vocab)`,
`lora_embedding_B (hidden, r)`); an `lm_head` LoRA of a tied model changes only the head.

`write_gguf` writes the base as llama.cpp's converter does (gguf-llama.md §2–§4): q_proj / k_proj rows permuted
within each head for `llama` (not for `qwen2`), names mapped to GGUF, the tiny byte-level BPE vocabulary of
tests/factory.py.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from factory import EOT_ID, MERGES, TOKEN_TYPES, TOKENS, N_VOCAB

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class HFConfig:
    arch: str = "llama"            # "llama" (also Mistral) or "qwen2" (q/k/v biases, no permutation)
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 96
    tied: bool = False
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    vocab: int = N_VOCAB

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def linear_modules(cfg: HFConfig) -> list[str]:
    """Every linear module name PEFT could target, layer by layer, then lm_head."""
    names = [f"model.layers.{i}.self_attn.{m}" for i in range(cfg.layers) for m in ATTN]
    names += [f"model.layers.{i}.mlp.{m}" for i in range(cfg.layers) for m in MLP]
    return names + ["lm_head"]


def module_shape(cfg: HFConfig, module: str) -> tuple[int, int]:
    """(out, in) of a linear module."""
    q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    last = module.rsplit(".", 1)[-1]
    return {"q_proj": (q, cfg.hidden), "k_proj": (kv, cfg.hidden), "v_proj": (kv, cfg.hidden),
            "o_proj": (cfg.hidden, q), "gate_proj": (cfg.ffn, cfg.hidden), "up_proj": (cfg.ffn, cfg.hidden),
            "down_proj": (cfg.hidden, cfg.ffn), "lm_head": (cfg.vocab, cfg.hidden)}[last]


def random_model(cfg: HFConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """HF state dict (float64). lm_head.weight is absent when tied (it *is* embed_tokens)."""
    rng = np.random.default_rng(seed)
    w = {"model.embed_tokens.weight": rng.normal(0, 3 / np.sqrt(cfg.hidden), (cfg.vocab, cfg.hidden))}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(cfg.hidden)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(cfg.hidden)
        for m in ATTN:
            out, inp = module_shape(cfg, m)
            w[p + f"self_attn.{m}.weight"] = rng.normal(0, 1 / np.sqrt(inp), (out, inp))
            if cfg.arch == "qwen2" and m != "o_proj":
                w[p + f"self_attn.{m}.bias"] = 0.1 * rng.standard_normal(out)
        for m in MLP:
            out, inp = module_shape(cfg, m)
            w[p + f"mlp.{m}.weight"] = rng.normal(0, 1 / np.sqrt(inp), (out, inp))
    w["model.norm.weight"] = 1 + 0.1 * rng.standard_normal(cfg.hidden)
    if not cfg.tied:
        w["lm_head.weight"] = rng.normal(0, 3 / np.sqrt(cfg.hidden), (cfg.vocab, cfg.hidden))
    return w


# ---- GGUF base ------------------------------------------------------------------------------------------------

def hf_to_gguf_rows(x: np.ndarray, n_heads: int) -> np.ndarray:
    """gguf-llama.md §4, written as the loop it specifies: W_gguf[h·hd + 2j + s] = W_hf[h·hd + s·hd/2 + j]."""
    hd = x.shape[0] // n_heads
    out = np.empty_like(x)
    for h in range(n_heads):
        for s in range(2):
            for j in range(hd // 2):
                out[h * hd + 2 * j + s] = x[h * hd + s * hd // 2 + j]
    return out


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_tensors(cfg: HFConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"token_embd.weight": w["model.embed_tokens.weight"]}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        for hf, g in GGUF_NAMES.items():
            for kind in ("weight", "bias"):
                value = w.get(p + f"{hf}.{kind}")
                if value is None:
                    continue
                if cfg.arch == "llama" and hf in ("self_attn.q_proj", "self_attn.k_proj"):
                    value = hf_to_gguf_rows(value, cfg.heads if hf.endswith("q_proj") else cfg.kv_heads)
                out[f"blk.{i}.{g}.{kind}"] = value
    out["output_norm.weight"] = w["model.norm.weight"]
    if not cfg.tied:
        out["output.weight"] = w["lm_head.weight"]
    return out


def write_gguf(path: str | Path, cfg: HFConfig, w: dict[str, np.ndarray]) -> Path:
    path, arch = Path(path), cfg.arch
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string("general.name", f"hf-{arch}")
    writer.add_uint32("general.file_type", 0)
    writer.add_uint32("general.quantization_version", 2)
    for key, value in (("context_length", 256), ("embedding_length", cfg.hidden), ("block_count", cfg.layers),
                       ("feed_forward_length", cfg.ffn), ("attention.head_count", cfg.heads),
                       ("attention.head_count_kv", cfg.kv_heads), ("rope.dimension_count", cfg.head_dim)):
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_eps)
    writer.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_string("tokenizer.ggml.pre", "gpt-2")
    writer.add_array("tokenizer.ggml.tokens", TOKENS)
    writer.add_array("tokenizer.ggml.token_type", TOKEN_TYPES)
    writer.add_array("tokenizer.ggml.merges", [f"{a} {b}" for a, b in MERGES])
    writer.add_uint32("tokenizer.ggml.bos_token_id", EOT_ID)
    writer.add_uint32("tokenizer.ggml.eos_token_id", EOT_ID)
    for name, value in gguf_tensors(cfg, w).items():
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- PEFT adapters ------------------------------------------------------------------------------------------

def pattern_value(patterns: dict, module: str, default):
    """PEFT: the first key with re.match(rf"(.*\\.)?({key})$", module) gives the value; else the default."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass
class PeftAdapter:
    config: dict
    tensors: dict[str, np.ndarray]     # safetensors names -> float32 arrays

    def rank(self, module: str) -> int:
        return pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])

    def scale(self, module: str) -> float:
        """PEFT's scaling of a module."""
        alpha = pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        r = self.rank(module)
        return alpha / (np.sqrt(r) if self.config.get("use_rslora") else r)

    def pairs(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """module -> (A, B) float64 as stored (linear A (r, in), B (out, r); embedding A (r, vocab), B (hidden, r))."""
        out = {}
        for name, value in self.tensors.items():
            m = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_embedding_[AB])", name)
            half = 0 if "A" in m.group(2) else 1
            out.setdefault(m.group(1), [None, None])[half] = value.astype(np.float64)
        return {k: tuple(v) for k, v in out.items()}

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "adapter_config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()},
                  str(directory / "adapter_model.safetensors"))
        return directory


def make_peft_adapter(cfg: HFConfig, modules: list[str], r: int = 8, lora_alpha: float = 16.0,
                      rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
                      use_rslora: bool = False, seed: int = 0, b_std: float = 0.3) -> PeftAdapter:
    """A "trained" adapter on `modules` (HF module names; `model.embed_tokens` gets lora_embedding_A/B).
    A ~ N(0, 1/sqrt(in)) (embedding A ~ N(0, 1)), B ~ N(0, b_std/sqrt(r)) so that every pair visibly moves the
    logits at PEFT's scale."""
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": f"tiny-{cfg.arch}",
              "r": r, "lora_alpha": lora_alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": use_rslora, "use_dora": False, "modules_to_save": None,
              "rank_pattern": rank_pattern or {}, "alpha_pattern": alpha_pattern or {},
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules})}
    adapter = PeftAdapter(config, {})
    rng = np.random.default_rng(seed)
    for module in modules:
        rank = adapter.rank(module)
        prefix = "base_model.model." + module
        if module == "model.embed_tokens":
            adapter.tensors[prefix + ".lora_embedding_A"] = rng.normal(0, 1, (rank, cfg.vocab)).astype(np.float32)
            adapter.tensors[prefix + ".lora_embedding_B"] = rng.normal(0, b_std / np.sqrt(rank),
                                                                       (cfg.hidden, rank)).astype(np.float32)
        else:
            out, inp = module_shape(cfg, module)
            adapter.tensors[prefix + ".lora_A.weight"] = rng.normal(0, 1 / np.sqrt(inp), (rank, inp)).astype(np.float32)
            adapter.tensors[prefix + ".lora_B.weight"] = rng.normal(0, b_std / np.sqrt(rank),
                                                                    (out, rank)).astype(np.float32)
    return adapter


# ---- forward pass -------------------------------------------------------------------------------------------

def effective_weights(w: dict[str, np.ndarray], adapters: list[tuple[PeftAdapter, float]]) -> dict[str, np.ndarray]:
    """W_eff = W + Σ user_scale · s · B @ A per module (embedding: E + s · (B @ A).T);
    a tied lm_head starts from E."""
    out = dict(w)
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = w["model.embed_tokens.weight"]
    for adapter, user_scale in adapters:
        for module, (a, b) in adapter.pairs().items():
            s = user_scale * adapter.scale(module)
            if module == "model.embed_tokens":
                out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"] + s * (b @ a).T
            else:
                out[module + ".weight"] = out[module + ".weight"] + s * (b @ a)
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, theta: float) -> np.ndarray:
    """HF rotate-half RoPE on (T, heads, head_dim) at positions 0..T-1."""
    t, _, hd = x.shape
    inv_freq = theta ** (-np.arange(0, hd, 2) / hd)
    freqs = np.outer(np.arange(t), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


def forward(cfg: HFConfig, w: dict[str, np.ndarray], tokens: list[int],
            adapters: list[tuple[PeftAdapter, float]] = ()) -> np.ndarray:
    """Logits (T, vocab), float64, of one causal pass over `tokens`."""
    w = effective_weights(w, list(adapters))
    hd, t = cfg.head_dim, len(tokens)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["model.embed_tokens.weight"][tokens]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], cfg.rms_eps)
        q = apply_rope(lin(h, p + "self_attn.q_proj").reshape(t, cfg.heads, hd), cfg.rope_theta)
        k = apply_rope(lin(h, p + "self_attn.k_proj").reshape(t, cfg.kv_heads, hd), cfg.rope_theta)
        v = lin(h, p + "self_attn.v_proj").reshape(t, cfg.kv_heads, hd)
        group = cfg.heads // cfg.kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)   # HF repeat_kv
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(t, cfg.heads * hd)
        x = x + lin(attn, p + "self_attn.o_proj")
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_eps)
        gate = lin(h, p + "mlp.gate_proj")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    return rms_norm(x, w["model.norm.weight"], cfg.rms_eps) @ w["lm_head.weight"].T
