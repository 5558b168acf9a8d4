"""Errors hotlora raises on bad input. The CLI prints `error: <message>` and exits 1."""


def one_line(text: str) -> str:
    """Escapes newlines and other unprintable characters (e.g. from a corrupted tensor name)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class HotLoraError(Exception):
    """Base class: a one-line message that names the file, tensor or option at fault."""

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


class ModelFileError(HotLoraError):
    """A model or adapter file is missing, malformed or does not fit."""


class TokenizerError(HotLoraError):
    """A vocabulary is missing, malformed or cannot encode the input."""


class ContextFullError(HotLoraError):
    """The tokens do not fit in the context."""


class CoreError(HotLoraError):
    """The C core refused a call; the message is the core's last error."""


class Interrupted(HotLoraError):
    """Compute was stopped by the abort flag (Ctrl+C)."""


class NonFiniteError(HotLoraError):
    """A decode produced NaN or infinite logits (a bad weight, adapter or scale); names the first node found."""
