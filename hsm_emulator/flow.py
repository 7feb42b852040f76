"""The approval flow inside the HSM: request, challenge, verified approvals, release.

1. :meth:`ApprovalFlow.begin` decodes the payload, stamps it with the HSM's clock and
   issues the challenge; the HSM keeps the request (payload, intent, time) in its own
   store.
2. Approvers sign the challenge; :meth:`ApprovalFlow.check_approval` verifies one without
   changing anything, so the broker can show progress.
3. :meth:`ApprovalFlow.execute` verifies every approval again (signature, group
   membership, this request's own challenge, not the initiator), evaluates the policy on
   the intent the HSM decoded, and only then performs the action - once: the request is
   closed in the same transaction that signs it.
4. :meth:`ApprovalFlow.approve` is 2 and 3 in one call, transaction and counted commit:
   it checks one approval and, if with it (and the others, verified again) the policy is
   met now, executes - the broker's last approval releases without a second commit.

The initiator is the broker's word (``initiator=``) unless the key's policy names its
``initiators``: then every request must carry an initiation - an initiator's signature
over :func:`~hsm_emulator.initiation.initiation_message`, bound to this HSM, key, action,
payload and the caller's single-use request id - and the initiator is the key that signed
it, whatever the broker says (see :func:`initiated`).

Approvals bind to the intent, not to volatile fields: ``execute`` accepts a rebuilt
payload (fee bump, new gas price or blockhash) if it decodes to the same transfers and
its fee stays within the approved cap.

The auto tier (signing at once, no approvals) is :mod:`hsm_emulator.autotier`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .boundary import Boundary
from .challenge import MAX_CHALLENGE, Challenge, seal_challenge
from .credentials import Credential, parse_credential, verify
from .decoders import UNSPECIFIED
from .display import policy_change, units_for
from .errors import (
    ApprovalRefused,
    CredentialInvalid,
    IntentMismatch,
    InvalidInput,
    PolicyNotMet,
    RequestClosed,
)
from .evaluate import Evaluation, evaluate
from .initiation import initiation_message
from .model import Action, Intent, IntentKind, SignScheme
from .payloads import check_network, parse_action, parse_scheme, prepare, sign, sign_items
from .policy import Approver
from .records import KeyRecords, KeyState
from .request import HsmRequest, RequestStatus
from .results import ApprovalOutcome, Execution

MAX_APPROVALS = 256


@dataclass(frozen=True)
class Approval:
    """One approver's signature over a request's challenge (seed 003 ``/v1/approval``)."""

    credential_type: str  #: "certificate", "public_key" or "webauthn"
    credential: str  #: base64 DER, as in the policy
    signature: bytes
    digest: str = "SHA-256"

    def to_json(self) -> dict[str, Any]:
        return {"credentialType": self.credential_type, "credential": self.credential,
                "signature": base64.b64encode(self.signature).decode(), "digest": self.digest}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Approval:
        return cls(d["credentialType"], d["credential"], base64.b64decode(d["signature"]),
                   d.get("digest", "SHA-256"))


def new_request(rid: str, state: KeyState, act: Action, payload_type: str, payload: bytes,
                scheme: SignScheme | None, intent: Intent | None, *, status: RequestStatus,
                created_at: float, fee_cap: int | None = None, initiator: str = "",
                challenge: bytes = b"", proven: Approver | None = None,
                epoch: int = 0) -> HsmRequest:
    """A new request record. ``proven``: the initiator whose initiation the HSM verified
    (its policy entry); the record then names it by key (``initiator``) and by its
    policy name. ``epoch``: the counter's epoch it was made in (a request from before a
    restore is void)."""
    return HsmRequest(
        id=rid, label=state.label, action=act, payload_type=payload_type, payload=payload,
        scheme=scheme, intent=intent, fee_cap=fee_cap, created_at=created_at, status=status,
        initiator=initiator if proven is None else proven_initiator(proven),
        policy_digest=state.policy.digest, challenge=challenge,
        initiator_proven=proven is not None, initiator_name="" if proven is None else proven.name,
        epoch=epoch)


def proven_initiator(initiator: Approver) -> str:
    """How the HSM names an initiator it verified: by key, whatever its encoding or
    binding (``key:`` + SHA-256 hex of the bare SPKI)."""
    return "key:" + initiator.identity


def initiated(hsm_id: str, state: KeyState, act: Action, payload_type: str, payload: bytes,
              request_id: str | None, initiation: Approval | None,
              event: dict[str, Any]) -> Approver | None:
    """The proven initiator of a request for ``state``'s key, or None if its policy
    names no ``initiators`` (then there must be no initiation either).

    With initiators, the request needs an initiation by one of them (the credential
    exactly as listed) whose signature verifies over :func:`initiation_message` for
    this HSM, key, action, payload type, payload (``payload``: what the challenge's
    ``payloadDigest`` hashes) and the caller's ``request_id`` - which must be given,
    and is used once (:meth:`RequestRecords.fresh_id`), so an initiation is never good
    for a second request. A ``block`` request may come without one (its initiator is
    then the broker's claim): an emergency stop must not wait for a desk signature, and
    blocking only denies service, which a broker can do anyway. Records the
    initiator in the audit ``event``."""
    initiators = state.policy.initiators
    if not initiators:
        if initiation is not None:
            raise InvalidInput(f"key {state.label!r}: its policy names no initiators, so "
                               "a request for it takes no initiation")
        return None
    if initiation is None:
        if act is Action.BLOCK:  # stopping a key is never held up for want of a desk
            return None          # signature: it only denies service, as the broker can
        raise ApprovalRefused(f"key {state.label!r}: its policy names its initiators; a "
                              "request needs an initiation signed by one of them")
    if not isinstance(initiation, Approval):
        raise InvalidInput("initiation must be an Approval")
    if request_id is None:
        raise InvalidInput("an initiated request needs the caller's request_id, the one "
                           "the initiation signs")
    try:
        cred = parse_credential(initiation.credential_type, initiation.credential)
    except CredentialInvalid as exc:
        raise ApprovalRefused(f"initiator credential: {exc.reason}") from None
    entry = state.policy.initiator(cred.fingerprint)
    if entry is None:
        raise ApprovalRefused(f"{cred.fingerprint[:16]} is not an initiator of key "
                              f"{state.label!r}")
    message = initiation_message(
        hsm_id=hsm_id, key_label=state.label, action=act.value,
        payload_type=payload_type, payload_digest=hashlib.sha256(payload).hexdigest(),
        request_id=request_id)
    try:
        valid = verify(cred, message, initiation.signature, initiation.digest)
    except InvalidInput as exc:  # e.g. an unsupported digest name
        raise ApprovalRefused(f"initiation: {exc.reason}") from None
    if not valid:
        raise ApprovalRefused(f"initiator {cred.fingerprint[:16]}: the initiation does not "
                              "verify for this HSM, key, action, payload and request id")
    event.update(initiator=proven_initiator(entry), initiatorName=entry.name)
    return entry


def fingerprints(values: Sequence[str]) -> frozenset[str]:
    """Approvers given as SPKI base64 or as fingerprints, as fingerprints."""
    out = set()
    for v in values:
        if len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            out.add(v)
        else:
            out.add(parse_credential("public_key", v).fingerprint)
    return frozenset(out)


#: Why a request made under a policy the key no longer has is closed.
POLICY_CHANGED = "the key's policy changed since this request was made"


def _current(req: HsmRequest, state: KeyState) -> None:
    """A request is answered under the policy it was made under, or not at all: once a
    ``modify`` replaced the key's policy, every request still open under the old one is
    closed - refused here on every call, whoever asks - so approvals gathered under the old
    rules can never release it (the broker mirrors this, :mod:`custody.broker.release`)."""
    if state.policy.digest != req.policy_digest:
        raise RequestClosed(POLICY_CHANGED)


def _describe(req: HsmRequest, event: dict[str, Any]) -> None:
    """Name an execution's request in its audit event: key, action, proven initiator."""
    event.update(label=req.label, action=req.action.value)
    if req.initiator_proven:
        event.update(initiator=req.initiator, initiatorName=req.initiator_name)


class ApprovalFlow:
    """The request calls of :class:`hsm_emulator.Hsm` (see
    :class:`hsm_emulator.client.HsmSigning`), but for the auto tier's."""

    def __init__(self, boundary: Boundary) -> None:
        self._b = boundary
        self._keys = boundary.keys
        self._requests = boundary.requests

    # -- begin ------------------------------------------------------------------------

    def begin(
        self,
        label: str,
        action: Action | str = Action.USE,
        payload: bytes = b"",
        payload_type: str = UNSPECIFIED,
        scheme: SignScheme | str | None = None,
        *,
        fee_cap: int | None = None,
        new_policy: dict[str, Any] | None = None,
        initiator: str = "",
        request_id: str | None = None,
        initiation: Approval | None = None,
    ) -> Challenge:
        """Record a request for a key action and issue its challenge.

        ``request_id``: the caller's own id for the request (see
        :meth:`RequestRecords.fresh_id`), so a caller that crashed mid-call can learn
        what the HSM did instead of asking twice.

        ``initiator``: who asked, in the broker's word. ``initiation``: required if, and
        only if, the key's policy names ``initiators`` (see :func:`initiated`); the
        initiator is then the key that signed it, and ``initiator`` is ignored."""
        act = parse_action(action)
        event: dict[str, Any] = {"op": "request.begin", "label": label, "action": act.value}
        b = self._b

        def start() -> Challenge:
            rid = self._requests.fresh_id(request_id)
            state = self._keys.usable(label)
            body_payload, intent, _ = prepare(b.registry, state, act, payload, payload_type,
                                              scheme, new_policy)
            proven = initiated(b.hsm_id, state, act, payload_type, body_payload, request_id,
                               initiation, event)
            named = initiator if proven is None else proven_initiator(proven)
            sch = parse_scheme(scheme)
            if fee_cap is not None and (fee_cap < 0 or (intent and fee_cap < intent.fee)):
                raise InvalidInput("feeCap must be at least the payload's fee")
            now = b.clock.now()
            body = {
                "requestId": rid, "keyLabel": label, "action": act.value,
                "payloadType": payload_type,
                "payloadDigest": hashlib.sha256(body_payload).hexdigest(),
                "intent": None if intent is None else intent.to_json(),
                "feeCap": None if fee_cap is None else str(fee_cap),
                "hsmTime": now,
                "hsmTimestamp": datetime.fromtimestamp(now, UTC).isoformat(),
                "policyDigest": state.policy.digest,
                "newPolicyDigest": None if new_policy is None else
                hashlib.sha256(body_payload).hexdigest(),
                "initiator": named, "hsmId": b.hsm_id,
                "units": units_for(state.policy, intent),
                # the counter at issue, for approvers' witnesses (see .challenge)
                "epoch": b.store.counter_value.epoch, "seq": b.store.counter_value.count,
            }
            if new_policy is not None:  # approvers diff authenticated summaries
                body["policyChange"] = policy_change(state.policy,
                                                     b.lists.parse_policy(new_policy))
            if proven is not None:  # who asked, proven by their signature: approvers see it
                body.update(initiatorProven=True, initiatorName=proven.name)
            envelope = seal_challenge(b.identity, body)
            if len(envelope) > MAX_CHALLENGE:  # no approver client would open it
                raise InvalidInput("the challenge would be too large for approvers to review "
                                   f"({len(envelope)} bytes; at most {MAX_CHALLENGE})")
            self._requests.put(new_request(
                rid, state, act, payload_type, body_payload, sch, intent,
                status=RequestStatus.OPEN, created_at=now, fee_cap=fee_cap,
                initiator=initiator, challenge=envelope, proven=proven,
                epoch=b.store.counter_value.epoch))
            event.update(requestId=rid, payloadDigest=body["payloadDigest"])
            return Challenge(rid, envelope)

        with b.locked():
            return b.audited(event, start)

    # -- approvals --------------------------------------------------------------------

    def _verify(self, req: HsmRequest, state: KeyState, approval: Approval) -> Credential:
        try:
            cred = parse_credential(approval.credential_type, approval.credential)
        except CredentialInvalid as exc:
            raise ApprovalRefused(f"approver credential: {exc.reason}") from None
        rule = state.policy.rule(req.action)
        entries = [a for t in (rule.tokens if rule else ()) for g in t.groups
                   for a in g.approvers if a.fingerprint == cred.fingerprint]
        if not entries:
            raise ApprovalRefused(f"approver {cred.fingerprint[:16]} is in no group of this "
                                  f"key's {req.action.value} rule")
        # Segregation of duties: the initiator is named by its key or, for a desk login,
        # by the person's name - which is also the approver's "name" in the policy. A
        # proven initiator is named by its bare key ("key:" + identity: the same person
        # under any encoding or passkey binding) and by its name in the policy.
        identities = {cred.fingerprint, cred.public_key_b64, "key:" + cred.identity} | {
            a.name for a in entries if a.name}
        initiators = {req.initiator, req.initiator_name} - {""}
        if initiators & identities:
            raise ApprovalRefused("the initiator of a request cannot approve it")
        try:
            valid = verify(cred, req.challenge, approval.signature, approval.digest)
        except InvalidInput as exc:  # e.g. an unsupported digest name
            raise ApprovalRefused(f"approval: {exc.reason}") from None
        if not valid:
            raise ApprovalRefused(f"approver {cred.fingerprint[:16]}: signature does not verify "
                                  "over this request's challenge")
        return cred

    def check_approval(self, request_id: str, approval: Approval) -> str:
        """Verify one approval without changing state; returns the approver's SPKI base64."""
        event = {"op": "approval.check", "requestId": request_id}

        def check() -> str:
            _req, _state, cred = self._checked(request_id, approval, event)
            return cred.public_key_b64

        with self._b.locked():
            return self._b.audited(event, check)

    def _checked(self, request_id: str, approval: Approval, event: dict[str, Any],
                 ) -> tuple[HsmRequest, KeyState, Credential]:
        """The open request of the key's current policy, its key's state and the
        approval's verified credential (named in ``event``): ``check_approval``'s check,
        and ``approve``'s first step."""
        req, state = self._open(request_id)
        cred = self._verify(req, state, approval)
        event["approver"] = cred.fingerprint
        return req, state, cred

    def _open(self, request_id: str) -> tuple[HsmRequest, KeyState]:
        """An open request made under its key's current policy, and the key's state;
        :class:`RequestClosed` for one executed, cancelled or made under a replaced
        policy."""
        req = self._requests.get(request_id)
        if not req.is_open:
            raise RequestClosed(f"request {request_id} is {req.status.value}")
        state = self._keys.state(req.label)
        _current(req, state)
        return req, state

    def _verified_set(self, req: HsmRequest, state: KeyState,
                      approvals: Sequence[Approval]) -> dict[str, Credential]:
        if len(approvals) > MAX_APPROVALS:
            raise InvalidInput(f"at most {MAX_APPROVALS} approvals")
        creds: dict[str, Credential] = {}
        for a in approvals:
            cred = self._verify(req, state, a)
            creds[cred.fingerprint] = cred
        return creds

    # -- execute ----------------------------------------------------------------------

    def execute(self, request_id: str, approvals: Sequence[Approval] = (), *,
                payload: bytes | None = None) -> Execution:
        """Verify approvals, evaluate the policy, and perform the action exactly once."""
        event: dict[str, Any] = {"op": "request.execute", "requestId": request_id}
        b = self._b

        def run() -> Execution:
            req = self._requests.get(request_id)
            _describe(req, event)
            if not req.is_open:
                raise RequestClosed(f"request {request_id} is already {req.status.value}")
            state = self._releasable(req)
            _current(req, state)
            creds = self._verified_set(req, state, approvals)
            event["approvers"] = sorted(creds)
            final, intent = self._final_payload(req, state, payload)
            ev = self._evaluate(req, state, creds, intent)
            if not ev.released:
                missing = ev.missing() + b.frozen_note(req.action)
                raise PolicyNotMet("the policy is not met: " + " | ".join(missing), missing)
            return self._release(req, state, creds, final, intent, ev, event)

        with b.locked():
            return b.audited(event, run)

    def approve(self, request_id: str, approval: Approval, approvals: Sequence[Approval] = (),
                *, payload: bytes | None = None) -> ApprovalOutcome:
        """:meth:`check_approval` and, if with this approval the policy is met now,
        :meth:`execute` - in one transaction and one counted commit: the last approval
        releases the request without a second call.

        ``approvals``: the request's other approvals so far (each verified again, as
        ``execute`` does; ``approval``'s approver must not be among them). ``payload``:
        the rebuilt payload to sign if the policy is met (bound to the approved intent
        and fee cap, and the policy evaluated again on it, as by ``execute``; read only
        once the policy is met on the approved intent). Audited as the two calls would be: the
        approval's check, then - only if the policy is met - the execution, ok or
        refused; a refused approval leaves the request as it was. If the policy is not
        met (a group short, a hold not over) the approval is only checked, as by
        ``check_approval``, and the outcome carries no execution."""
        check: dict[str, Any] = {"op": "approval.check", "requestId": request_id}
        steps = [check]

        def run() -> ApprovalOutcome:
            req, state, cred = self._checked(request_id, approval, check)
            creds = self._verified_set(req, state, approvals)
            if cred.fingerprint in creds:
                raise ApprovalRefused(f"approver {cred.fingerprint[:16]} is already among "
                                      "this request's approvals: an approver counts once")
            creds[cred.fingerprint] = cred
            if not self._evaluate(req, state, creds, req.intent).released:
                return ApprovalOutcome(request_id, cred.public_key_b64, None)
            event: dict[str, Any] = {"op": "request.execute", "requestId": request_id}
            steps.append(event)  # from here a refusal is the execution's
            _describe(req, event)
            event["approvers"] = sorted(creds)
            state = self._releasable(req)
            final, intent = self._final_payload(req, state, payload)
            ev = self._evaluate(req, state, creds, intent)
            if not ev.released:  # the rebuilt payload's fee fails a condition the approved one met
                missing = ev.missing()
                raise PolicyNotMet("the policy is not met: " + " | ".join(missing), missing)
            return ApprovalOutcome(request_id, cred.public_key_b64,
                                   self._release(req, state, creds, final, intent, ev, event))

        with self._b.locked():
            return self._b.audited_steps(steps, run)

    def _releasable(self, req: HsmRequest) -> KeyState:
        """The request's key, if a request of this epoch may be executed with it now."""
        if req.epoch != self._b.store.counter_value.epoch:
            raise RequestClosed(f"request {req.id} was made in epoch {req.epoch}, "
                                "before a restore from backup: void, ask again")
        return self._keys.usable(req.label)

    def _evaluate(self, req: HsmRequest, state: KeyState, creds: dict[str, Credential],
                  intent: Intent | None) -> Evaluation:
        b = self._b
        return evaluate(b.policy_now(state.policy, req.action), req.action, intent,
                        frozenset(creds), req.created_at, b.clock.now(),
                        spent=b.ledger.spent(state.family))

    def _release(self, req: HsmRequest, state: KeyState, creds: dict[str, Credential],
                 final: bytes, intent: Intent | None, ev: Evaluation,
                 event: dict[str, Any]) -> Execution:
        """Perform a released request's action and close it, in the caller's
        transaction: the request is executed once."""
        signatures = self._perform(state, req.action, req, final, intent,
                                   ev.released_by or "")
        result = Execution(req.id, state.label, req.action, signatures, ev.released_by,
                           tuple(c.public_key_b64 for c in creds.values()),
                           self._b.clock.now(), intent)
        self._requests.put(req.executed(result))
        event.update(token=ev.released_by, payloadDigest=hashlib.sha256(final).hexdigest())
        return result

    def _final_payload(self, req: HsmRequest, state: KeyState, payload: bytes | None,
                       ) -> tuple[bytes, Intent | None]:
        stored, approved = req.payload, req.intent
        if payload is None or payload == stored:
            return stored, approved
        if req.action is not Action.USE or approved is None or (
                approved.kind is not IntentKind.TRANSFER):
            # A contract call's or message's meaning is in its data, which the binding does
            # not carry: only plain transfers may be rebuilt under their approvals.
            raise IntentMismatch("only a decoded transfer may be rebuilt after approval; "
                                 "a changed contract call or message needs new approvals")
        rebuilt = self._b.registry.decode(req.payload_type, payload, KeyRecords.view(state))
        assert rebuilt is not None
        if rebuilt.binding() != approved.binding():
            raise IntentMismatch("the rebuilt transaction does not match the approved intent")
        cap = approved.fee if req.fee_cap is None else req.fee_cap
        if rebuilt.fee > cap:
            raise IntentMismatch(f"the rebuilt transaction's fee {rebuilt.fee} exceeds the "
                                 f"approved cap {cap}")
        return payload, rebuilt

    def _perform(self, state: KeyState, act: Action, req: HsmRequest, payload: bytes,
                 intent: Intent | None, token: str) -> tuple[bytes, ...]:
        rec = dict(state.record)
        if act is Action.USE:
            _, items = sign_items(self._b.registry, state, req.payload_type, payload,
                                  req.scheme)
            sigs = sign(state, items)
            self._b.ledger.record(state.family, intent, token)
            return sigs
        if act is Action.BLOCK:
            rec["blocked"] = True
        elif act is Action.UNBLOCK:
            rec["blocked"] = False
            if state.record["parent"] and not state.record["blocked"]:
                raise InvalidInput("this key is blocked through its parent: unblock the parent")
        else:
            rec["policy"] = json.loads(payload)
        self._keys.put(rec)
        return ()

    # -- reading requests -------------------------------------------------------------

    def dry_run(self, label: str, payload: bytes = b"", payload_type: str = UNSPECIFIED,
                action: Action | str = Action.USE, *, approvers: Sequence[str] = (),
                elapsed: float = 0.0) -> Evaluation:
        """What would release this payload now (or after ``elapsed`` seconds of hold),
        given approvers' SPKI base64 or fingerprints. Changes nothing."""
        b = self._b
        with b.locked():
            state = self._keys.usable(label)
            act = parse_action(action)
            intent = b.registry.decode(payload_type, payload, KeyRecords.view(state)) if (
                act is Action.USE) else None
            check_network(state, intent)
            now = b.clock.now()
            return evaluate(b.policy_now(state.policy, act), act, intent,
                            fingerprints(approvers),
                            now - elapsed, now, spent=b.ledger.spent(state.family))

    def request_status(self, request_id: str, approvals: Sequence[Approval] = (),
                       rejected: Sequence[str] = ()) -> Evaluation:
        """Evaluate an open request with these approvals (each verified) and rejections.
        A closed one (executed, cancelled) is refused (:class:`RequestClosed`): a broker
        that died after the HSM closed it learns so here, and recovers its result
        (``request_result``), instead of waiting on approvals it may never record."""
        b = self._b
        with b.locked():
            req, state = self._open(request_id)
            creds = self._verified_set(req, state, approvals)
            return evaluate(b.policy_now(state.policy, req.action), req.action, req.intent,
                            frozenset(creds),
                            req.created_at, b.clock.now(),
                            rejected=fingerprints(rejected), spent=b.ledger.spent(state.family))

    def cancel(self, request_id: str, reason: str = "") -> None:
        """Close an open request so it can never be executed."""
        def run() -> None:
            req = self._requests.get(request_id)
            if not req.is_open:
                raise RequestClosed(f"request {request_id} is already {req.status.value}")
            self._requests.put(req.cancelled(reason[:200]))

        with self._b.locked():
            self._b.audited({"op": "request.cancel", "requestId": request_id,
                             "why": reason[:200]}, run)

    def request_result(self, request_id: str) -> Execution:
        """The result of an executed request, again: a broker that crashed after the HSM
        signed but before it recorded the signature resumes here instead of losing it
        (the HSM never signs the same request twice)."""
        with self._b.locked():
            req = self._requests.get(request_id)
            if req.result is not None:
                return req.result
            if req.is_open:
                _current(req, self._keys.state(req.label))
            why = f": {req.reason}" if req.reason else ", not executed"
            raise RequestClosed(f"request {request_id} is {req.status.value}{why}")

    def request_challenge(self, request_id: str) -> Challenge:
        with self._b.locked():
            return Challenge(request_id, self._requests.get(request_id).challenge)
