"""The broker's state in SQL (SQLAlchemy 2): SQLite file by default, PostgreSQL to scale.

The broker keeps request state and collected approvals; none of it is trusted by the
HSM, which re-verifies everything. Every state change is committed before the next
external effect, so any replica or worker can pick a request up after a crash.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from . import sqlite_writes


class Status(StrEnum):
    """seed 003's request statuses."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"  #: policy met, release in progress (or waiting for the hold)
    EXECUTED = "EXECUTED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


FINAL = frozenset({Status.EXECUTED, Status.FAILED, Status.EXPIRED, Status.REJECTED,
                   Status.CANCELLED})


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SignRequest(Base):
    __tablename__ = "sign_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  #: the HSM's request id
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    initiator: Mapped[str] = mapped_column(String(256))
    key_label: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(16))
    payload_type: Mapped[str] = mapped_column(String(128))
    payload_b64: Mapped[str] = mapped_column(Text)
    signature_algorithm: Mapped[str | None] = mapped_column(String(64))
    meta_data: Mapped[dict[str, object] | None] = mapped_column(JSON)
    challenge_b64: Mapped[str] = mapped_column(Text)  #: approvalToBeSigned
    intent: Mapped[dict[str, object] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default=Status.PENDING)
    hsm_time: Mapped[float] = mapped_column(Float)
    #: when the broker should look at this request again (hold end, timeout)
    wake_at: Mapped[float | None] = mapped_column(Float, index=True)
    result: Mapped[list[str] | None] = mapped_column(JSON)  #: signatures, base64
    error: Mapped[str | None] = mapped_column(Text)
    approved_by: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    execution_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=0)


class ApprovalRecord(Base):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("sign_requests.id"), index=True)
    approver: Mapped[str] = mapped_column(String(64))  #: credential fingerprint
    approver_key_b64: Mapped[str] = mapped_column(Text)  #: SPKI, as approvedBy shows it
    credential_type: Mapped[str] = mapped_column(String(32))
    credential: Mapped[str] = mapped_column(Text)
    signature_b64: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(16))
    rejected: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency"
    __table_args__ = (UniqueConstraint("principal", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(String(256))
    key: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[str] = mapped_column(String(64))  #: hash of the request body
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: the id the work gives what it creates, so a retry that takes over finds it
    ticket: Mapped[str | None] = mapped_column(String(64))
    #: until when (unix seconds) the attempt in progress owns the reservation
    lease_until: Mapped[float | None] = mapped_column(Float)


class KeyOwner(Base):
    """Which tenant a key belongs to: only that tenant's callers may use or read it.

    Tenancy is the broker's concept (the HSM knows keys and policies, not customers);
    a key the broker has no owner for is nobody's here."""

    __tablename__ = "key_owners"

    label: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SeenTimestamp(Base):
    """Signed task-listing timestamps already used: each works once per approver."""

    __tablename__ = "seen_timestamps"
    __table_args__ = (UniqueConstraint("approver", "timestamp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approver: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)


#: How long a SQLite writer waits for another before the database reports it locked.
SQLITE_BUSY_SECONDS = 30.0


def make_engine(url: str) -> Engine:
    """SQLite in WAL mode (the embedded default) or PostgreSQL via psycopg 3."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={
            "check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS,
            "factory": sqlite_writes.connection_factory()})
        sqlite_writes.install(engine, SQLITE_BUSY_SECONDS)

        @event.listens_for(engine, "connect")
        def _pragmas(conn: object, _record: object) -> None:
            cur = conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, pool_size=10)
    _ping_when_idle(engine)
    return engine


#: A pooled PostgreSQL connection idle longer than this is pinged before it is used.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """``pool_pre_ping``, but only for a connection that sat idle: the ping is a round
    trip on every checkout, a quarter of a short transaction's (pre-ping, BEGIN, the
    statement, COMMIT), and a connection checked in a moment ago is as good as the
    server that just answered on it. A dead one (the server restarted, a proxy dropped
    it) is replaced before use, as with ``pool_pre_ping``; one that died within the last
    second fails its one statement, and that disconnect empties the whole pool."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _idle_since(_conn: object, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(conn: Any, record: Any, _proxy: object) -> None:
        since = record.info.get("idle_since")
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(conn)
        except engine.dialect.loaded_dbapi.Error as exc:  # the pool connects afresh
            raise DisconnectionError("the pooled connection is gone") from exc


MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock key: replicas starting together migrate one at a time.
MIGRATION_LOCK = 0x5CA0C0DE


def alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic), safely from many replicas."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        command.upgrade(alembic_config(conn), "head")


def make_sessions(engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)
