"""Idempotency keys on every creating call: a retry returns the first result.

The key is reserved (in the same database as the broker's state) *before* the work is
done, so two racing retries cannot both create; the second is told to retry shortly.
A key reused with a different body is refused rather than silently answered.

A reservation also holds a *ticket*: the id the work gives what it creates (the HSM
request, the transfer, the wallet), so doing the work again under the same ticket finds
what the first attempt made instead of making a second one. That is what lets a retry
finish a call whose process died half way: a reservation still in progress when its
lease has run out is taken over by the next retry (one retry wins the takeover), which
runs the work again under the same ticket. Without it the key stayed "in progress" for
ever and the client could never learn the outcome.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from chains.errors import ChainError
from hsm_emulator.errors import HsmError

from .db import IdempotencyRecord
from .errors import BadRequest, Conflict, CustodyError, Unavailable

IN_PROGRESS = 0
MAX_KEY = 128
#: How long a reservation belongs to the attempt that made it. Longer than any call's
#: work takes when its parts answer; a takeover while the first attempt still runs is
#: safe anyway (the ticket makes the work idempotent), only wasted.
LEASE_SECONDS = 15.0
#: Outages: the work may have half happened, so the ticket must be kept for the retry.
TRANSIENT_CODES = frozenset({"hsm.transport_error", "hsm.store_locked", "hsm.audit_failure",
                             "chain.node_unavailable", Unavailable.code})

#: ``work(ticket)``: do the call, giving what it creates the id ``ticket`` (None when the
#: caller sent no key); return (status code, response body).
Work = Callable[[str | None], tuple[int, dict[str, Any]]]


def now() -> float:
    """The clock leases are read on (a module function, so tests can move it)."""
    return time.time()


def run_once(sessions: sessionmaker, principal: str, key: str | None,  # type: ignore[type-arg]
             body: Any, work: Work, *, clock: Callable[[], float] | None = None,
             ) -> tuple[int, dict[str, Any]]:
    """Do ``work`` once per (principal, key); return (status code, response body)."""
    clock = clock or now
    if key is None:
        return work(None)
    if not 0 < len(key) <= MAX_KEY or not key.isprintable():
        raise BadRequest(f"Idempotency-Key: 1-{MAX_KEY} printable characters")
    fingerprint = body_fingerprint(body)
    ticket = uuid.uuid4().hex
    try:
        with sessions.begin() as s:
            s.add(IdempotencyRecord(principal=principal, key=key, fingerprint=fingerprint,
                                    status_code=IN_PROGRESS, response={}, ticket=ticket,
                                    lease_until=clock() + LEASE_SECONDS))
    except IntegrityError:
        ticket, answer = _existing(sessions, principal, key, fingerprint, clock)
        if answer is not None:
            return answer
    try:
        status, response = work(ticket)
    except Exception as exc:
        if _refusal(exc):
            _forget(sessions, principal, key, ticket)  # it created nothing: allow a retry
        else:
            _expire(sessions, principal, key, ticket)  # maybe half done: retry takes over
        raise
    with sessions.begin() as s:
        s.execute(update(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key,
            IdempotencyRecord.ticket == ticket).values(status_code=status, response=response))
    return status, response


def body_fingerprint(body: Any) -> str:
    """What a key binds to: the request body, hashed in a fixed form.

    Not :func:`hsm_emulator.canonical.canonical_json` on purpose: fingerprints are stored
    with their keys, so a retry that straddles an upgrade must hash as its first attempt
    did (and ``default=str`` hashes bodies with non-JSON values the canonical form refuses).
    """
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _existing(sessions: sessionmaker, principal: str, key: str,  # type: ignore[type-arg]
              fingerprint: str, clock: Callable[[], float],
              ) -> tuple[str, tuple[int, dict[str, Any]] | None]:
    """The first attempt's answer, or its ticket if this retry takes its place."""
    with sessions() as s:
        rec = s.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key))
    if rec is None:
        raise Conflict("idempotency key is being released; retry")
    if rec.fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was used with a different request body")
    if rec.status_code != IN_PROGRESS:
        return rec.ticket or "", (rec.status_code, dict(rec.response))
    t = clock()
    if rec.ticket is None or rec.lease_until is None or rec.lease_until > t:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry")
    with sessions.begin() as s:  # one retry wins: the lease it read must still stand
        won = s.execute(update(IdempotencyRecord).where(
            IdempotencyRecord.id == rec.id, IdempotencyRecord.status_code == IN_PROGRESS,
            IdempotencyRecord.lease_until == rec.lease_until).values(
                lease_until=t + LEASE_SECONDS)).rowcount
    if not won:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry")
    return rec.ticket, None


def _refusal(exc: Exception) -> bool:
    """A definite no (the caller's mistake, a policy): nothing was created."""
    if isinstance(exc, CustodyError | HsmError | ChainError):
        return exc.code not in TRANSIENT_CODES
    return False


def _forget(sessions: sessionmaker, principal: str, key: str,  # type: ignore[type-arg]
            ticket: str) -> None:
    with sessions.begin() as s:
        s.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key,
            IdempotencyRecord.ticket == ticket, IdempotencyRecord.status_code == IN_PROGRESS))


def _expire(sessions: sessionmaker, principal: str, key: str,  # type: ignore[type-arg]
            ticket: str) -> None:
    """End the lease now, so the client's retry takes over at once with the ticket."""
    try:
        with sessions.begin() as s:
            s.execute(update(IdempotencyRecord).where(
                IdempotencyRecord.principal == principal, IdempotencyRecord.key == key,
                IdempotencyRecord.ticket == ticket,
                IdempotencyRecord.status_code == IN_PROGRESS).values(lease_until=0.0))
    except SQLAlchemyError:  # the database is the outage: the lease runs out by itself
        pass
