"""Which type each tensor gets when a model is quantized (quants.md §5, llama.cpp's rules).

Plain types apply to every 2-D weight. The K-quant mixes Q4_K_M and Q5_K_M keep
more bits in the output head, in attn_v and in ffn_down of some layers. 1-D
tensors (norms, biases, rope_freqs) are never quantized. A row length that is
not a whole number of 256-element blocks falls back to a 32-element type.
"""
from __future__ import annotations

import re

from .gguf_io import TensorInfo

PLAIN = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
MIXES = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K"}
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 11,
              "Q4_K": 14, "Q4_K_M": 15, "Q5_K": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}
# Not a multiple of 256 (quants.md §5); IQ4_NL, llama.cpp's choice for Q2_K/Q3_K, is not a hotlora type.
K_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_LAYER = re.compile(r"blk\.(\d+)\.(attn_v|ffn_down)\.weight")


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _mix_type(name: str, mix: str, n_layer: int, has_output: bool) -> str:
    base = MIXES[mix]
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        return "Q6_K"
    match = _LAYER.fullmatch(name)
    if match:
        return "Q6_K" if more_bits(int(match.group(1)), n_layer) else base
    return base


def tensor_type(info: TensorInfo, target: str, n_layer: int, has_output: bool) -> str:
    """The type a tensor is written in; 1-D tensors keep their own."""
    if info.ne[1] == 1 and info.ne[2] == 1:
        return info.type_name
    wanted = _mix_type(info.name, target, n_layer, has_output) if target in MIXES else target
    if wanted in K_FALLBACK and info.ne[0] % 256:
        wanted = K_FALLBACK[wanted]
    if wanted not in ("F32", "F16", "BF16") and info.ne[0] % 32:
        wanted = "F16"
    return wanted
