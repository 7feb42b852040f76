"""The broker: keeps request state, collects approvals, releases when the rule is met.

It plays the role of Securosys' Transaction Security Broker (seeds 002, 003) and is
"uncritical for security": it holds no keys and everything it hands the HSM is verified
there again. Its job is liveness - release as soon as the rule can be met (on the last
approval, or when a hold ends), and never lose or repeat a release:

* the HSM executes a request at most once; a second ``execute`` is refused;
* every state change here is committed before the next external effect;
* a broker that crashed after the HSM signed fetches the result again
  (``request_result``) - so after any crash, :meth:`Broker.advance` converges.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from chains.errors import ChainError
from hsm_emulator.challenge import Challenge
from hsm_emulator.client import HsmClient
from hsm_emulator.credentials import Credential, parse_credential, verify, verify_timestamp
from hsm_emulator.errors import (
    ApprovalRefused,
    HsmError,
    PolicyNotMet,
    RequestClosed,
    RequestExists,
    TransportError,
)
from hsm_emulator.evaluate import Evaluation
from hsm_emulator.flow import Approval
from hsm_emulator.initiation import payload_digest
from hsm_emulator.model import Action
from hsm_emulator.policy import Policy, Rule, parse_policy
from hsm_emulator.results import Execution, KeyInfo

from . import tenancy
from .db import FINAL, ApprovalRecord, SeenTimestamp, SignRequest, Status
from .errors import BadRequest, Conflict, CustodyError, Forbidden, NotFound

#: What an approver signs to reject a task: this prefix and the challenge bytes.
REJECT_PREFIX = b"ska-reject-v1:"
MAX_PAGE = 100
#: How soon a release that could not be finalized (node unreachable) is tried again.
RETRY_SECONDS = 5.0
log = logging.getLogger("custody.broker")
#: A Core insert on the table: the auto-signing hot path skips the ORM's bulk machinery.
_INSERT_ROW = insert(cast(Table, SignRequest.__table__))


@dataclass(frozen=True)
class Principal:
    """An authenticated caller of the broker (from its JWT)."""

    subject: str
    tenant: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Task:
    request: SignRequest
    approvers_done: tuple[str, ...]


@dataclass(frozen=True)
class Call:
    """What a caller asked to have signed (or done): the fields a request row repeats."""

    principal: Principal
    label: str
    action: Action
    payload: bytes
    payload_type: str
    algorithm: str | None
    meta: dict[str, Any] | None


class Broker:
    def __init__(self, hsm: HsmClient, sessions: sessionmaker,  # type: ignore[type-arg]
                 *, clock: Callable[[], float] = time.time, max_skew: float = 300.0,
                 on_change: Callable[[SignRequest], None] | None = None,
                 finalize: Callable[[SignRequest], bytes | None] | None = None) -> None:
        self.hsm = hsm
        #: called just before the HSM executes an approved request; may return a rebuilt
        #: payload (fresh nonce, fees, blockhash) that the HSM checks against the approved
        #: intent and fee cap. ``None`` signs the payload as requested.
        self.finalize = finalize
        self.sessions = sessions
        self.clock = clock
        self.max_skew = max_skew
        self.on_change = on_change or (lambda _r: None)
        self._policies: dict[tuple[str, str], Policy] = {}
        self._owners: dict[str, str] = {}
        #: keys whose last request the auto tier signed at once: a hint for batching
        #: (custody/autosign.py) - the HSM decides every time, a wrong hint costs a retry
        self._signs_at_once: set[str] = set()
        self._wake = threading.Condition()

    def close(self) -> None:
        """Release the database connections."""
        bind = self.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()

    # -- key tenancy (custody/tenancy.py) -----------------------------------------------

    def create_key(self, tenant: str, label: str, algorithm: Any, **kwargs: Any) -> KeyInfo:
        """A new HSM key that belongs to ``tenant`` alone."""
        info = tenancy.create_key(self.sessions, self.hsm, tenant, label, algorithm, **kwargs)
        self._owners[label] = tenant
        return info

    def claim_key(self, label: str, tenant: str) -> None:
        """Give an existing HSM key to ``tenant`` (keys made outside the API, tests)."""
        tenancy.claim(self.sessions, label, tenant)

    def check_key(self, label: str, tenant: str) -> None:
        """404 unless ``label`` is ``tenant``'s key; owners never change, so a yes is
        cached (this is on the auto-sign hot path)."""
        if self._owners.get(label) == tenant:
            return
        tenancy.check(self.sessions, label, tenant)
        self._owners[label] = tenant

    # -- sign requests ------------------------------------------------------------------

    def submit(self, principal: Principal, label: str, action: Action, payload: bytes,
               payload_type: str, algorithm: str | None, meta: dict[str, Any] | None,
               new_policy: dict[str, Any] | None = None, *, fee_cap: int | None = None,
               auto: bool = True, request_id: str | None = None,
               initiation: Approval | None = None) -> SignRequest:
        """Record a request in the HSM, then here; try to release it at once. ``fee_cap``:
        the most a rebuilt transaction may pay (approvals bind to intent and cap).

        ``request_id`` (an idempotency ticket, :mod:`custody.idempotency`, or the id an
        initiation signs): the id the request gets in the HSM. A retry under it after a
        crash adopts what the first call did - recorded here or only in the HSM - instead
        of making a second one.

        ``initiation``: the desk's signature that proves who asked, for keys whose policy
        names ``initiators`` (:mod:`hsm_emulator.initiation`); needs ``request_id``. The
        HSM verifies it; here it is only passed on."""
        self.check_key(label, principal.tenant)
        call = Call(principal, label, action, payload, payload_type, algorithm, meta)
        if initiation is not None and request_id is None:
            raise BadRequest("an initiated request needs the requestId its initiation signs")
        if request_id is not None:
            known = self._find(request_id, principal.tenant)
            if known is not None:
                if initiation is not None:
                    _same_request(known, call, new_policy)
                return known if known.status in FINAL else self.advance(known.id)
        ids: dict[str, Any] = {} if request_id is None else {"request_id": request_id}
        if initiation is not None:
            ids["initiation"] = initiation
        try:
            if action is Action.USE and auto:
                executed = self._auto_sign(call, ids)
                if executed is not None:
                    return executed
            challenge = self.hsm.begin(label, action, payload, payload_type, algorithm,
                                       fee_cap=fee_cap, new_policy=new_policy,
                                       initiator=principal.subject, **ids)
        except RequestExists:
            assert request_id is not None
            return self._adopt(call, request_id)
        return self._record_pending(call, challenge)

    def _record_pending(self, call: Call, challenge: Challenge) -> SignRequest:
        body = challenge.body
        row = SignRequest(
            id=challenge.request_id, tenant=call.principal.tenant,
            initiator=call.principal.subject, key_label=call.label, action=call.action.value,
            payload_type=call.payload_type, payload_b64=base64.b64encode(call.payload).decode(),
            signature_algorithm=call.algorithm, meta_data=call.meta,
            challenge_b64=challenge.approval_to_be_signed, intent=body["intent"],
            status=Status.PENDING, hsm_time=body["hsmTime"],
        )
        if not self._insert(row):
            return self.get(row.id)  # a racing retry recorded it first
        self.on_change(row)
        return self.advance(row.id)

    def _auto_sign(self, call: Call, ids: dict[str, Any]) -> SignRequest | None:
        """The auto tier in one HSM round: if a token needs no approvals and no hold, sign
        now (the HSM re-checks everything); otherwise None and the approval flow runs."""
        if not self.hsm.dry_run(call.label, call.payload, call.payload_type).released:
            self._signs_at_once.discard(call.label)
            return None
        try:
            result = self.hsm.sign_now(call.label, call.payload, call.payload_type,
                                       call.algorithm, **ids)
        except PolicyNotMet:  # the policy changed in between: take the approval flow
            self._signs_at_once.discard(call.label)
            return None
        if "initiation" not in ids:  # initiated requests are never batched
            self._signs_at_once.add(call.label)
        return self._record_executed(call, result)

    def signs_at_once(self, label: str) -> bool:
        """Whether the last request for ``label`` was auto-signed (a hint, not a rule)."""
        return label in self._signs_at_once

    def not_at_once(self, label: str) -> None:
        self._signs_at_once.discard(label)

    def _record_executed(self, call: Call, result: Execution) -> SignRequest:
        try:
            return self.record_signed([call], [result])[0]
        except IntegrityError:  # a racing retry under the same ticket recorded it first
            return self.get(result.request_id)

    def record_signed(self, calls: Sequence[Call],
                      results: Sequence[Execution]) -> list[SignRequest]:
        """Record requests the HSM signed at once (one, or a batch) in one commit."""
        values = [_executed_values(c, r) for c, r in zip(calls, results, strict=True)]
        with self.sessions.begin() as s:
            s.connection().execute(_INSERT_ROW, values)
        rows = [SignRequest(**v) for v in values]
        for row in rows:
            self.on_change(row)
        return rows

    def _adopt(self, call: Call, request_id: str) -> SignRequest:
        """The HSM holds ``request_id`` but this broker has no row: the call that made it
        died before recording it. Record what the HSM did - signed at once, or opened an
        approval flow (maybe cancelled since) - so the retry answers the first outcome."""
        try:
            result = self.hsm.request_result(request_id)
        except RequestClosed:  # not executed: open, or closed without a signature
            return self._record_pending(call, self._their_challenge(call, request_id))
        if result.label != call.label:
            raise Conflict(f"request {request_id} in the HSM is for another key")
        return self._record_executed(call, result)  # (a row recorded meanwhile is kept)

    def _their_challenge(self, call: Call, request_id: str) -> Challenge:
        challenge = self.hsm.request_challenge(request_id)
        body = challenge.body
        digest = hashlib.sha256(call.payload).hexdigest()
        if body.get("keyLabel") != call.label or body.get("action") != call.action.value or (
                call.action is Action.USE and body.get("payloadDigest") != digest):
            raise Conflict(f"request {request_id} in the HSM is for another payload")
        return challenge

    def _find(self, request_id: str, tenant: str) -> SignRequest | None:
        try:
            return self.get(request_id, tenant)
        except NotFound:
            return None

    def _insert(self, row: SignRequest) -> bool:
        """Add a new row; False if one with its id exists."""
        try:
            with self.sessions.begin() as s:
                s.add(row)
        except IntegrityError:
            return False
        return True

    def get(self, request_id: str, tenant: str | None = None) -> SignRequest:
        with self.sessions() as s:
            row: SignRequest | None = s.get(SignRequest, request_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no request {request_id!r}")
            return row

    def approvals(self, request_id: str) -> list[ApprovalRecord]:
        with self.sessions() as s:
            return list(s.scalars(select(ApprovalRecord).where(
                ApprovalRecord.request_id == request_id).order_by(ApprovalRecord.id)))

    def cancel(self, principal: Principal, request_id: str) -> SignRequest:
        row = self.get(request_id, principal.tenant)
        if row.status in FINAL:
            raise Conflict(f"request {request_id} is already {row.status}")
        try:
            self.hsm.cancel(request_id, f"cancelled by {principal.subject}")
        except RequestClosed:  # executed meanwhile, or cancelled by a call that then died
            return self._recover(row)  # (the HSM's request_status still evaluates it)
        self._finish(request_id, Status.CANCELLED, error="cancelled")
        return self.get(request_id)

    # -- approvers ----------------------------------------------------------------------

    def authenticate_approver(self, credential_value: str, timestamp: str, signature_b64: str,
                              digest: str = "SHA-256") -> Credential:
        """Seed 003's task-listing proof: a fresh timestamp signed by the approval key,
        within the allowed skew, each usable once."""
        cred = _credential(credential_value)
        ts = verify_timestamp(cred, timestamp, signature_b64, self.clock(), self.max_skew,
                              digest)
        try:
            with self.sessions.begin() as s:
                s.execute(delete(SeenTimestamp).where(
                    SeenTimestamp.at < self.clock() - 2 * self.max_skew))
                s.add(SeenTimestamp(approver=cred.fingerprint, timestamp=timestamp, at=ts))
        except IntegrityError:
            raise ApprovalRefused("this signed timestamp was already used") from None
        return cred

    def tasks(self, cred: Credential, page: int = 0, size: int = 20,
              newest_first: bool = False) -> list[Task]:
        """Pending requests this approver may approve and has not yet answered."""
        size = max(1, min(size, MAX_PAGE))
        with self.sessions() as s:
            done = set(s.scalars(select(ApprovalRecord.request_id).where(
                ApprovalRecord.approver == cred.fingerprint)))
            order = SignRequest.created_at.desc() if newest_first else SignRequest.created_at
            rows = s.scalars(select(SignRequest).where(
                SignRequest.status.in_([Status.PENDING, Status.APPROVED])).order_by(order))
            mine = [r for r in rows if r.id not in done
                    and cred.fingerprint in self._rule_members(r.key_label, r.action)]
        return [Task(r, ()) for r in mine[page * size:(page + 1) * size]]

    def approve(self, request_id: str, credential_value: str, signature: bytes,
                digest: str = "SHA-256", challenge_b64: str | None = None) -> SignRequest:
        """Record one approval (verified by the HSM first), then try to release."""
        row = self.get(request_id)
        if challenge_b64 is not None and challenge_b64 != row.challenge_b64:
            raise ApprovalRefused("approvalToBeSigned does not match this task's challenge")
        if row.status in FINAL:
            raise Conflict(f"request {request_id} is already {row.status}")
        kind = _credential_kind(credential_value)
        approval = Approval(kind, credential_value, signature, digest)
        spki = self.hsm.check_approval(request_id, approval)
        cred = parse_credential(kind, credential_value)
        self._record(ApprovalRecord(
            request_id=request_id, approver=cred.fingerprint, approver_key_b64=spki,
            credential_type=kind, credential=credential_value,
            signature_b64=base64.b64encode(signature).decode(), digest=digest))
        return self.advance(request_id)

    def reject(self, request_id: str, credential_value: str, signature: bytes,
               digest: str = "SHA-256") -> SignRequest:
        """An approver's signed refusal; ends the request once its policy cannot be met."""
        row = self.get(request_id)
        if row.status in FINAL:
            raise Conflict(f"request {request_id} is already {row.status}")
        cred = _credential(credential_value)
        if cred.fingerprint not in self._rule_members(row.key_label, row.action):
            raise ApprovalRefused("not an approver of this request")
        message = REJECT_PREFIX + base64.b64decode(row.challenge_b64)
        if not verify(cred, message, signature, digest):
            raise ApprovalRefused("rejection signature does not verify")
        self._record(ApprovalRecord(
            request_id=request_id, approver=cred.fingerprint,
            approver_key_b64=cred.public_key_b64, credential_type=_credential_kind(
                credential_value), credential=credential_value,
            signature_b64=base64.b64encode(signature).decode(), digest=digest, rejected=True))
        return self.advance(request_id)

    def _record(self, record: ApprovalRecord) -> None:
        try:
            with self.sessions.begin() as s:
                s.add(record)
        except IntegrityError:
            raise Conflict("this approver already answered this request") from None

    # -- release ------------------------------------------------------------------------

    def advance(self, request_id: str) -> SignRequest:
        """Bring a request as far as its approvals and the clock allow. Idempotent."""
        row = self.get(request_id)
        if row.status in FINAL:
            return row
        records = self.approvals(request_id)
        approvals = [_approval(r) for r in records if not r.rejected]
        rejected = [r.approver for r in records if r.rejected]
        try:
            ev = self.hsm.request_status(request_id, approvals, rejected)
        except RequestClosed:
            return self._recover(row)
        except TransportError:
            self._unreachable(row.id)
        except HsmError as exc:
            return self._fail(request_id, exc)
        if ev.released:
            return self._release(row, approvals)
        if not ev.attainable:
            return self._close(row, Status.REJECTED if rejected else Status.EXPIRED, ev)
        self._wait(row, ev)
        return self.get(request_id)

    def _close(self, row: SignRequest, status: Status, ev: Evaluation) -> SignRequest:
        """The policy can no longer be met: close it in the HSM too, then here."""
        try:
            self.hsm.cancel(row.id, status.value.lower())
        except RequestClosed:  # closed by this very step before a crash: same outcome
            return self._recover(row, unexecuted=status)
        self._finish(row.id, status, error="; ".join(ev.missing()))
        return self.get(row.id)

    def _release(self, row: SignRequest, approvals: Sequence[Approval]) -> SignRequest:
        payload = None
        if self.finalize is not None:
            try:
                payload = self.finalize(row)
            except (CustodyError, ChainError, OSError) as exc:  # node down, fees too high
                log.warning("finalizing %s failed, retrying: %s", row.id, exc)
                self._retry_later(row.id, RETRY_SECONDS)
                return self.get(row.id)
        try:
            result = self.hsm.execute(row.id, approvals, payload=payload)
        except RequestClosed:
            return self._recover(row)
        except PolicyNotMet:  # the clock moved between status and execute: look again
            return self.advance(row.id)
        except TransportError:  # outcome unknown: the retry finds it (request_result)
            self._unreachable(row.id)
        except HsmError as exc:
            return self._fail(row.id, exc)
        self._finish(row.id, Status.EXECUTED, signatures=result.signatures,
                     approved_by=list(result.approved_by), executed_at=result.executed_at)
        return self.get(row.id)

    def _recover(self, row: SignRequest, unexecuted: Status | None = None) -> SignRequest:
        """The HSM closed the request: executed (maybe by another replica, maybe before
        a crash) - record its result - or cancelled (as ``unexecuted``, if given)."""
        try:
            result = self.hsm.request_result(row.id)
        except RequestClosed as exc:
            self._finish(row.id, unexecuted or (Status.CANCELLED if "cancelled" in exc.reason
                                                else Status.FAILED), error=exc.reason)
            return self.get(row.id)
        self._finish(row.id, Status.EXECUTED, signatures=result.signatures,
                     approved_by=list(result.approved_by), executed_at=result.executed_at)
        return self.get(row.id)

    def _unreachable(self, request_id: str) -> NoReturn:
        """The HSM is down, not refusing: an outage must not end a request. Look again
        later (the scheduler retries), and tell the caller to retry (503)."""
        self._retry_later(request_id, RETRY_SECONDS)
        raise TransportError(f"the HSM is unreachable; request {request_id} is kept and "
                             "retried")

    def _fail(self, request_id: str, exc: HsmError) -> SignRequest:
        self._finish(request_id, Status.FAILED, error=f"{exc.code}: {exc.reason}")
        return self.get(request_id)

    def _finish(self, request_id: str, status: Status, *, error: str | None = None,
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

    def _wait(self, row: SignRequest, ev: Evaluation) -> None:
        """Not releasable yet: note when the clock alone could change that - a hold that
        ends, or a timeout that passes. Without the timeouts a request nobody answers (or
        one whose release a crash cut short) would stay PENDING for ever."""
        waits = []
        for t in ev.tokens:
            if t.attainable and all(g.met for g in t.groups) and t.hold_remaining > 0:
                waits.append(t.hold_remaining)
        now = self.clock()
        wakes = [now + w for w in waits] + self._timeouts(row, ev, now)
        wake = min(wakes) if wakes else None
        status = Status.APPROVED if waits else Status.PENDING
        with self.sessions.begin() as s:
            s.execute(update(SignRequest).where(
                SignRequest.id == row.id,
                SignRequest.status.not_in([st.value for st in FINAL])).values(
                    wake_at=wake, status=status))
        if status != row.status:
            self.on_change(self.get(row.id))
        if wake is not None:
            with self._wake:
                self._wake.notify_all()

    def _timeouts(self, row: SignRequest, ev: Evaluation, now: float) -> list[float]:
        """When each still attainable token times out (just after: the HSM's test is
        strict); if the HSM's clock lags ours, look again a second later."""
        try:
            rule = self._rule(row.key_label, row.action)
        except HsmError:
            return []
        tokens = rule.tokens if rule is not None else ()
        return [max(row.hsm_time + tok.timeout + 1.0, now + 1.0)
                for tok, status in zip(tokens, ev.tokens, strict=False)
                if tok.timeout and status.attainable]

    def _retry_later(self, request_id: str, seconds: float) -> None:
        with self.sessions.begin() as s:
            s.execute(update(SignRequest).where(
                SignRequest.id == request_id,
                SignRequest.status.not_in([st.value for st in FINAL])).values(
                    wake_at=self.clock() + seconds))
        with self._wake:
            self._wake.notify_all()

    def due(self) -> list[str]:
        """Requests whose hold has ended (or that should be re-examined) by now."""
        with self.sessions() as s:
            return list(s.scalars(select(SignRequest.id).where(
                SignRequest.wake_at.is_not(None), SignRequest.wake_at <= self.clock(),
                SignRequest.status.not_in([st.value for st in FINAL]))))

    def next_wake(self) -> float | None:
        with self.sessions() as s:
            wake: float | None = s.scalar(select(SignRequest.wake_at).where(
                SignRequest.wake_at.is_not(None),
                SignRequest.status.not_in([st.value for st in FINAL])).order_by(
                    SignRequest.wake_at).limit(1))
            return wake

    def tick(self) -> int:
        """Advance every due request; returns how many were looked at."""
        ids = self.due()
        for request_id in ids:
            self.advance(request_id)
        return len(ids)

    def run_scheduler(self, stop: threading.Event, max_sleep: float = 5.0) -> None:
        """Wake for the earliest hold end (or when told a new one exists), never poll
        blindly for long: a released hold is signed within milliseconds of its end."""
        while not stop.is_set():
            try:
                self.tick()
                wake = self.next_wake()
            except (CustodyError, HsmError, OSError, SQLAlchemyError):  # an outage: go on
                wake = None
            delay = max_sleep if wake is None else max(0.0, min(max_sleep, wake - self.clock()))
            with self._wake:
                self._wake.wait(timeout=delay)

    def stop_scheduler(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- helpers ------------------------------------------------------------------------

    def rule_members(self, label: str, action: str) -> frozenset[str]:
        """Fingerprints of every approver in the key's rule for ``action``."""
        return self._rule_members(label, action)

    def _rule(self, label: str, action: str) -> Rule | None:
        info = self.hsm.get_key(label)
        key = (label, info.policy_digest)
        policy = self._policies.get(key)
        if policy is None:
            policy = parse_policy({k: v for k, v in info.policy.items() if k != "keyStatus"})
            self._policies[key] = policy
        return policy.rule(Action(action))

    def _rule_members(self, label: str, action: str) -> frozenset[str]:
        rule = self._rule(label, action)
        if rule is None:
            return frozenset()
        return frozenset(a.fingerprint for t in rule.tokens for g in t.groups
                         for a in g.approvers)

    def members_of(self, label: str, action: str) -> list[str]:
        """Approver SPKI (base64) of every group in the key's rule for ``action``."""
        info = self.hsm.get_key(label)
        policy = parse_policy({k: v for k, v in info.policy.items() if k != "keyStatus"})
        rule = policy.rule(Action(action))
        seen: dict[str, str] = {}
        for t in rule.tokens if rule else ():
            for g in t.groups:
                for a in g.approvers:
                    seen.setdefault(a.fingerprint, a.credential.public_key_b64)
        return list(seen.values())


def _executed_values(call: Call, result: Execution) -> dict[str, Any]:
    """The row of a request the HSM signed at once (auto tier)."""
    return {
        "id": result.request_id, "tenant": call.principal.tenant,
        "initiator": call.principal.subject, "key_label": call.label,
        "action": Action.USE.value, "payload_type": call.payload_type,
        "payload_b64": base64.b64encode(call.payload).decode(),
        "signature_algorithm": call.algorithm, "meta_data": call.meta, "challenge_b64": "",
        "intent": None if result.intent is None else result.intent.to_json(),
        "status": Status.EXECUTED, "hsm_time": result.executed_at,
        "result": [base64.b64encode(sig).decode() for sig in result.signatures],
        "approved_by": [], "execution_time": datetime.fromtimestamp(result.executed_at, UTC),
        "created_at": datetime.now(UTC), "version": 0}


def _same_request(row: SignRequest, call: Call, new_policy: dict[str, Any] | None) -> None:
    """A request id an initiation names is the desk's own: used again, it must be for the
    same request (the HSM would refuse a second one under it anyway)."""
    same = (row.key_label == call.label and row.action == call.action.value
            and row.payload_type == call.payload_type
            and row.payload_b64 == base64.b64encode(call.payload).decode())
    if same and new_policy is not None and row.challenge_b64:
        body = Challenge(row.id, base64.b64decode(row.challenge_b64)).body
        same = body.get("newPolicyDigest") == payload_digest(b"", new_policy)
    if not same:
        raise Conflict(f"request {row.id} exists for another key, action or payload")


def _approval(r: ApprovalRecord) -> Approval:
    return Approval(r.credential_type, r.credential, base64.b64decode(r.signature_b64),
                    r.digest)


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
