"""Webhooks to the business application on every transfer state change.

An outbox: the delivery row is written in the same database transaction as the state
change it reports, so no change is lost or reported without having happened. A
dispatcher posts each to its endpoint, signed with the endpoint's secret

    X-Custody-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

(the receiver recomputes it and rejects stale ``t``), and retries failures with
exponential backoff (1 s, 2 s, 4 s, ... capped at 10 min) up to ``MAX_ATTEMPTS``; every
attempt's outcome is recorded on the row. ``X-Custody-Event-Id`` lets receivers drop
duplicates (delivery is at least once).

The body is the one canonical JSON (:func:`hsm_emulator.canonical.canonical_json`: sorted
keys, no spaces, UTF-8 as RFC 8259 section 8.1 asks between systems), so a retry posts
the same bytes as the first attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from custody.errors import BadRequest, NotFound
from hsm_emulator.canonical import canonical_json

from .models import WebhookDelivery, WebhookEndpoint, changed

MAX_ATTEMPTS = 12
MAX_BACKOFF = 600.0
TIMEOUT = 5.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (documented and tested here so integrators can copy it)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def register(sessions: sessionmaker[Session], tenant: str, url: str,
             ) -> tuple[WebhookEndpoint, str]:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or (
            len(url) > 2048):
        raise BadRequest("url must be an http(s) URL of at most 2048 characters")
    secret = secrets.token_urlsafe(32)
    endpoint = WebhookEndpoint(id=uuid.uuid4().hex, tenant=tenant, url=url, secret=secret)
    with sessions.begin() as s:
        s.add(endpoint)
    return endpoint, secret


_ENDPOINTS = cast(Table, WebhookEndpoint.__table__)
_ACTIVE = select(_ENDPOINTS.c.id).where(_ENDPOINTS.c.tenant == bindparam("tenant"),
                                        _ENDPOINTS.c.active.is_(True))


def enqueue(s: Session, tenant: str, transfer_id: str, body: dict[str, Any],
            now: float, known: dict[str, list[str]] | None = None) -> None:
    """Inside the caller's transaction: one delivery per active endpoint of the tenant
    (asked in Core: it runs with every state move, and most tenants have none).
    ``known``: the endpoints already asked for in this transaction, by tenant."""
    if known is not None and tenant in known:
        ids = known[tenant]
    else:
        ids = list(s.connection().execute(_ACTIVE, {"tenant": tenant}).scalars())
        if known is not None:
            known[tenant] = ids
    for endpoint_id in ids:
        s.add(WebhookDelivery(endpoint_id=endpoint_id, event_id=uuid.uuid4().hex,
                              transfer_id=transfer_id, body=body, next_attempt_at=now))


def endpoints(sessions: sessionmaker[Session], tenant: str) -> list[WebhookEndpoint]:
    """The tenant's endpoints, oldest first (their secrets are shown once, at creation)."""
    with sessions() as s:
        return list(s.scalars(select(WebhookEndpoint).where(
            WebhookEndpoint.tenant == tenant).order_by(WebhookEndpoint.created_at)))


def deliveries(sessions: sessionmaker[Session], tenant: str,
               endpoint_id: str, limit: int = 100) -> list[WebhookDelivery]:
    with sessions() as s:
        endpoint = s.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or endpoint.tenant != tenant:
            raise NotFound(f"no webhook {endpoint_id!r}")
        return list(s.scalars(select(WebhookDelivery).where(
            WebhookDelivery.endpoint_id == endpoint_id).order_by(
                WebhookDelivery.id.desc()).limit(max(1, min(limit, 500)))))


class Dispatcher:
    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], float] = time.time,
                 client: httpx.Client | None = None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.client = client or httpx.Client(timeout=TIMEOUT, follow_redirects=False)

    def due(self, limit: int = 50) -> list[int]:
        with self.sessions() as s:
            return list(s.scalars(select(WebhookDelivery.id).where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= self.clock()).order_by(
                    WebhookDelivery.next_attempt_at).limit(limit)))

    def deliver_due(self) -> int:
        sent = 0
        for delivery_id in self.due():
            sent += self.deliver(delivery_id)
        return sent

    def deliver(self, delivery_id: int) -> int:
        with self.sessions() as s:
            d = s.get(WebhookDelivery, delivery_id)
            if d is None or d.status != "pending":
                return 0
            endpoint = s.get(WebhookEndpoint, d.endpoint_id)
            assert endpoint is not None
            attempts, url, secret = d.attempts, endpoint.url, endpoint.secret
            body = canonical_json(d.body)
            event_id = d.event_id
        # claim the attempt first, so two dispatchers do not post the same attempt
        with self.sessions.begin() as s:
            claimed = s.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempts,
                WebhookDelivery.status == "pending").values(
                    attempts=attempts + 1,
                    next_attempt_at=self.clock() + min(MAX_BACKOFF, 2.0 ** attempts)))
        if changed(claimed) != 1:
            return 0
        code, error = None, None
        try:
            response = self.client.post(url, content=body, headers={
                "Content-Type": "application/json", "X-Custody-Event-Id": event_id,
                "X-Custody-Signature": sign(secret, int(self.clock()), body)})
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        values: dict[str, Any] = {"last_status_code": code, "last_error": error}
        if error is None:
            values.update(status="delivered", delivered_at=datetime.now(UTC))
        elif attempts + 1 >= MAX_ATTEMPTS:
            values.update(status="failed")
        with self.sessions.begin() as s:
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(
                **values))
        return 1 if error is None else 0
