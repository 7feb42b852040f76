"""One error root for the broker domain, each with a stable code."""

from __future__ import annotations


class CustodyError(Exception):
    code = "custody.error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
