"""One error root for the broker domain, each with a stable code.

The HTTP layer maps codes to statuses in one exception handler; the HSM's own errors
(``HsmError``) pass through with their codes.
"""

from __future__ import annotations


class CustodyError(Exception):
    code = "custody.error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"[{self.code}] {self.reason}"


class BadRequest(CustodyError):
    code = "custody.bad_request"


class Unauthorized(CustodyError):
    code = "custody.unauthorized"


class Forbidden(CustodyError):
    code = "custody.forbidden"


class NotFound(CustodyError):
    code = "custody.not_found"


class Conflict(CustodyError):
    code = "custody.conflict"


class RateLimited(CustodyError):
    code = "custody.rate_limited"


class Unavailable(CustodyError):
    """A part the call needs (a chain node, the HSM, the database) does not answer; the
    caller may retry later."""

    code = "custody.unavailable"
