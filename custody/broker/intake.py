"""Request intake: who owns which key (tenancy), and turning a caller's request into a
request in the HSM and a row here - signed at once by the auto tier, or pending
approvals. A retry under the same request id adopts what the first call did (recorded
here, or only in the HSM) instead of making a second request."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError

from hsm_emulator.challenge import Challenge
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import PolicyNotMet, RequestClosed, RequestExists
from hsm_emulator.flow import Approval
from hsm_emulator.initiation import payload_digest
from hsm_emulator.model import Action
from hsm_emulator.results import Execution, KeyInfo

from .. import tenancy
from ..db import FINAL, SignRequest, Status
from ..errors import BadRequest, Conflict
from .model import Call, Principal
from .release import Release
from .store import RequestStore

#: A Core insert on the table: the auto-signing hot path skips the ORM's bulk machinery.
_INSERT_ROW = insert(cast(Table, SignRequest.__table__))


class Intake:
    def __init__(self, hsm: HsmClient, store: RequestStore, release: Release) -> None:
        self.hsm = hsm
        self.store = store
        self.release = release
        self._owners: dict[str, str] = {}
        #: keys whose last request the auto tier signed at once: a hint for batching
        #: (custody/autosign.py) - the HSM decides every time, a wrong hint costs a retry
        self._signs_at_once: set[str] = set()

    # -- key tenancy (custody/tenancy.py) -----------------------------------------------

    def create_key(self, tenant: str, label: str, algorithm: Any, **kwargs: Any) -> KeyInfo:
        """A new HSM key that belongs to ``tenant`` alone."""
        info = tenancy.create_key(self.store.sessions, self.hsm, tenant, label, algorithm,
                                  **kwargs)
        self._owners[label] = tenant
        return info

    def claim_key(self, label: str, tenant: str) -> None:
        """Give an existing HSM key to ``tenant`` (keys made outside the API, tests)."""
        tenancy.claim(self.store.sessions, label, tenant)

    def check_key(self, label: str, tenant: str) -> None:
        """404 unless ``label`` is ``tenant``'s key; owners never change, so a yes is
        cached (this is on the auto-sign hot path)."""
        if self._owners.get(label) == tenant:
            return
        tenancy.check(self.store.sessions, label, tenant)
        self._owners[label] = tenant

    # -- sign requests ------------------------------------------------------------------

    def submit(self, principal: Principal, label: str, action: Action, payload: bytes,
               payload_type: str, algorithm: str | None, meta: dict[str, Any] | None,
               new_policy: dict[str, Any] | None = None, *, fee_cap: int | None = None,
               auto: bool = True, request_id: str | None = None,
               initiation: Approval | None = None, released: bool = False) -> SignRequest:
        """Record a request in the HSM, then here; try to release it at once. ``fee_cap``:
        the most a rebuilt transaction may pay (approvals bind to intent and cap).

        ``request_id`` (an idempotency ticket, :mod:`custody.idempotency`, or the id an
        initiation signs): the id the request gets in the HSM. A retry under it after a
        crash adopts what the first call did - recorded here or only in the HSM - instead
        of making a second one.

        ``initiation``: the desk's signature that proves who asked, for keys whose policy
        names ``initiators`` (:mod:`hsm_emulator.initiation`); needs ``request_id``. The
        HSM verifies it; here it is only passed on.

        ``released``: the caller's own dry run of this payload just released it (the
        treasury's intake asks first, to finalize the payload before the HSM signs), so
        the auto tier goes straight to ``sign_now`` without asking again - the HSM checks
        everything when it signs, and a policy changed in between takes the approval
        flow, as after any dry run."""
        self.check_key(label, principal.tenant)
        call = Call(principal, label, action, payload, payload_type, algorithm, meta)
        if initiation is not None and request_id is None:
            raise BadRequest("an initiated request needs the requestId its initiation signs")
        if request_id is not None:
            known = self.store.find(request_id, principal.tenant)
            if known is not None:
                if initiation is not None:
                    _same_request(known, call, new_policy)
                return known if known.status in FINAL else self.release.advance(known.id)
        ids: dict[str, Any] = {} if request_id is None else {"request_id": request_id}
        if initiation is not None:
            ids["initiation"] = initiation
        try:
            if action is Action.USE and auto:
                executed = self._auto_sign(call, ids, released=released)
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
        if not self.store.insert(row):
            return self.store.get(row.id)  # a racing retry recorded it first
        self.store.on_change(row)
        return self.release.advance(row.id)

    def _auto_sign(self, call: Call, ids: dict[str, Any], *,
                   released: bool = False) -> SignRequest | None:
        """The auto tier in one HSM round: if a token needs no approvals and no hold, sign
        now (the HSM re-checks everything); otherwise None and the approval flow runs."""
        if not released and not self.hsm.dry_run(call.label, call.payload,
                                                  call.payload_type).released:
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
            return self.store.get(result.request_id)

    def record_signed(self, calls: Sequence[Call],
                      results: Sequence[Execution]) -> list[SignRequest]:
        """Record requests the HSM signed at once (one, or a batch) in one commit."""
        values = [_executed_values(c, r) for c, r in zip(calls, results, strict=True)]
        with self.store.sessions.begin() as s:
            s.connection().execute(_INSERT_ROW, values)
        rows = [SignRequest(**v) for v in values]
        for row in rows:
            self.store.on_change(row)
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
