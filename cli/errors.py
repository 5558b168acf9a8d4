"""Errors hotlora raises on bad input. The CLI prints `error: <message>` and exits 1."""


class HotLoraError(Exception):
    """Base class: a one-line message that names the file, tensor or option at fault."""


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
