"""Approver sessions (seed 003): an approver proves a fresh signed timestamp to list its
tasks, then answers a task by signing its challenge (approve) or the reject prefix and
the challenge (reject). Each answer is recorded once, then the request is advanced - or,
when the broker's copy of the policy says an approval is the last one needed, the HSM
checks it and executes in one call (``hsm.approve``), and both are recorded."""

from __future__ import annotations

import base64

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from hsm_emulator.client import HsmClient
from hsm_emulator.credentials import Credential, parse_credential, verify, verify_timestamp
from hsm_emulator.errors import ApprovalRefused, HsmError, RequestClosed
from hsm_emulator.flow import Approval

from ..db import FINAL, ApprovalRecord, SeenTimestamp, SignRequest, Status
from ..errors import Conflict, Forbidden
from .model import Task
from .release import Release, approval_of
from .rules import Rules
from .store import RequestStore

#: What an approver signs to reject a task: this prefix and the challenge bytes.
REJECT_PREFIX = b"ska-reject-v1:"
MAX_PAGE = 100


class ApproverSessions:
    def __init__(self, hsm: HsmClient, store: RequestStore, rules: Rules, release: Release,
                 *, max_skew: float) -> None:
        self.hsm = hsm
        self.store = store
        self.rules = rules
        self.release = release
        self.max_skew = max_skew

    def authenticate_approver(self, credential_value: str, timestamp: str, signature_b64: str,
                              digest: str = "SHA-256") -> Credential:
        """Seed 003's task-listing proof: a fresh timestamp signed by the approval key,
        within the allowed skew, each usable once."""
        cred = _credential(credential_value)
        ts = verify_timestamp(cred, timestamp, signature_b64, self.store.clock(), self.max_skew,
                              digest)
        try:
            with self.store.sessions.begin() as s:
                s.execute(delete(SeenTimestamp).where(
                    SeenTimestamp.at < self.store.clock() - 2 * self.max_skew))
                s.add(SeenTimestamp(approver=cred.fingerprint, timestamp=timestamp, at=ts))
        except IntegrityError:
            raise ApprovalRefused("this signed timestamp was already used") from None
        return cred

    def tasks(self, cred: Credential, page: int = 0, size: int = 20,
              newest_first: bool = False) -> list[Task]:
        """Pending requests this approver may approve and has not yet answered."""
        size = max(1, min(size, MAX_PAGE))
        with self.store.sessions() as s:
            done = set(s.scalars(select(ApprovalRecord.request_id).where(
                ApprovalRecord.approver == cred.fingerprint)))
            order = SignRequest.created_at.desc() if newest_first else SignRequest.created_at
            rows = s.scalars(select(SignRequest).where(
                SignRequest.status.in_([Status.PENDING, Status.APPROVED])).order_by(order))
            mine = [r for r in rows if r.id not in done
                    and cred.fingerprint in self.rules.rule_members(r.key_label, r.action)]
        return [Task(r, ()) for r in mine[page * size:(page + 1) * size]]

    def approve(self, request_id: str, credential_value: str, signature: bytes,
                digest: str = "SHA-256", challenge_b64: str | None = None) -> SignRequest:
        """Record one approval (verified by the HSM first), then try to release."""
        row, records = self.store.with_approvals(request_id)
        if challenge_b64 is not None and challenge_b64 != row.challenge_b64:
            raise ApprovalRefused("approvalToBeSigned does not match this task's challenge")
        if row.status in FINAL:
            raise Conflict(f"request {request_id} is already {row.status}")
        kind = _credential_kind(credential_value)
        approval = Approval(kind, credential_value, signature, digest)
        released = self._release_with(row, records, approval)
        if released is not None:
            return released
        try:
            spki = self.hsm.check_approval(request_id, approval)
        except RequestClosed:  # e.g. its key's policy changed: the HSM closed it - mirror
            self.release.advance(request_id)
            raise
        self.store.add_approval(_record(request_id, approval, spki))
        return self.release.advance(request_id)

    def _release_with(self, row: SignRequest, records: list[ApprovalRecord],
                      approval: Approval) -> SignRequest | None:
        """If by the broker's copy of the policy this approval releases the request, the
        HSM checks it and executes in one call (:meth:`Release.with_approval`). None:
        not predicted (or not answered there), so the approval takes the two-call path -
        which also answers an approver who already answered (``Conflict``)."""
        try:
            cred = parse_credential(approval.credential_type, approval.credential)
        except HsmError:
            return None  # the HSM's check refuses it, audited
        if any(r.approver == cred.fingerprint for r in records):
            return None
        approved = frozenset(r.approver for r in records if not r.rejected)
        rejected = frozenset(r.approver for r in records if r.rejected)
        if not self.rules.would_release(row, approved | {cred.fingerprint}, rejected,
                                        self.store.clock()):
            return None
        return self.release.with_approval(
            row, approval, [approval_of(r) for r in records if not r.rejected],
            lambda spki: _record(row.id, approval, spki))

    def reject(self, request_id: str, credential_value: str, signature: bytes,
               digest: str = "SHA-256") -> SignRequest:
        """An approver's signed refusal; ends the request once its policy cannot be met."""
        row = self.store.get(request_id)
        if row.status in FINAL:
            raise Conflict(f"request {request_id} is already {row.status}")
        cred = _credential(credential_value)
        if cred.fingerprint not in self.rules.rule_members(row.key_label, row.action):
            raise ApprovalRefused("not an approver of this request")
        message = REJECT_PREFIX + base64.b64decode(row.challenge_b64)
        if not verify(cred, message, signature, digest):
            raise ApprovalRefused("rejection signature does not verify")
        self.store.add_approval(ApprovalRecord(
            request_id=request_id, approver=cred.fingerprint,
            approver_key_b64=cred.public_key_b64, credential_type=_credential_kind(
                credential_value), credential=credential_value,
            signature_b64=base64.b64encode(signature).decode(), digest=digest, rejected=True))
        return self.release.advance(request_id)


def _record(request_id: str, approval: Approval, spki: str) -> ApprovalRecord:
    """The broker's record of an approval the HSM verified (``spki``: its answer)."""
    cred = parse_credential(approval.credential_type, approval.credential)
    return ApprovalRecord(
        request_id=request_id, approver=cred.fingerprint, approver_key_b64=spki,
        credential_type=approval.credential_type, credential=approval.credential,
        signature_b64=base64.b64encode(approval.signature).decode(), digest=approval.digest)


def _credential_kind(value: str) -> str:
    """TSB sends ``approverCertificate``: a certificate, a passkey entry or a bare key."""
    for kind in ("certificate", "webauthn"):
        try:
            parse_credential(kind, value)
        except HsmError:
            continue
        return kind
    return "public_key"


def _credential(value: str) -> Credential:
    try:
        return parse_credential(_credential_kind(value), value)
    except HsmError as exc:
        raise Forbidden(f"approver credential: {exc.reason}") from None
