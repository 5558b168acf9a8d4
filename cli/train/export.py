"""Writing trained LoRA weights: llama.cpp's adapter GGUF (convert-lora's writer) and a PEFT directory.

The PEFT directory is `adapter_config.json` + `adapter_model.safetensors` (F32) in PEFT's names, q/k `lora_B`
rows of llama bases un-permuted to Hugging Face's order (hotlora.convert.peft_pairs), so `hotlora
convert-lora` turns it back into the same GGUF adapter, and PEFT or vLLM load it on the Hugging Face base.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..convert import ConvertReport, peft_pairs, write_adapter
from ..errors import HotLoraError
from ..output_file import atomic_output
from ..peft import CONFIG_NAME, SAFETENSORS_NAME, peft_module
from .params import LoraParams


def _pairs(params: LoraParams) -> list:
    return list(zip(params.names, params.a, params.b))


def write_gguf_adapter(params: LoraParams, model, out: Path, name: str | None = None) -> ConvertReport:
    """The trained pairs as a llama.cpp adapter GGUF (F32) with adapter.lora.alpha = params.alpha."""
    return write_adapter(out, model.file, _pairs(params), params.alpha, name or Path(out).name.split(".")[0])


def peft_config(params: LoraParams, model) -> dict:
    modules = sorted({peft_module(n).rsplit(".", 1)[1] for n in params.names})  # q_proj, ...
    base_name = model.file.get_str("general.name") or model.path.stem
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
            "r": params.rank, "lora_alpha": params.alpha, "target_modules": modules, "lora_dropout": 0.0,
            "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None}


def write_peft_dir(params: LoraParams, model, directory: Path) -> None:
    from safetensors.numpy import save
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise HotLoraError(f"--peft-dir '{directory}' exists and is not a folder")
    try:
        directory.mkdir(exist_ok=True)
    except OSError as e:
        raise HotLoraError(f"--peft-dir: cannot create '{directory}': {e.strerror or e}") from None
    tensors = peft_pairs(model.file, _pairs(params))
    with atomic_output(directory / SAFETENSORS_NAME) as tmp:
        tmp.write_bytes(save(tensors, metadata={"format": "pt"}))
    with atomic_output(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(peft_config(params, model), indent=2) + "\n", encoding="utf-8")
