"""The user's adapter scale, read from text: one rule for the command line and the /lora commands."""
from __future__ import annotations

import math

from .errors import HotLoraError

FLOAT32_MAX = 3.4028234663852886e38  # the core multiplies by the scale in float32


def parse_scale(text: str, adapter: str) -> float:
    """A finite number within float32 range, or an error naming the adapter as the user typed it."""
    try:
        scale = float(text)
    except ValueError:
        raise HotLoraError(f"{adapter}: scale '{text}' is not a number") from None
    if not math.isfinite(scale) or abs(scale) > FLOAT32_MAX:
        raise HotLoraError(f"{adapter}: scale '{text}' must be finite and within float32 range "
                           f"(|scale| <= 3.4e38)")
    return scale
