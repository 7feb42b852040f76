"""Sign request rows and their approvals in SQL: reads, inserts, and the one move to a
final state. Every part of the broker writes a request's end through :meth:`finish`, so
"first writer wins" holds however many parts (or replicas) race to end it."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from ..db import FINAL, ApprovalRecord, SignRequest, Status
from ..errors import NotFound


class RequestStore:
    def __init__(self, sessions: sessionmaker,  # type: ignore[type-arg]
                 clock: Callable[[], float],
                 on_change: Callable[[SignRequest], None] | None = None) -> None:
        self.sessions = sessions
        self.clock = clock
        #: told of every new row and every status change (events, metrics, the treasury)
        self.on_change: Callable[[SignRequest], None] = on_change or (lambda _r: None)

    def get(self, request_id: str, tenant: str | None = None) -> SignRequest:
        with self.sessions() as s:
            row: SignRequest | None = s.get(SignRequest, request_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no request {request_id!r}")
            return row

    def find(self, request_id: str, tenant: str) -> SignRequest | None:
        try:
            return self.get(request_id, tenant)
        except NotFound:
            return None

    def approvals(self, request_id: str) -> list[ApprovalRecord]:
        with self.sessions() as s:
            return list(s.scalars(select(ApprovalRecord).where(
                ApprovalRecord.request_id == request_id).order_by(ApprovalRecord.id)))

    def insert(self, row: SignRequest) -> bool:
        """Add a new row; False if one with its id exists."""
        try:
            with self.sessions.begin() as s:
                s.add(row)
        except IntegrityError:
            return False
        return True

    def finish(self, request_id: str, status: Status, *, error: str | None = None,
               signatures: Sequence[bytes] = (), approved_by: list[str] | None = None,
               executed_at: float | None = None) -> None:
        """Move to a final state once: only from a non-final state (first writer wins)."""
        values: dict[str, Any] = {"status": status, "error": error, "wake_at": None,
                                  "version": SignRequest.version + 1}
        if status is Status.EXECUTED:
            values.update(result=[base64.b64encode(s).decode() for s in signatures],
                          approved_by=approved_by, execution_time=datetime.fromtimestamp(
                              executed_at or self.clock(), UTC))
        with self.sessions.begin() as s:
            changed = s.execute(update(SignRequest).where(
                SignRequest.id == request_id,
                SignRequest.status.not_in([st.value for st in FINAL])).values(**values))
        if changed.rowcount:
            self.on_change(self.get(request_id))
