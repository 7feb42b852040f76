"""The audit calls: read the HSM's hash-chained log in pages, its signed head and its
checkpoints (the log itself, and how entries are chained and signed, is
:mod:`hsm_emulator.audit`; every entry is written by :meth:`Boundary.audited`)."""

from __future__ import annotations

from .audit import AuditEntry, SignedHead
from .boundary import Boundary
from .errors import InvalidInput

#: The most entries one ``audit_entries`` call returns (a caller pages for more).
MAX_PAGE = 10_000


class AuditTrail:
    """The audit calls of :class:`hsm_emulator.Hsm` (see
    :class:`hsm_emulator.client.HsmAudit`)."""

    def __init__(self, boundary: Boundary) -> None:
        self._b = boundary

    def audit_entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]:
        if not isinstance(start, int) or not isinstance(limit, int) or start < 1:
            raise InvalidInput("audit_entries: start >= 1 and limit are whole numbers")
        with self._b.locked():
            return self._b.audit.entries(start, max(0, min(limit, MAX_PAGE)))

    def audit_head(self) -> SignedHead:
        with self._b.locked():
            return self._b.audit.head(self._b.clock.now())

    def audit_checkpoints(self) -> list[SignedHead]:
        with self._b.locked():
            return self._b.audit.checkpoints()
