"""Sign request rows and their approvals in SQL: reads, inserts, and the one move to a
final state. Every part of the broker writes a request's end through :meth:`finish`, so
"first writer wins" holds however many parts (or replicas) race to end it."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..db import FINAL, ApprovalRecord, SignRequest, Status, utcnow
from ..errors import Conflict, NotFound


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
            return _approvals(s, request_id)

    def with_approvals(self, request_id: str) -> tuple[SignRequest, list[ApprovalRecord]]:
        """A request and its approvals so far, read in one session."""
        with self.sessions() as s:
            row: SignRequest | None = s.get(SignRequest, request_id)
            if row is None:
                raise NotFound(f"no request {request_id!r}")
            return row, _approvals(s, request_id)

    def add_approval(self, record: ApprovalRecord) -> None:
        """Record an approver's answer; :class:`Conflict` if they answered already."""
        try:
            with self.sessions.begin() as s:
                s.add(record)
        except IntegrityError:
            raise Conflict("this approver already answered this request") from None

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
               executed_at: float | None = None,
               approval: ApprovalRecord | None = None) -> SignRequest:
        """Move to a final state once: only from a non-final state (first writer wins).
        Returns the row as it now stands: the one this call wrote (``UPDATE ...
        RETURNING``, no second read), or - another writer ended it first - theirs.
        ``approval``: the approval that released it, recorded in the same transaction
        (unless that approver's answer is recorded already)."""
        values: dict[str, Any] = {"status": status, "error": error, "wake_at": None,
                                  "version": SignRequest.version + 1}
        if status is Status.EXECUTED:
            values.update(result=[base64.b64encode(s).decode() for s in signatures],
                          approved_by=approved_by, execution_time=datetime.fromtimestamp(
                              executed_at or self.clock(), UTC))
        with self.sessions.begin() as s:
            if approval is not None:
                s.execute(_insert_new(s, approval))
            row: SignRequest | None = s.scalars(
                update(SignRequest).where(
                    SignRequest.id == request_id,
                    SignRequest.status.not_in([st.value for st in FINAL])).values(**values)
                .returning(SignRequest),
                execution_options={"synchronize_session": False}).one_or_none()
        if row is None:
            return self.get(request_id)
        self.on_change(row)
        return row


def _approvals(s: Session, request_id: str) -> list[ApprovalRecord]:
    return list(s.scalars(select(ApprovalRecord).where(
        ApprovalRecord.request_id == request_id).order_by(ApprovalRecord.id)))


def _insert_new(s: Session, record: ApprovalRecord) -> Insert:
    """``record``'s insert, doing nothing if its approver's answer is there already."""
    values = {c.key: getattr(record, c.key) for c in ApprovalRecord.__table__.columns
              if c.key not in ("id", "rejected", "created_at")}
    values.update(rejected=bool(record.rejected), created_at=record.created_at or utcnow())
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    return insert(ApprovalRecord).values(**values).on_conflict_do_nothing(
        index_elements=["request_id", "approver"])
