"""The approval flow inside the HSM: request, challenge, verified approvals, release.

1. :meth:`Hsm.begin` decodes the payload, stamps it with the HSM's clock and issues the
   challenge; the HSM keeps the request (payload, intent, time) in its own store.
2. Approvers sign the challenge; :meth:`Hsm.check_approval` verifies one without
   changing anything, so the broker can show progress.
3. :meth:`Hsm.execute` verifies every approval again (signature, group membership, this
   request's own challenge, not the initiator), evaluates the policy on the intent the
   HSM decoded, and only then performs the action - once: the request is closed in the
   same transaction that signs it.

The initiator is the broker's word (``initiator=``) unless the key's policy names its
``initiators``: then every request must carry an initiation - an initiator's signature
over :func:`~hsm_emulator.initiation.initiation_message`, bound to this HSM, key, action,
payload and the caller's single-use request id - and the initiator is the key that signed
it, whatever the broker says.

Approvals bind to the intent, not to volatile fields: ``execute`` accepts a rebuilt
payload (fee bump, new gas price or blockhash) if it decodes to the same transfers and
its fee stays within the approved cap.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from .challenge import Challenge, seal_challenge
from .credentials import Credential, parse_credential, verify
from .decoders import MAX_PAYLOAD, UNSPECIFIED
from .errors import (
    ApprovalRefused,
    AttributeDenied,
    CredentialInvalid,
    HsmError,
    IntentMismatch,
    InvalidInput,
    KeyBlocked,
    NetworkNotAllowed,
    PolicyNotMet,
    RequestClosed,
    RequestExists,
    RequestNotFound,
)
from .evaluate import Evaluation, SpentFn, evaluate
from .hsm import HsmCore, KeyState
from .initiation import initiation_message
from .keys import MaterialView
from .model import (
    Action,
    Intent,
    IntentKind,
    SignItem,
    SignScheme,
    canonical_json,
    network_id,
)
from .policy import Approver, parse_policy
from .request import HsmRequest, RequestStatus
from .results import Execution

MAX_APPROVALS = 256
MAX_BATCH = 1000
#: A request id a caller may choose (``begin`` / ``sign_now``).
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: Enum members used per payload, looked up once: on Python 3.11 reading an attribute of
#: an Enum class is several times slower than reading a module global.
_USE = Action.USE
NO_APPROVALS: frozenset[str] = frozenset()  #: the auto tier's approver set
X = TypeVar("X")
Y = TypeVar("Y")


def _new_request(rid: str, state: KeyState, act: Action, payload_type: str, payload: bytes,
                 scheme: SignScheme | None, intent: Intent | None, *, status: RequestStatus,
                 created_at: float, fee_cap: int | None = None, initiator: str = "",
                 challenge: bytes = b"", proven: Approver | None = None) -> HsmRequest:
    """A new request record. ``proven``: the initiator whose initiation the HSM verified
    (its policy entry); the record then names it by key (``initiator``) and by its
    policy name."""
    return HsmRequest(
        id=rid, label=state.label, action=act, payload_type=payload_type, payload=payload,
        scheme=scheme, intent=intent, fee_cap=fee_cap, created_at=created_at, status=status,
        initiator=initiator if proven is None else proven_initiator(proven),
        policy_digest=state.policy.digest, challenge=challenge,
        initiator_proven=proven is not None, initiator_name="" if proven is None else proven.name)


def proven_initiator(initiator: Approver) -> str:
    """How the HSM names an initiator it verified: by key, whatever its encoding or
    binding (``key:`` + SHA-256 hex of the bare SPKI)."""
    return "key:" + initiator.identity


class _AutoItem(NamedTuple):
    """A payload the auto tier has decoded and released, not yet signed."""

    state: KeyState
    payload: bytes
    intent: Intent | None
    items: tuple[SignItem, ...]
    token: str | None  #: the releasing token
    at: float  #: when the policy released it


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


class Hsm(HsmCore):
    """The HSM. Open one with :meth:`Hsm.open`; reach it through an ``HsmClient``."""

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

        ``request_id``: the caller's own id for the request (see :meth:`_fresh_id`), so a
        caller that crashed mid-call can learn what the HSM did instead of asking twice.

        ``initiator``: who asked, in the broker's word. ``initiation``: required if, and
        only if, the key's policy names ``initiators`` (see :meth:`_initiated`); the
        initiator is then the key that signed it, and ``initiator`` is ignored."""
        act = _action(action)
        event: dict[str, Any] = {"op": "request.begin", "label": label, "action": act.value}

        def start() -> Challenge:
            rid = self._fresh_id(request_id)
            state = self._usable(label)
            body_payload, intent, _ = self._prepare(state, act, payload, payload_type,
                                                    scheme, new_policy)
            proven = self._initiated(state, act, payload_type, body_payload, request_id,
                                     initiation, event)
            named = initiator if proven is None else proven_initiator(proven)
            sch = _scheme(scheme)
            if fee_cap is not None and (fee_cap < 0 or (intent and fee_cap < intent.fee)):
                raise InvalidInput("feeCap must be at least the payload's fee")
            now = self.clock.now()
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
                "initiator": named, "hsmId": self.hsm_id,
            }
            if proven is not None:  # who asked, proven by their signature: approvers see it
                body.update(initiatorProven=True, initiatorName=proven.name)
            envelope = seal_challenge(self.identity, body)
            self._put_request(_new_request(
                rid, state, act, payload_type, body_payload, sch, intent,
                status=RequestStatus.OPEN, created_at=now, fee_cap=fee_cap,
                initiator=initiator, challenge=envelope, proven=proven))
            event.update(requestId=rid, payloadDigest=body["payloadDigest"])
            return Challenge(rid, envelope)

        with self.locked():
            return self._audited(event, start)

    def _fresh_id(self, chosen: str | None) -> str:
        """A new request's id: the caller's choice (8-64 of ``A-Z a-z 0-9 _ -``), once
        only - a second request under it is :class:`RequestExists` - or a random one."""
        if chosen is None:
            return str(uuid.uuid4())
        if not isinstance(chosen, str) or not _REQUEST_ID.fullmatch(chosen):
            raise InvalidInput("request_id: 8-64 characters of A-Z a-z 0-9 _ -")
        if self._store.get("request", chosen) is not None:
            raise RequestExists(f"request {chosen} exists")
        return chosen

    def _initiated(self, state: KeyState, act: Action, payload_type: str, payload: bytes,
                   request_id: str | None, initiation: Approval | None,
                   event: dict[str, Any]) -> Approver | None:
        """The proven initiator of a request for ``state``'s key, or None if its policy
        names no ``initiators`` (then there must be no initiation either).

        With initiators, the request needs an initiation by one of them (the credential
        exactly as listed) whose signature verifies over :func:`initiation_message` for
        this HSM, key, action, payload type, payload (``payload``: what the challenge's
        ``payloadDigest`` hashes) and the caller's ``request_id`` - which must be given,
        and is used once (:meth:`_fresh_id`), so an initiation is never good for a second
        request. A ``block`` request may come without one (its initiator is then the
        broker's claim): an emergency stop must not wait for a desk signature, and
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
            hsm_id=self.hsm_id, key_label=state.label, action=act.value,
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

    def _prepare(self, state: KeyState, act: Action, payload: bytes, payload_type: str,
                 scheme: SignScheme | str | None, new_policy: dict[str, Any] | None,
                 ) -> tuple[bytes, Intent | None, tuple[SignItem, ...]]:
        """Check the key may act; decode the payload into its intent and what to sign."""
        if not isinstance(payload, bytes):
            raise InvalidInput("payload must be bytes")
        if act is _USE:
            if not state.attributes.sign:
                raise AttributeDenied(f"key {state.label!r} does not allow signing")
            if state.blocked:
                raise KeyBlocked(f"key {state.label!r} is blocked")
            return (payload, *self._items(state, payload_type, payload, _scheme(scheme)))
        if payload or payload_type != UNSPECIFIED:
            raise InvalidInput(f"a {act.value} request carries no payload")
        if act is Action.MODIFY:
            if new_policy is None:
                raise InvalidInput("a modify request needs the new policy")
            parse_policy(new_policy)
            return canonical_json(new_policy), None, ()
        if new_policy is not None:
            raise InvalidInput(f"a {act.value} request takes no policy")
        if act is Action.UNBLOCK and not state.blocked:
            raise InvalidInput(f"key {state.label!r} is not blocked")
        if act is Action.BLOCK and state.blocked:
            raise InvalidInput(f"key {state.label!r} is already blocked")
        return b"", None, ()

    def _items(self, state: KeyState, payload_type: str, payload: bytes,
               scheme: SignScheme | None) -> tuple[Intent | None, tuple[SignItem, ...]]:
        if payload_type != UNSPECIFIED:
            if scheme is not None:
                raise InvalidInput(f"{payload_type} payloads are signed as their chain requires;"
                                   " give no signature algorithm")
            intent, items = self.registry.prepare(payload_type, payload, self._view(state))
            _check_network(state, intent)
            return intent, items
        if scheme is None:
            raise InvalidInput("an UNSPECIFIED payload needs a signature algorithm")
        if len(payload) > MAX_PAYLOAD:
            raise InvalidInput(f"payload larger than {MAX_PAYLOAD} bytes")
        return None, (SignItem(scheme, payload),)

    @staticmethod
    def _view(state: KeyState) -> MaterialView:
        assert state.material is not None
        return MaterialView(state.material, state.attributes.derive)

    # -- approvals --------------------------------------------------------------------

    def _request(self, request_id: str) -> HsmRequest:
        if not isinstance(request_id, str) or len(request_id) > 64:
            raise RequestNotFound("no such request")
        doc = self._store.get("request", request_id)
        if doc is None:
            raise RequestNotFound(f"no request {request_id!r}")
        return HsmRequest.from_json(doc)

    def _put_request(self, req: HsmRequest) -> None:
        self._store.put("request", req.id, req.to_json())

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
            req = self._request(request_id)
            if not req.is_open:
                raise RequestClosed(f"request {request_id} is {req.status.value}")
            cred = self._verify(req, self._state(req.label), approval)
            event["approver"] = cred.fingerprint
            return cred.public_key_b64

        with self.locked():
            return self._audited(event, check)

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

        def run() -> Execution:
            req = self._request(request_id)
            event.update(label=req.label, action=req.action.value)
            if req.initiator_proven:
                event.update(initiator=req.initiator, initiatorName=req.initiator_name)
            if not req.is_open:
                raise RequestClosed(f"request {request_id} is already {req.status.value}")
            state = self._usable(req.label)
            if state.policy.digest != req.policy_digest:
                raise RequestClosed("the key's policy changed since this request was made")
            act = req.action
            creds = self._verified_set(req, state, approvals)
            event["approvers"] = sorted(creds)
            final, intent = self._final_payload(req, state, payload)
            ev = evaluate(state.policy, act, intent, frozenset(creds), req.created_at,
                          self.clock.now(), spent=self._spent(state.family))
            if not ev.released:
                raise PolicyNotMet("the policy is not met: " + " | ".join(ev.missing()),
                                   ev.missing())
            signatures = self._perform(state, act, req, final, intent, ev.released_by or "")
            now = self.clock.now()
            result = Execution(request_id, state.label, act, signatures, ev.released_by,
                               tuple(c.public_key_b64 for c in creds.values()), now, intent)
            self._put_request(req.executed(result))
            event.update(token=ev.released_by, payloadDigest=hashlib.sha256(final).hexdigest())
            return result

        with self.locked():
            return self._audited(event, run)

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
        rebuilt = self.registry.decode(req.payload_type, payload, self._view(state))
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
            _, items = self._items(state, req.payload_type, payload, req.scheme)
            sigs = self._sign(state, items)
            self._record_spend(state.family, intent, token)
            return sigs
        if act is Action.BLOCK:
            rec["blocked"] = True
        elif act is Action.UNBLOCK:
            rec["blocked"] = False
            if state.record["parent"] and not state.record["blocked"]:
                raise InvalidInput("this key is blocked through its parent: unblock the parent")
        else:
            rec["policy"] = json.loads(payload)
        self._put_key(rec)
        return ()

    def _sign(self, state: KeyState, items: tuple[SignItem, ...]) -> tuple[bytes, ...]:
        assert state.material is not None
        if not state.attributes.derive and any(item.path for item in items):
            raise AttributeDenied("signing for a derived path needs the derive attribute")
        return tuple([state.material.derive(item.path).sign(item.scheme, item.data, item.tweak)
                      for item in items])

    # -- velocity ledger --------------------------------------------------------------

    def _spent(self, family: str) -> SpentFn:
        def spent(asset: str, since: float, tokens: frozenset[str] | None = None) -> int:
            rows = self._store.execute(
                "SELECT amount, token FROM spends WHERE family=? AND asset=? AND at>=?",
                (family, asset, since))
            pending = self.__dict__.get("_pending_spends") or ()
            return sum(int(r[0]) for r in rows if tokens is None or r[1] in tokens) + sum(
                int(p[2]) for p in pending if p[0] == family and p[1] == asset and
                p[3] >= since and (tokens is None or p[4] in tokens))
        return spent

    def _record_spend(self, family: str, intent: Intent | None, token: str) -> None:
        """Ledger rows of what ``token`` released: the intent's outflow per asset."""
        if intent is None:
            return
        now = self.clock.now()
        rows = [(family, asset, str(total), now, token)
                for asset, total in intent.outflow().items()]
        pending: list[tuple[str, str, str, float, str]] | None = self.__dict__.get(
            "_pending_spends")
        if pending is not None:
            pending.extend(rows)
        else:
            self._store.executemany("INSERT INTO spends VALUES (?, ?, ?, ?, ?)", rows)

    @contextmanager
    def _spends_buffered(self) -> Iterator[None]:
        """Inside a batch: keep ledger rows in memory (counted by :meth:`_spent`) and
        write them in one statement, in the batch's transaction."""
        pending: list[tuple[str, str, str, float, str]] = []
        self.__dict__["_pending_spends"] = pending
        try:
            yield
            self._store.insert_rows("spends", pending)
        finally:
            self.__dict__["_pending_spends"] = None

    # -- the auto tier and dry runs ---------------------------------------------------

    def sign_now(self, label: str, payload: bytes, payload_type: str = UNSPECIFIED,
                 scheme: SignScheme | str | None = None, *,
                 request_id: str | None = None,
                 initiation: Approval | None = None) -> Execution:
        """Sign at once if a token needs no approvals and no hold (the auto tier);
        otherwise refuse with :class:`PolicyNotMet` - then use :meth:`begin`.

        With the caller's own ``request_id`` the result is also kept as an executed
        request, so :meth:`request_result` returns it again to a caller that crashed
        before recording it, and a second call under that id signs nothing.
        ``initiation``: as for :meth:`begin` (required if the policy names initiators)."""
        event: dict[str, Any] = {"op": "sign.now", "label": label, "payloadType": payload_type}

        def run() -> Execution:
            rid = secrets.token_hex(16) if request_id is None else self._fresh_id(request_id)
            checked = self._check_auto(label, payload, payload_type, scheme)
            proven = self._initiated(checked.state, _USE, payload_type, checked.payload,
                                     request_id, initiation, event)
            signatures = self._sign(checked.state, checked.items)
            result = self._release(label, checked, signatures, rid, event)
            if request_id is not None:
                self._keep_auto(checked, result, payload_type, scheme, proven)
            return result

        with self.locked():
            return self._audited(event, run)

    def sign_batch(self, label: str, payloads: Sequence[bytes],
                   payload_type: str = UNSPECIFIED, scheme: SignScheme | str | None = None,
                   ) -> list[Execution]:
        """Bulk auto-tier signing: each payload decoded, evaluated (velocity counting the
        ones before it), signed and audited on its own, all committed at once.

        All or nothing: if any payload is refused, nothing is signed and the refusal
        names its index. Saves a commit per signature, not any check. The work runs in
        three passes - check every item, sign every item, audit every item - because
        running each kind of work back to back is markedly faster than alternating them
        (CPU caches); every pass is inside the batch's one transaction, so nothing is
        returned before all of it is committed, and a refused batch signs nothing.
        """
        if not 0 < len(payloads) <= MAX_BATCH:
            raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} payloads")
        event: dict[str, Any] = {"op": "sign.batch", "label": label, "size": len(payloads)}

        def run() -> list[Execution]:
            if self._usable(label).policy.initiators:
                raise InvalidInput(f"key {label!r}: its policy names initiators; initiated "
                                   "requests are signed one by one (sign_now, begin)")
            with self.audit.buffered(), self._spends_buffered():
                checked = _per_item(
                    lambda p: self._check_auto(label, p, payload_type, scheme), payloads)
                signatures = _per_item(lambda c: self._sign(c.state, c.items), checked)
                return self._release_batch(label, payload_type, checked, signatures)

        with self.locked():
            return self._audited(event, run)

    def _release_batch(self, label: str, payload_type: str, checked: list[_AutoItem],
                       signatures: list[tuple[bytes, ...]]) -> list[Execution]:
        """The batch's results, and for each item its own audit entry - the entry
        :meth:`sign_now` writes, with the item's index."""
        ids = secrets.token_hex(16 * len(checked))  # every request id from one draw
        events: list[dict[str, Any]] = [
            {"op": "sign.now", "label": label, "payloadType": payload_type, "batchIndex": i}
            for i in range(len(checked))]
        results = [self._release(label, item, sigs, ids[32 * i:32 * i + 32], events[i])
                   for i, (item, sigs) in enumerate(zip(checked, signatures, strict=True))]
        for event in events:
            event["result"] = "ok"
            self.audit.record(self.clock.now(), event)
        return results

    def _check_auto(self, label: str, payload: bytes, payload_type: str,
                    scheme: SignScheme | str | None) -> _AutoItem:
        """Decode ``payload`` and evaluate the key's policy on it now, with no approvals;
        refuse unless a token releases it. Records the spend in the velocity ledger (in
        the caller's transaction), so the next payload's velocity check counts it."""
        state = self._usable(label)
        final, intent, items = self._prepare(state, _USE, payload, payload_type,
                                             scheme, None)
        now = self.clock.now()
        ev = evaluate(state.policy, _USE, intent, NO_APPROVALS, now, now,
                      spent=self._spent(state.family))
        if not ev.released:
            raise PolicyNotMet("approvals are needed: " + " | ".join(ev.missing()),
                               ev.missing())
        self._record_spend(state.family, intent, ev.released_by or "")
        return _AutoItem(state, final, intent, items, ev.released_by, now)

    def _keep_auto(self, checked: _AutoItem, result: Execution, payload_type: str,
                   scheme: SignScheme | str | None, proven: Approver | None) -> None:
        """An auto-signed request kept like an executed one (see :meth:`sign_now`)."""
        self._put_request(_new_request(
            result.request_id, checked.state, _USE, payload_type, checked.payload,
            _scheme(scheme), checked.intent, status=RequestStatus.OPEN, created_at=checked.at,
            proven=proven).executed(result))

    @staticmethod
    def _release(label: str, checked: _AutoItem, signatures: tuple[bytes, ...],
                 request_id: str, event: dict[str, Any]) -> Execution:
        """The result of a signed auto-tier payload; fills in its audit event."""
        event.update(requestId=request_id, token=checked.token,
                     payloadDigest=hashlib.sha256(checked.payload).hexdigest())
        return Execution(request_id, label, _USE, signatures, checked.token, (),
                         checked.at, checked.intent)

    def dry_run(self, label: str, payload: bytes = b"", payload_type: str = UNSPECIFIED,
                action: Action | str = Action.USE, *, approvers: Sequence[str] = (),
                elapsed: float = 0.0) -> Evaluation:
        """What would release this payload now (or after ``elapsed`` seconds of hold),
        given approvers' SPKI base64 or fingerprints. Changes nothing."""
        with self.locked():
            state = self._usable(label)
            act = _action(action)
            intent = self.registry.decode(payload_type, payload, self._view(state)) if (
                act is Action.USE) else None
            _check_network(state, intent)
            now = self.clock.now()
            return evaluate(state.policy, act, intent, self._fingerprints(approvers),
                            now - elapsed, now, spent=self._spent(state.family))

    def request_status(self, request_id: str, approvals: Sequence[Approval] = (),
                       rejected: Sequence[str] = ()) -> Evaluation:
        """Evaluate an open request with these approvals (each verified) and rejections."""
        with self.locked():
            req = self._request(request_id)
            state = self._state(req.label)
            creds = self._verified_set(req, state, approvals)
            return evaluate(state.policy, req.action, req.intent, frozenset(creds),
                            req.created_at, self.clock.now(),
                            rejected=self._fingerprints(rejected), spent=self._spent(state.family))

    def cancel(self, request_id: str, reason: str = "") -> None:
        """Close an open request so it can never be executed."""
        def run() -> None:
            req = self._request(request_id)
            if not req.is_open:
                raise RequestClosed(f"request {request_id} is already {req.status.value}")
            self._put_request(req.cancelled())

        with self.locked():
            self._audited({"op": "request.cancel", "requestId": request_id,
                           "why": reason[:200]}, run)

    def request_result(self, request_id: str) -> Execution:
        """The result of an executed request, again: a broker that crashed after the HSM
        signed but before it recorded the signature resumes here instead of losing it
        (the HSM never signs the same request twice)."""
        with self.locked():
            req = self._request(request_id)
            if req.result is None:
                raise RequestClosed(f"request {request_id} is {req.status.value}, not executed")
            return req.result

    def request_challenge(self, request_id: str) -> Challenge:
        with self.locked():
            return Challenge(request_id, self._request(request_id).challenge)

    @staticmethod
    def _fingerprints(values: Sequence[str]) -> frozenset[str]:
        out = set()
        for v in values:
            if len(v) == 64 and all(c in "0123456789abcdef" for c in v):
                out.add(v)
            else:
                out.add(parse_credential("public_key", v).fingerprint)
        return frozenset(out)


def _per_item(step: Callable[[X], Y], inputs: Sequence[X]) -> list[Y]:
    """``[step(x) for x in inputs]``, except that a refusal names the batch item it
    came from."""
    done: list[Y] = []
    try:
        for x in inputs:
            done.append(step(x))
    except HsmError as exc:
        exc.reason = f"batch item {len(done)}: {exc.reason}"
        exc.args = (exc.reason,)
        raise
    return done


def _check_network(state: KeyState, intent: Intent | None) -> None:
    """A key signs only for the networks its policy names. The test decoder's payloads
    (chain ``test``, registered only where tests enable it) are no chain's transactions:
    a SHA-256 of JSON can be no chain's sighash, so they are exempt."""
    if intent is None or intent.chain == "test":
        return
    where = network_id(intent.chain, intent.network)
    if where not in state.policy.networks:
        named = ", ".join(sorted(state.policy.networks)) or "none"
        raise NetworkNotAllowed(f"key {state.label!r} does not sign for {where}: its policy "
                                f"names {named}")


def _action(value: Action | str) -> Action:
    try:
        return Action(value)
    except ValueError:
        raise InvalidInput(f"action: one of {[a.value for a in Action]}") from None


def _scheme(value: SignScheme | str | None) -> SignScheme | None:
    if value is None:
        return None
    try:
        return SignScheme(value)
    except ValueError:
        raise InvalidInput(f"signature algorithm {value!r} not supported; one of "
                           f"{[s.value for s in SignScheme]}") from None
