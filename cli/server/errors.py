"""llama-server's error shape: {"error": {"code": N, "message": "...", "type": "..."}} (cli-surface.md §7)."""
from __future__ import annotations

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
               422: "invalid_request_error", 500: "server_error", 501: "not_supported_error",
               503: "unavailable_error"}


class APIError(Exception):
    """A request that cannot be served: its HTTP status and a one-line message naming the field at fault."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict:
        return {"error": {"code": self.status, "message": self.message, "type": ERROR_TYPES.get(self.status, "server_error")}}
