"""hotlora: LLaMA-family GGUF models on the CPU, with LoRA adapters applied at run time."""
from .errors import HotLoraError
from .model import Model
from .tokenizer import Tokenizer

__all__ = ["HotLoraError", "Model", "Tokenizer", "__version__"]
__version__ = "0.1.0"
