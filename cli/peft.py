"""Reading PEFT LoRA adapters: adapter_config.json (checked against what a LoRA GGUF can hold), the tensors
(safetensors, or .bin through torch when installed), and the mapping of PEFT module names to GGUF tensors.

Every refusal is a one-line ModelFileError that says what to do instead (lora.md §6.4, §10).
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelFileError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
MERGE_HINT = "merge the adapter into the base model with PEFT (merge_and_unload) and convert the merged model instead"

# HF module (below `model.layers.N.`) -> GGUF tensor (lora.md §6.2); all multiplied through LoRA-aware products.
LAYER_MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
_LAYER_MODULE = re.compile(r"model\.layers\.(\d+)\.(" + "|".join(re.escape(m) for m in LAYER_MODULES) + r")")
CONVERTIBLE = ("model.embed_tokens, model.layers.N.self_attn.{q,k,v,o}_proj, "
               "model.layers.N.mlp.{gate,up,down}_proj, lm_head")
# PEFT tensor suffix -> (half, kind)
_ADAPTER_NAME = re.compile(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)\.default(?=\.|$)")
_HALVES = {".lora_A.weight": ("A", "linear"), ".lora_B.weight": ("B", "linear"),
           ".lora_embedding_A": ("A", "embedding"), ".lora_embedding_B": ("B", "embedding")}

def get_pattern_key(pattern_keys, module: str) -> str | None:
    """PEFT's pattern lookup: the first key (in order) with re.match(rf"(.*\\.)?({key})$", module); None if none."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def read_config(peft_dir: Path) -> dict:
    path = peft_dir / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{peft_dir}: no {CONFIG_NAME} (expected a PEFT adapter directory)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return config


def _number(path: Path, key: str, value, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            integer and (value != int(value) or value < 1)):
        what = "a positive integer" if integer else "a number"
        raise ModelFileError(f"{path}: {key} must be {what}, got {value!r}")
    return int(value) if integer else float(value)


@dataclass
class PeftConfig:
    alpha: float
    r: int
    rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]


def check_config(peft_dir: Path, config: dict) -> PeftConfig:
    path = peft_dir / CONFIG_NAME
    peft_type = str(config.get("peft_type") or "LORA")
    if peft_type.upper() != "LORA":
        raise ModelFileError(f"{path}: peft_type '{peft_type}' is not LoRA; only LoRA adapters can be converted")
    if config.get("use_dora"):
        raise ModelFileError(f"{path}: DoRA adapters (use_dora: true) cannot be converted: a LoRA GGUF has no "
                             f"magnitude vector; {MERGE_HINT}")
    if config.get("fan_in_fan_out"):
        raise ModelFileError(f"{path}: fan_in_fan_out: true (Conv1D-style transposed weights, e.g. GPT-2) is not "
                             f"supported for llama/qwen2 bases; retrain with fan_in_fan_out false")
    bias = config.get("bias") or "none"
    if bias != "none":
        raise ModelFileError(f"{path}: bias '{bias}' trains bias vectors, which a LoRA GGUF cannot hold; "
                             f"retrain with bias='none' or {MERGE_HINT}")
    if config.get("lora_bias"):
        raise ModelFileError(f"{path}: lora_bias: true adds a trained lora_B bias, which a LoRA GGUF cannot hold; "
                             f"retrain without it or {MERGE_HINT}")
    saved = config.get("modules_to_save")
    if saved:
        raise ModelFileError(f"{path}: modules_to_save {saved} stores full trained weights (e.g. new token "
                             f"embeddings), which a LoRA GGUF cannot hold; {MERGE_HINT}")
    if config.get("layer_replication"):
        raise ModelFileError(f"{path}: layer_replication changes the model's layers and cannot be converted; "
                             f"{MERGE_HINT}")
    if "lora_alpha" not in config:
        raise ModelFileError(f"{path}: lora_alpha is missing")
    alpha = _number(path, "lora_alpha", config["lora_alpha"])
    r = _number(path, "r", config.get("r", 8), integer=True)
    patterns = {}
    for key, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        table = config.get(key) or {}
        if not isinstance(table, dict):
            raise ModelFileError(f"{path}: {key} must be an object of module pattern -> value")
        for pattern, value in table.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ModelFileError(f"{path}: {key} key '{pattern}' is not a valid regular expression ({e})") from None
            _number(path, f"{key}['{pattern}']", value, integer)
        patterns[key] = {k: (int(v) if integer else float(v)) for k, v in table.items()}
    return PeftConfig(alpha, r, bool(config.get("use_rslora", False)), patterns["rank_pattern"],
                       patterns["alpha_pattern"])


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except TypeError as e:
        if "bfloat16" in str(e):
            return _read_safetensors_manually(path)
        raise ModelFileError(f"{path}: cannot read safetensors file ({e})") from None
    except Exception as e:  # safetensors raises its own SafetensorError for malformed files
        raise ModelFileError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from None


_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _read_safetensors_manually(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file with BF16 tensors, which numpy cannot represent: widened to float32."""
    data = path.read_bytes()
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(data[8:8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _ST_DTYPES:
                raise ModelFileError(f"{path}: tensor '{name}' has dtype {info['dtype']}, expected a float type")
            begin, end = (8 + n + int(o) for o in info["data_offsets"])
            values = np.frombuffer(data[begin:end], dtype=_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
            if info["dtype"] == "BF16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            out[name] = values
        return out
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})") from None


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ModelFileError(
            f"{path}: reading a PyTorch .bin adapter needs torch, which is not installed; convert it to "
            f"safetensors first (where torch is installed: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{BIN_NAME}', weights_only=True), '{SAFETENSORS_NAME}')\") "
            f"or pip install torch") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() for k, v in state.items()}
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise ModelFileError(f"{path}: cannot read PyTorch adapter ({type(e).__name__}: {e})") from None


def load_peft_tensors(peft_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    for name, reader in ((SAFETENSORS_NAME, _read_safetensors), (BIN_NAME, _read_bin)):
        path = peft_dir / name
        if path.is_file():
            return path, reader(path)
    raise ModelFileError(f"{peft_dir}: no {SAFETENSORS_NAME} (or {BIN_NAME}) in the PEFT adapter directory")


def classify_tensors(path: Path, tensors: dict[str, np.ndarray], notes: list[str]) -> dict[str, dict[str, object]]:
    """module -> {"A": array, "B": array, "kind": linear|embedding, "names": {half: tensor name}}.

    Refusals are checked across all tensors in priority order (DoRA, biases, full weights, unknown) so the
    message names the real reason."""
    modules: dict[str, dict[str, object]] = {}
    dora, biases, full, unknown, skipped = [], [], [], [], []
    for name in sorted(tensors):
        short = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        short = _ADAPTER_NAME.sub(r".\1", short)   # state dicts saved with the adapter name ("default")
        for suffix, (half, kind) in _HALVES.items():
            if short.endswith(suffix):
                module = short[:-len(suffix)]
                entry = modules.setdefault(module, {"kind": kind, "names": {}})
                if entry["kind"] != kind:
                    raise ModelFileError(f"{path}: module '{module}' has both linear (lora_A/B) and embedding "
                                         f"(lora_embedding_A/B) LoRA tensors")
                entry[half], entry["names"][half] = tensors[name], name
                break
        else:
            if "lora_magnitude_vector" in short:
                dora.append(name)
            elif ".base_layer." in short:
                skipped.append(name)
            elif short.endswith(".bias"):
                biases.append(name)
            elif short.endswith(".weight"):
                full.append(name)
            else:
                unknown.append(name)
    if dora:
        raise ModelFileError(f"{path}: '{dora[0]}' is a DoRA magnitude vector; DoRA adapters cannot be converted "
                             f"(a LoRA GGUF has no magnitude vector); {MERGE_HINT}")
    if biases:
        raise ModelFileError(f"{path}: '{biases[0]}' is a trained bias, which a LoRA GGUF cannot hold; retrain "
                             f"with bias='none' or {MERGE_HINT}")
    if full:
        raise ModelFileError(f"{path}: '{full[0]}' is a full weight tensor (modules_to_save, e.g. resized "
                             f"embeddings for new tokens), which a LoRA GGUF cannot hold; {MERGE_HINT}")
    if unknown:
        raise ModelFileError(f"{path}: unexpected tensor '{unknown[0]}' (not a lora_A/lora_B or "
                             f"lora_embedding_A/B tensor)")
    if skipped:
        notes.append(f"skipped {len(skipped)} base_layer tensor(s) (frozen base weights), e.g. '{skipped[0]}'")
    if not modules:
        raise ModelFileError(f"{path}: no LoRA tensors (lora_A/lora_B) found")
    return modules


def gguf_name(path: Path, module: str, kind: str, arch: str) -> str:
    if module == "model.embed_tokens":
        name = "token_embd.weight"
    elif module == "lm_head":
        name = "output.weight"
    else:
        m = _LAYER_MODULE.fullmatch(module)
        if m is None:
            raise ModelFileError(f"{path}: target module '{module}' cannot be mapped to a {arch} GGUF tensor "
                                 f"(convertible: {CONVERTIBLE}); retrain without it in target_modules or "
                                 f"{MERGE_HINT}")
        name = f"blk.{int(m.group(1))}.{LAYER_MODULES[m.group(2)]}.weight"
    if (kind == "embedding") != (name == "token_embd.weight"):
        want = "lora_embedding_A/B" if name == "token_embd.weight" else "lora_A/lora_B"
        raise ModelFileError(f"{path}: module '{module}' should carry {want} tensors for {name}, got the other kind")
    return name


_MODULE_OF_TENSOR = {tensor: module for module, tensor in LAYER_MODULES.items()}  # attn_q: self_attn.q_proj


def peft_module(name: str) -> str:
    """The Hugging Face module of a GGUF layer tensor: blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj."""
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _MODULE_OF_TENSOR or parts[3] != "weight":
        raise ModelFileError(f"'{name}' is not a layer tensor with a PEFT module ({CONVERTIBLE})")
    return f"model.layers.{int(parts[1])}.{_MODULE_OF_TENSOR[parts[2]]}"


def as_float(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind != "f":
        raise ModelFileError(f"{path}: tensor '{name}' has dtype {values.dtype}, expected a float type")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ModelFileError(f"{path}: tensor '{name}' contains NaN or infinite values")
    return values
