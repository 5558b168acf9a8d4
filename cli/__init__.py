"""hotlora: LLaMA-family GGUF models on the CPU, with LoRA adapters applied at run time."""
from .errors import HotLoraError
from .lora import Adapter
from .model import Model
from .tokenizer import Tokenizer

__all__ = ["Adapter", "HotLoraError", "Model", "Tokenizer", "__version__"]
__version__ = "0.1.0"
