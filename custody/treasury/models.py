"""The treasury's tables: wallets, deposit addresses, transfers, nonce slots, webhooks.

Same metadata as the broker's tables (:mod:`custody.db`), so one Alembic history and one
database hold both. A transfer row is the durable record of everything done to move
funds: each external effect (HSM request, nonce, signature, broadcast) is committed here
before the next one, which is what makes a restart resume instead of repeat.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import Mapped, mapped_column

from custody.db import Base, utcnow


class State(StrEnum):
    """A transfer's life: requested -> pending approval -> (on hold) -> signed ->
    broadcast -> confirmed; or rejected, expired, cancelled, failed."""

    REQUESTED = "requested"
    PENDING_APPROVAL = "pending_approval"
    ON_HOLD = "on_hold"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = frozenset({State.CONFIRMED, State.REJECTED, State.EXPIRED, State.CANCELLED,
                      State.FAILED})
#: A transfer's ``details`` key listing its earlier signed transactions that expired
#: unlanded (Solana), one ``{txid, signRequestId, reason, at}`` each, oldest first.
RESIGNS = "resigns"


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (UniqueConstraint("tenant", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128))
    chain: Mapped[str] = mapped_column(String(16))
    network: Mapped[str] = mapped_column(String(32))
    key_label: Mapped[str] = mapped_column(String(128), unique=True)
    address: Mapped[str] = mapped_column(String(128))  #: the sending account / first address
    assets: Mapped[list[dict[str, object]]] = mapped_column(JSON)  #: symbol, asset, decimals
    policy_config: Mapped[dict[str, object]] = mapped_column(JSON)  #: the tier template input
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DepositAddress(Base):
    __tablename__ = "deposit_addresses"
    __table_args__ = (UniqueConstraint("wallet_id", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(64))  #: relative to the wallet's HSM key
    address: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TransferRecord(Base):
    __tablename__ = "transfers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    initiator: Mapped[str] = mapped_column(String(256))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"), index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    asset: Mapped[str] = mapped_column(String(128))  #: the chain's asset id (ERC20:0x..)
    amount: Mapped[str] = mapped_column(String(80))  #: base units, decimal digits
    amount_text: Mapped[str] = mapped_column(String(80))  #: as the desk wrote it
    destination: Mapped[str] = mapped_column(String(128))
    memo: Mapped[str] = mapped_column(String(256), default="")
    state: Mapped[str] = mapped_column(String(24), index=True, default=State.REQUESTED)
    tier: Mapped[str | None] = mapped_column(String(64))
    sign_request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    payload_type: Mapped[str] = mapped_column(String(128), default="")
    payload_b64: Mapped[str] = mapped_column(Text, default="")  #: what the HSM signs (last)
    fee_cap: Mapped[str] = mapped_column(String(80), default="0")
    details: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    nonce: Mapped[int | None] = mapped_column(BigInteger)  #: Ethereum, once allocated
    inputs: Mapped[list[str] | None] = mapped_column(JSON)  #: Bitcoin outpoints it spends
    raw_b64: Mapped[str | None] = mapped_column(Text)  #: the signed transaction
    txid: Mapped[str | None] = mapped_column(String(128), index=True)
    confirmations: Mapped[int] = mapped_column(Integer, default=0)
    block: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    history: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)
    next_check: Mapped[float | None] = mapped_column(Float, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=0)


class NonceSlot(Base):
    """One Ethereum nonce of one account: reserved by a transfer, then broadcast; or
    freed (never broadcast) and taken by the next transfer, so no nonce is skipped."""

    __tablename__ = "nonce_slots"
    __table_args__ = (UniqueConstraint("chain_id", "address", "nonce"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    address: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  #: reserved | broadcast | free
    transfer_id: Mapped[str | None] = mapped_column(String(64))


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))  #: HMAC key, shown once at creation
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """The outbox: written in the same transaction as the state change it reports."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    transfer_id: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[dict[str, object]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


#: The transfers table for Core statements: a transition's compare-and-set is an UPDATE
#: by primary key and version, which needs none of the ORM's bulk-update machinery (that
#: was a third of what a state move cost).
TRANSFERS = cast(Table, TransferRecord.__table__)


def changed(result: Result[Any]) -> int:
    """Rows an UPDATE touched (a compare-and-set won iff this is 1)."""
    return int(cast(CursorResult[Any], result).rowcount)


def resigns(t: TransferRecord) -> list[dict[str, object]]:
    """The earlier attempts of ``t`` whose signed transaction expired unlanded."""
    earlier = t.details.get(RESIGNS) if isinstance(t.details, dict) else None
    if not isinstance(earlier, list):
        return []
    return [dict(a) for a in earlier if isinstance(a, dict)]


def attempt(t: TransferRecord) -> int:
    """Which sign request of ``t`` is current: 1, then one more per re-signing."""
    return 1 + len(resigns(t))
