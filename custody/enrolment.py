"""Approver enrolment: a device asks to become an approval credential; an admin decides.

A browser (or any client) generates its key itself and sends only the public part - a
bare P-256 key with a proof of possession, or a WebAuthn passkey registered through
:mod:`approvals_app.routes.enrolment`. The request is ``PENDING`` until a ``key_admin``
or ``security_officer`` confirms it, so a stranger cannot make itself an approver; only
a ``CONFIRMED`` enrolment may list tasks through the approver page.

Enrolment never touches a key's policy. Making a confirmed credential an approver of a
key is a policy change, and goes through that key's ``ruleModify`` like any other: the
broker only builds the new policy (:func:`policy_with_member`) and submits the modify
request, which the key's admins approve and the HSM checks.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, String, Text, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from hsm_emulator.credentials import Credential, parse_credential, verify
from hsm_emulator.errors import HsmError

from .db import Base, utcnow
from .errors import BadRequest, Conflict, Forbidden, NotFound

#: What a device signs to prove it holds the key it enrols (then name, key, HSM pin).
ENROL_PREFIX = b"ska-enrol-v1:"
#: How long a passkey registration challenge stays valid.
REGISTRATION_SECONDS = 300.0
NAME_RE = re.compile(r"\A[A-Za-z0-9 ._@-]{1,64}\Z")
HEX64_RE = re.compile(r"\A[0-9a-f]{64}\Z")
RULES = ("ruleUse", "ruleBlock", "ruleUnblock", "ruleModify")


class EnrolmentStatus(StrEnum):
    REGISTERING = "REGISTERING"  #: a passkey registration challenge was issued
    PENDING = "PENDING"  #: waiting for an administrator
    CONFIRMED = "CONFIRMED"
    REFUSED = "REFUSED"


class Enrolment(Base):
    __tablename__ = "approver_enrolments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    credential_type: Mapped[str] = mapped_column(String(16))  #: public_key | webauthn
    #: the policy entry's value: base64 SPKI, or the passkey's binding document
    credential: Mapped[str | None] = mapped_column(Text)
    fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True)
    credential_id: Mapped[str | None] = mapped_column(String(1400))  #: passkey id, base64url
    challenge: Mapped[str | None] = mapped_column(String(128))  #: passkey registration
    hsm_fingerprint: Mapped[str] = mapped_column(String(64))  #: the HSM key it pinned
    status: Mapped[str] = mapped_column(String(16), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def enrol_message(name: str, public_key_b64: str, hsm_fingerprint: str) -> bytes:
    """The bytes a device signs with its new key to enrol it."""
    return ENROL_PREFIX + f"{name}\n{public_key_b64}\n{hsm_fingerprint}".encode()


def check_fields(name: str, hsm_fingerprint: str) -> None:
    if not NAME_RE.match(name):
        raise BadRequest("name: 1-64 letters, digits, spaces or ._@-")
    if not HEX64_RE.match(hsm_fingerprint):
        raise BadRequest("hsmFingerprint: the SHA-256 hex of the HSM identity key")


class Enrolments:
    """Enrolment requests in SQL; decisions by administrators (roles checked by routes)."""

    def __init__(self, sessions: sessionmaker,  # type: ignore[type-arg]
                 clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.clock = clock

    def request_key(self, name: str, public_key_b64: str, hsm_fingerprint: str,
                    proof: bytes) -> Enrolment:
        """A bare P-256 key (WebCrypto), with a signature proving the device holds it."""
        check_fields(name, hsm_fingerprint)
        cred = _p256(public_key_b64)
        if not verify(cred, enrol_message(name, public_key_b64, hsm_fingerprint), proof):
            raise BadRequest("proof: not a signature of the enrolment by this key")
        return self._insert(Enrolment(
            id=str(uuid.uuid4()), name=name, credential_type="public_key",
            credential=cred.public_key_b64, fingerprint=cred.fingerprint,
            hsm_fingerprint=hsm_fingerprint, status=EnrolmentStatus.PENDING))

    def begin_passkey(self, name: str, hsm_fingerprint: str, challenge: bytes) -> Enrolment:
        """Record a passkey registration challenge; :meth:`finish_passkey` completes it."""
        check_fields(name, hsm_fingerprint)
        return self._insert(Enrolment(
            id=str(uuid.uuid4()), name=name, credential_type="webauthn",
            challenge=base64.b64encode(challenge).decode(), hsm_fingerprint=hsm_fingerprint,
            status=EnrolmentStatus.REGISTERING))

    def registration_challenge(self, enrolment_id: str) -> bytes:
        row = self.get(enrolment_id)
        if row.status != EnrolmentStatus.REGISTERING or row.challenge is None:
            raise Conflict("this enrolment is not waiting for a passkey registration")
        if self.clock() - row.created_at.replace(tzinfo=UTC).timestamp() > \
                REGISTRATION_SECONDS:
            raise Conflict("the registration challenge expired; start again")
        return base64.b64decode(row.challenge)

    def finish_passkey(self, enrolment_id: str, credential_value: str,
                       credential_id: str) -> Enrolment:
        """Store a passkey whose registration the route verified; it is then PENDING."""
        cred = parse_credential("webauthn", credential_value)
        with self.sessions.begin() as s:
            done = s.execute(update(Enrolment).where(
                Enrolment.id == enrolment_id,
                Enrolment.status == EnrolmentStatus.REGISTERING).values(
                    credential=credential_value, fingerprint=cred.fingerprint,
                    credential_id=credential_id, challenge=None,
                    status=EnrolmentStatus.PENDING))
        if not done.rowcount:
            raise Conflict("this enrolment is not waiting for a passkey registration")
        return self.get(enrolment_id)

    def drop_stale_registrations(self) -> int:
        """Forget passkey registrations whose challenge expired (nobody finished them)."""
        cutoff = datetime.fromtimestamp(self.clock() - REGISTRATION_SECONDS, UTC)
        with self.sessions.begin() as s:
            done = s.execute(delete(Enrolment).where(
                Enrolment.status == EnrolmentStatus.REGISTERING,
                Enrolment.created_at < cutoff))
        return int(done.rowcount or 0)

    def _insert(self, row: Enrolment) -> Enrolment:
        try:
            with self.sessions.begin() as s:
                s.add(row)
        except IntegrityError:
            raise Conflict("this key is already enrolled") from None
        return row

    def get(self, enrolment_id: str) -> Enrolment:
        with self.sessions() as s:
            row: Enrolment | None = s.get(Enrolment, enrolment_id)
        if row is None:
            raise NotFound(f"no enrolment {enrolment_id!r}")
        return row

    def find(self, status: EnrolmentStatus | None = None) -> list[Enrolment]:
        with self.sessions() as s:
            query = select(Enrolment).order_by(Enrolment.created_at)
            if status is not None:
                query = query.where(Enrolment.status == status)
            return list(s.scalars(query.limit(500)))

    def decide(self, enrolment_id: str, who: str, confirm: bool) -> Enrolment:
        """Confirm or refuse a PENDING enrolment, once (first decision wins)."""
        status = EnrolmentStatus.CONFIRMED if confirm else EnrolmentStatus.REFUSED
        with self.sessions.begin() as s:
            done = s.execute(update(Enrolment).where(
                Enrolment.id == enrolment_id, Enrolment.status == EnrolmentStatus.PENDING
            ).values(status=status, decided_by=who, decided_at=utcnow()))
        if not done.rowcount:
            row = self.get(enrolment_id)
            raise Conflict(f"enrolment {enrolment_id} is {row.status}, not PENDING")
        return self.get(enrolment_id)

    def confirmed(self, cred: Credential) -> Enrolment:
        """The confirmed enrolment of this credential, or :class:`Forbidden`."""
        with self.sessions() as s:
            row: Enrolment | None = s.scalar(select(Enrolment).where(
                Enrolment.fingerprint == cred.fingerprint,
                Enrolment.status == EnrolmentStatus.CONFIRMED))
        if row is None:
            raise Forbidden("this credential has no confirmed enrolment")
        return row


def entry(row: Enrolment) -> dict[str, str]:
    """The policy ``approvals[]`` entry for a confirmed enrolment."""
    if row.status != EnrolmentStatus.CONFIRMED or row.credential is None:
        raise Conflict(f"enrolment {row.id} is {row.status}, not CONFIRMED")
    return {"type": row.credential_type, "value": row.credential, "name": row.name}


def policy_with_member(policy: dict[str, Any], rule: str, group: str,
                       member: dict[str, str]) -> dict[str, Any]:
    """A copy of ``policy`` with ``member`` added to every group named ``group`` in
    ``rule`` (the same group name across tokens means the same people)."""
    if rule not in RULES:
        raise BadRequest(f"rule: one of {', '.join(RULES)}")
    new = copy.deepcopy({k: v for k, v in policy.items() if k != "keyStatus"})
    found = 0
    for token in (new.get(rule) or {}).get("tokens", []):
        for g in token.get("groups", []):
            if g.get("name") == group:
                if any(a.get("value") == member["value"] for a in g.get("approvals", [])):
                    raise Conflict(f"already a member of {group!r}")
                g.setdefault("approvals", []).append(dict(member))
                found += 1
    if not found:
        raise BadRequest(f"no group {group!r} in {rule}")
    return new


def hsm_fingerprint(identity_der: bytes) -> str:
    """How the page and the administrator name the HSM identity key: SHA-256 hex."""
    return hashlib.sha256(identity_der).hexdigest()


def _p256(public_key_b64: str) -> Credential:
    try:
        cred = parse_credential("public_key", public_key_b64)
    except HsmError as exc:
        raise BadRequest(f"publicKey: {exc.reason}") from None
    if cred.kind.value != "P256" or cred.public_key_b64 != public_key_b64:
        raise BadRequest("publicKey: a P-256 SPKI in canonical base64 DER")
    return cred
