"""The release state machine: bring a request as far as its approvals and the clock allow
- execute it in the HSM, wait for a hold, close it when its policy can no longer be met -
and never lose or repeat a release:

* the HSM executes a request at most once; a second ``execute`` is refused;
* every state change here is committed before the next external effect;
* a broker that crashed after the HSM signed fetches the result again
  (``request_result``) - so after any crash, :meth:`Release.advance` converges.

The last approval usually releases in one HSM call (:meth:`Release.with_approval`,
``hsm.approve``); :meth:`Release.advance` is the path for everything else.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from sqlalchemy import select, update

from chains.errors import ChainError
from hsm_emulator.challenge import Challenge
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import (
    ApprovalRefused,
    CredentialInvalid,
    HsmError,
    PolicyNotMet,
    RequestClosed,
    TransportError,
)
from hsm_emulator.evaluate import Evaluation
from hsm_emulator.flow import POLICY_CHANGED, Approval
from hsm_emulator.model import Action
from hsm_emulator.results import Execution

from ..db import FINAL, ApprovalRecord, SignRequest, Status
from ..errors import Conflict, CustodyError
from .model import Principal
from .rules import Rules
from .store import RequestStore

#: How soon a release that could not be finalized (node unreachable) is tried again.
RETRY_SECONDS = 5.0
log = logging.getLogger("custody.broker")


class Release:
    def __init__(self, hsm: HsmClient, store: RequestStore, rules: Rules,
                 wake: threading.Condition,
                 finalize: Callable[[SignRequest], bytes | None] | None = None) -> None:
        self.hsm = hsm
        self.store = store
        self.rules = rules
        #: notified whenever a request gets a wake time (the scheduler sleeps on it)
        self.wake = wake
        #: called just before the HSM executes an approved request; may return a rebuilt
        #: payload (fresh nonce, fees, blockhash) that the HSM checks against the approved
        #: intent and fee cap. ``None`` signs the payload as requested.
        self.finalize = finalize

    def advance(self, request_id: str) -> SignRequest:
        """Bring a request as far as its approvals and the clock allow. Idempotent."""
        row = self.store.get(request_id)
        if row.status in FINAL:
            return row
        records = self.store.approvals(request_id)
        approvals = [approval_of(r) for r in records if not r.rejected]
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
        return self.store.get(request_id)

    def cancel(self, principal: Principal, request_id: str,
               reason: str | None = None) -> SignRequest:
        """The initiator's tenant withdraws a request that has not ended yet; ``reason``
        becomes its error (default ``cancelled``)."""
        row = self.store.get(request_id, principal.tenant)
        if row.status in FINAL:
            raise Conflict(f"request {request_id} is already {row.status}")
        try:
            self.hsm.cancel(request_id, reason or f"cancelled by {principal.subject}")
        except RequestClosed:  # executed meanwhile, or cancelled by a call that then died
            return self._recover(row)
        return self.store.finish(request_id, Status.CANCELLED, error=reason or "cancelled")

    def _close(self, row: SignRequest, status: Status, ev: Evaluation) -> SignRequest:
        """The policy can no longer be met: close it in the HSM too, then here."""
        try:
            self.hsm.cancel(row.id, status.value.lower())
        except RequestClosed:  # closed by this very step before a crash: same outcome
            return self._recover(row, unexecuted=status)
        return self.store.finish(row.id, status, error="; ".join(ev.missing()))

    def _release(self, row: SignRequest, approvals: Sequence[Approval]) -> SignRequest:
        payload = None
        if self.finalize is not None:
            try:
                payload = self.finalize(row)
            except (CustodyError, ChainError, OSError) as exc:  # node down, fees too high
                log.warning("finalizing %s failed, retrying: %s", row.id, exc)
                self._retry_later(row.id, RETRY_SECONDS)
                return self.store.get(row.id)
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
        return self._executed(row, result)

    def with_approval(self, row: SignRequest, approval: Approval,
                      approvals: Sequence[Approval],
                      record: Callable[[str], ApprovalRecord],
                      ) -> SignRequest | None:
        """Release ``row`` with its last approval in one HSM call and commit
        (``hsm.approve``: the approval checked and, the policy met, the request executed),
        the payload finalized first as :meth:`_release` does. ``approvals``: the ones
        recorded so far; ``record(spki)`` makes the new one's record once the HSM verified
        it, written with the execution (one transaction) or alone if it released nothing.

        None when the two-call path must answer instead (check the approval, record it,
        :meth:`advance`) - the payload could not be finalized, or the HSM refused for a
        reason other than the approval itself: that path answers it as it always has. A
        refused approval raises, as ``check_approval`` would. If the HSM found the policy
        not met after all, the approval is recorded and the request advanced. A crash
        after the HSM executed and before :meth:`_executed` leaves the request open here,
        closed in the HSM: the next :meth:`advance` (the sweep's) is refused by
        ``request_status`` and recovers the result (:meth:`_recover`)."""
        payload = None
        if self.finalize is not None:
            try:
                payload = self.finalize(row)
            except (CustodyError, ChainError, OSError):  # the two-call path retries it
                return None
        try:
            outcome = self.hsm.approve(row.id, approval, approvals, payload=payload)
        except TransportError:  # outcome unknown: the retry finds it (request_result)
            self._unreachable(row.id)
        except (ApprovalRefused, CredentialInvalid):  # the approval's own refusal
            raise
        except HsmError:
            return None
        record_ = record(outcome.approver)
        if outcome.execution is None:
            self.store.add_approval(record_)
            return self.advance(row.id)
        return self._executed(row, outcome.execution, approval=record_)

    def _executed(self, row: SignRequest, result: Execution,
                  approval: ApprovalRecord | None = None) -> SignRequest:
        """Record an execution (and ``approval``, the one that released it, in the same
        transaction). A ``modify`` replaced the key's policy, which closed every
        request still open under the old one in the HSM: mirror that first, so a crash in
        between leaves the modify open here and its recovery (:meth:`_recover`) sweeps
        again."""
        if row.action == Action.MODIFY.value:
            if approval is not None:
                with contextlib.suppress(Conflict):  # answered meanwhile: it stands
                    self.store.add_approval(approval)
                approval = None
            self.close_superseded(but=row.id)
        return self.store.finish(row.id, Status.EXECUTED, signatures=result.signatures,
                                 approved_by=list(result.approved_by),
                                 executed_at=result.executed_at, approval=approval)

    def close_superseded(self, but: str | None = None) -> list[str]:
        """Close every open request made under a policy its key no longer has (a
        ``modify`` executed meanwhile: on that key, or on a parent it inherits from), with
        the HSM's reason, so its transfer ends with it, its webhook fires and it leaves
        approvers' task lists - instead of gathering approvals the HSM will refuse.
        The HSM is the authority (it refuses such a request on every call); this only
        mirrors it at once. Returns the ids closed."""
        with self.store.sessions() as s:
            rows = list(s.scalars(select(SignRequest).where(
                SignRequest.status.in_([Status.PENDING.value, Status.APPROVED.value]))))
        digests: dict[str, str | None] = {}
        closed = []
        for row in rows:
            if row.id == but:
                continue
            if row.key_label not in digests:
                try:
                    digests[row.key_label] = self.hsm.get_key(row.key_label).policy_digest
                except HsmError:
                    digests[row.key_label] = None
            made_under = _policy_digest(row)
            current = digests[row.key_label]
            if current is None or made_under is None or made_under == current:
                continue
            log.warning("request %s (key %s) closed: %s", row.id, row.key_label,
                        POLICY_CHANGED)
            self.close_unexecuted(row, POLICY_CHANGED)
            closed.append(row.id)
        return closed

    def close_unexecuted(self, row: SignRequest, reason: str,
                         status: Status = Status.CANCELLED) -> SignRequest:
        """Close an open request in the HSM (with ``reason``), then here; if the HSM had
        executed it meanwhile, record that instead."""
        try:
            self.hsm.cancel(row.id, reason)
        except RequestClosed:
            return self._recover(row, unexecuted=status)
        return self.store.finish(row.id, status, error=reason)

    def _recover(self, row: SignRequest, unexecuted: Status | None = None) -> SignRequest:
        """The HSM closed the request: executed (maybe by another replica, maybe before
        a crash) - record its result - or cancelled (as ``unexecuted``, if given)."""
        try:
            result = self.hsm.request_result(row.id)
        except RequestClosed as exc:
            cancelled = "cancelled" in exc.reason or POLICY_CHANGED in exc.reason
            why = _why(exc.reason)
            return self.store.finish(row.id, unexecuted or _CLOSED_AS.get(why) or (
                Status.CANCELLED if cancelled else Status.FAILED), error=why)
        return self._executed(row, result)

    def _unreachable(self, request_id: str) -> NoReturn:
        """The HSM is down, not refusing: an outage must not end a request. Look again
        later (the scheduler retries), and tell the caller to retry (503)."""
        self._retry_later(request_id, RETRY_SECONDS)
        raise TransportError(f"the HSM is unreachable; request {request_id} is kept and "
                             "retried")

    def _fail(self, request_id: str, exc: HsmError) -> SignRequest:
        return self.store.finish(request_id, Status.FAILED, error=f"{exc.code}: {exc.reason}")

    def _wait(self, row: SignRequest, ev: Evaluation) -> None:
        """Not releasable yet: note when the clock alone could change that - a hold that
        ends, or a timeout that passes. Without the timeouts a request nobody answers (or
        one whose release a crash cut short) would stay PENDING for ever."""
        waits = []
        for t in ev.tokens:
            if t.attainable and all(g.met for g in t.groups) and t.hold_remaining > 0:
                waits.append(t.hold_remaining)
        now = self.store.clock()
        wakes = [now + w for w in waits] + self._timeouts(row, ev, now)
        wake = min(wakes) if wakes else None
        status = Status.APPROVED if waits else Status.PENDING
        with self.store.sessions.begin() as s:
            s.execute(update(SignRequest).where(
                SignRequest.id == row.id,
                SignRequest.status.not_in([st.value for st in FINAL])).values(
                    wake_at=wake, status=status))
        if status != row.status:
            self.store.on_change(self.store.get(row.id))
        if wake is not None:
            with self.wake:
                self.wake.notify_all()

    def _timeouts(self, row: SignRequest, ev: Evaluation, now: float) -> list[float]:
        """When each still attainable token times out (just after: the HSM's test is
        strict); if the HSM's clock lags ours, look again a second later."""
        try:
            rule = self.rules.rule(row.key_label, row.action)
        except HsmError:
            return []
        tokens = rule.tokens if rule is not None else ()
        return [max(row.hsm_time + tok.timeout + 1.0, now + 1.0)
                for tok, status in zip(tokens, ev.tokens, strict=False)
                if tok.timeout and status.attainable]

    def _retry_later(self, request_id: str, seconds: float) -> None:
        with self.store.sessions.begin() as s:
            s.execute(update(SignRequest).where(
                SignRequest.id == request_id,
                SignRequest.status.not_in([st.value for st in FINAL])).values(
                    wake_at=self.store.clock() + seconds))
        with self.wake:
            self.wake.notify_all()


#: The HSM's reason for a request :meth:`Release._close` ended (it cancels with the
#: status's name), back to that status when a crash cut the close short.
_CLOSED_AS = {st.value.lower(): st for st in (Status.REJECTED, Status.EXPIRED)}


def _why(reason: str) -> str:
    """The HSM's reason for a closed request, without the request id it repeats."""
    _, sep, why = reason.partition(" is cancelled: ")
    return why if sep else reason


def _policy_digest(row: SignRequest) -> str | None:
    """The policy a request was made under, from the HSM-signed challenge it carries."""
    if not row.challenge_b64:
        return None
    digest = Challenge(row.id, base64.b64decode(row.challenge_b64)).body.get("policyDigest")
    return digest if isinstance(digest, str) else None


def approval_of(r: ApprovalRecord) -> Approval:
    """A recorded approval, as the HSM takes it."""
    return Approval(r.credential_type, r.credential, base64.b64decode(r.signature_b64),
                    r.digest)
