"""hotlora: LLaMA-family GGUF models on the CPU, with LoRA adapters applied at run time.

The public names load on first use (PEP 562), so `python -m hotlora --help` does not pay for numpy,
gguf and the C core.
"""
from importlib import import_module

__all__ = ["Adapter", "HotLoraError", "Model", "Sequence", "Session", "Tokenizer", "__version__"]
__version__ = "0.1.0"
_HOMES = {"Adapter": ".lora", "HotLoraError": ".errors", "Model": ".model", "Sequence": ".sequence",
          "Session": ".session", "Tokenizer": ".tokenizer"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'hotlora' has no attribute '{name}'")
    value = getattr(import_module(_HOMES[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value
