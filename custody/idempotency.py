"""Idempotency keys on every creating call: a retry returns the first result.

The key is reserved (in the same database as the broker's state) *before* the work is
done, so two racing retries cannot both create; the second is told to retry shortly.
A key reused with a different body is refused rather than silently answered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from .db import IdempotencyRecord
from .errors import BadRequest, Conflict

IN_PROGRESS = 0
MAX_KEY = 128


def run_once(sessions: sessionmaker, principal: str, key: str | None,  # type: ignore[type-arg]
             body: Any, work: Callable[[], tuple[int, dict[str, Any]]],
             ) -> tuple[int, dict[str, Any]]:
    """Do ``work`` once per (principal, key); return (status code, response body)."""
    if key is None:
        return work()
    if not 0 < len(key) <= MAX_KEY or not key.isprintable():
        raise BadRequest(f"Idempotency-Key: 1-{MAX_KEY} printable characters")
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    try:
        with sessions.begin() as s:
            s.add(IdempotencyRecord(principal=principal, key=key, fingerprint=fingerprint,
                                    status_code=IN_PROGRESS, response={}))
    except IntegrityError:
        return _replay(sessions, principal, key, fingerprint)
    try:
        status, response = work()
    except Exception:
        _forget(sessions, principal, key)  # a refused call created nothing: allow a retry
        raise
    with sessions.begin() as s:
        s.execute(update(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key).values(
                status_code=status, response=response))
    return status, response


def _replay(sessions: sessionmaker, principal: str, key: str,  # type: ignore[type-arg]
            fingerprint: str) -> tuple[int, dict[str, Any]]:
    with sessions() as s:
        rec = s.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key))
    if rec is None:
        raise Conflict("idempotency key is being released; retry")
    if rec.fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was used with a different request body")
    if rec.status_code == IN_PROGRESS:
        raise Conflict("a request with this Idempotency-Key is still in progress; retry")
    return rec.status_code, dict(rec.response)


def _forget(sessions: sessionmaker, principal: str, key: str) -> None:  # type: ignore[type-arg]
    with sessions.begin() as s:
        s.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.principal == principal, IdempotencyRecord.key == key,
            IdempotencyRecord.status_code == IN_PROGRESS))
