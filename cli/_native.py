"""The only importer of the compiled core: `ffi`, `lib`, and status checking."""
from __future__ import annotations

from ._core import ffi, lib  # noqa: F401  (re-exported)
from .errors import ContextFullError, CoreError, Interrupted

TYPE_IDS = {
    "F32": lib.HL_TYPE_F32, "F16": lib.HL_TYPE_F16, "BF16": lib.HL_TYPE_BF16,
    "Q4_0": lib.HL_TYPE_Q4_0, "Q4_1": lib.HL_TYPE_Q4_1, "Q5_0": lib.HL_TYPE_Q5_0, "Q5_1": lib.HL_TYPE_Q5_1,
    "Q8_0": lib.HL_TYPE_Q8_0, "Q2_K": lib.HL_TYPE_Q2_K, "Q3_K": lib.HL_TYPE_Q3_K, "Q4_K": lib.HL_TYPE_Q4_K,
    "Q5_K": lib.HL_TYPE_Q5_K, "Q6_K": lib.HL_TYPE_Q6_K,
}
"""Weight types the core computes with, by ggml name."""


def last_error() -> str:
    return ffi.string(lib.hl_last_error()).decode("utf-8", "replace")


def check(status: int, what: str) -> None:
    """Raises the error matching a non-OK status, with the core's message."""
    if status == lib.HL_OK:
        return
    message = f"{what}: {last_error()}"
    if status == lib.HL_ERR_CONTEXT_FULL:
        raise ContextFullError(message)
    if status == lib.HL_ERR_ABORTED:
        raise Interrupted(message)
    raise CoreError(message)
