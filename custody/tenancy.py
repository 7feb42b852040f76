"""Which tenant owns which key: only that tenant's callers may use or read it.

Tenancy is the broker's concept - the HSM knows keys and policies, not customers - so it
lives in the broker's database (``key_owners``). A key is claimed for its tenant
*before* the HSM creates it, so one label can never be created for two tenants; a key
the broker has no owner for is nobody's here (a 404, like a label nobody has).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hsm_emulator.client import HsmClient
from hsm_emulator.errors import HsmError, TransportError
from hsm_emulator.results import KeyInfo

from .db import KeyOwner
from .errors import Conflict, NotFound


def claim(sessions: sessionmaker[Session], label: str, tenant: str) -> bool:
    """Record ``tenant`` as the owner of ``label``; True if this call made the claim.

    A claim the same tenant already holds stands (a create cut short by a crash may be
    retried; whether the key exists is then the HSM's answer); another tenant's is a 409.
    """
    try:
        with sessions.begin() as s:
            s.add(KeyOwner(label=label, tenant=tenant))
        return True
    except IntegrityError:
        with sessions() as s:
            owner = s.get(KeyOwner, label)
        if owner is None or owner.tenant != tenant:
            raise Conflict(f"a key labelled {label!r} exists") from None
        return False


def owner_of(sessions: sessionmaker[Session], label: str) -> str | None:
    with sessions() as s:
        row = s.get(KeyOwner, label)
    return None if row is None else row.tenant


def create_key(sessions: sessionmaker[Session], hsm: HsmClient, tenant: str, label: str,
               algorithm: Any, **kwargs: Any) -> KeyInfo:
    """Claim ``label`` for ``tenant``, then have the HSM create the key.

    If the HSM refuses, a claim this call made is dropped, so the label is free again. On
    a transport error the HSM may have created the key, so the claim stays with its
    tenant, who can retry."""
    fresh = claim(sessions, label, tenant)
    try:
        return hsm.create_key(label, algorithm, **kwargs)
    except TransportError:
        raise
    except HsmError:
        if fresh:
            with sessions.begin() as s:
                s.execute(delete(KeyOwner).where(KeyOwner.label == label,
                                                 KeyOwner.tenant == tenant))
        raise


def check(sessions: sessionmaker[Session], label: str, tenant: str) -> None:
    """Another tenant's key (or one this broker never registered) does not exist for
    this caller: the same 404 as a label nobody has."""
    if owner_of(sessions, label) != tenant:
        raise NotFound(f"no key {label!r}")
