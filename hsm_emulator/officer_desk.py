"""The security officers' requests inside the HSM: challenge, quorum, execute once.

1. :meth:`OfficerDesk.officer_begin` checks the action's arguments and issues a
   challenge (:func:`~.challenge.seal_challenge`, signed by the HSM identity) binding
   the action, its exact arguments and their digest, a fresh request id, the epoch, the
   officer set and an expiry (:data:`~.officers.OFFICER_TTL`).
2. Officers verify the challenge with the HSM's public key and sign its bytes.
3. :meth:`OfficerDesk.officer_execute` verifies every signature over that request's own
   challenge (forged, wrong officer, the same officer twice: refused), evaluates the
   officers' pseudo-policy (:mod:`.officers`: M distinct officers, within the timeout),
   and performs the action once - the request is closed in the same transaction.
   A restore is executed with :meth:`OfficerDesk.restore_backup`, which also takes the
   backup and its shares.

Every refusal is audited (:meth:`~.boundary.Boundary.audited`). The passphrase calls of
single-officer demo mode (:meth:`OfficerDesk.as_demo_officer`) run the same two steps.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from .backup import MAX_SHARES, make_backup, snapshot
from .boundary import Boundary
from .challenge import Challenge, seal_challenge
from .credentials import Credential, parse_credential, verify
from .errors import (
    ApprovalRefused,
    AuthenticationFailed,
    BackupInvalid,
    CredentialInvalid,
    DuplicateApprover,
    InvalidInput,
    PolicyNotMet,
    RequestClosed,
    RequestExpired,
    RequestNotFound,
)
from .evaluate import evaluate
from .flow import Approval
from .keyring import Keyring
from .model import Action
from .officers import (
    OFFICER_TTL,
    OfficerAction,
    OfficerOutcome,
    OfficerRequest,
    OfficerSet,
    arguments_digest,
    check_arguments,
    demo_officer_key,
    demo_officers,
    parse_action,
    public_key_b64,
)
from .partition_restore import restore_partition
from .results import KeyInfo

KIND = "officer-request"
#: What an executed officer request gives: its summary (recorded) and secrets (not).
_Done = tuple[dict[str, Any], dict[str, Any]]
MAX_OFFICER_APPROVALS = 32

#: The audit ``op`` of each executed action (key actions keep their historical names).
OPS = {OfficerAction.INVALIDATE_KEY: "key.invalidate", OfficerAction.RESTORE_KEY: "key.restore",
       OfficerAction.DESTROY_KEY: "key.destroy", OfficerAction.EXPORT_KEY: "key.export",
       OfficerAction.SET_PARTITION: "partition.settings",
       OfficerAction.SET_OFFICERS: "partition.officers", OfficerAction.BACKUP: "partition.backup",
       OfficerAction.RESTORE: "partition.restore", OfficerAction.LIFT_FREEZE: "partition.unfreeze"}


class OfficerDesk:
    """The officer calls of :class:`hsm_emulator.Hsm` (see
    :class:`hsm_emulator.client.HsmOfficer`)."""

    def __init__(self, boundary: Boundary, keyring: Keyring) -> None:
        self._b = boundary
        self._keyring = keyring

    # -- reading ----------------------------------------------------------------------

    def officer_set(self) -> OfficerSet:
        with self._b.locked():
            return self._b.officer_set()

    def officer_challenge(self, request_id: str) -> Challenge:
        with self._b.locked():
            return Challenge(request_id, self._get(request_id).challenge)

    def _get(self, request_id: str) -> OfficerRequest:
        if not isinstance(request_id, str) or len(request_id) > 64:
            raise RequestNotFound("no such officer request")
        doc = self._b.store.get(KIND, request_id)
        if doc is None:
            raise RequestNotFound(f"no officer request {request_id!r}")
        return OfficerRequest.from_json(doc)

    def _put(self, req: OfficerRequest) -> None:
        self._b.store.put(KIND, req.id, req.to_json())

    # -- begin ------------------------------------------------------------------------

    def officer_begin(self, action: OfficerAction | str,
                      arguments: dict[str, Any] | None = None) -> Challenge:
        """Record an officer request and issue its challenge."""
        event: dict[str, Any] = {"op": "officer.begin", "action": str(action)[:64]}
        b = self._b

        def start() -> Challenge:
            act = parse_action(action)
            args = check_arguments(act, {} if arguments is None else arguments)
            officers = b.officer_set()
            rid = str(uuid.uuid4())
            now = b.clock.now()
            digest = arguments_digest(act, args)
            epoch, seq = b.store.counter_value.epoch, b.store.counter_value.count
            body = {
                "requestId": rid, "keyLabel": args.get("label", ""),
                "action": "officer." + act.value, "officerAction": act.value,
                "arguments": args, "argumentsDigest": digest,
                "payloadType": "OFFICER", "payloadDigest": digest, "intent": None,
                "feeCap": None, "hsmTime": now,
                "hsmTimestamp": datetime.fromtimestamp(now, UTC).isoformat(),
                "expiresAt": now + OFFICER_TTL, "epoch": epoch, "seq": seq,
                "policyDigest": officers.policy.digest, "newPolicyDigest": None,
                "initiator": "", "hsmId": b.hsm_id, "units": {},
                "nonce": secrets.token_hex(16),
            }
            envelope = seal_challenge(b.identity, body)
            self._put(OfficerRequest(rid, act, args, now, now + OFFICER_TTL, epoch,
                                     officers.policy.digest, envelope))
            event.update(action=act.value, requestId=rid, argumentsDigest=digest)
            return Challenge(rid, envelope)

        with b.locked():
            return b.audited(event, start)

    # -- execute ----------------------------------------------------------------------

    def officer_execute(self, request_id: str,
                        approvals: Sequence[Approval] = ()) -> OfficerOutcome:
        """Verify the officers' signatures, check the quorum, perform the action once."""
        def perform(req: OfficerRequest) -> tuple[dict[str, Any], dict[str, Any]]:
            if req.action is OfficerAction.RESTORE:
                raise InvalidInput("a restore is executed with restore_backup, which takes "
                                   "the backup and its shares")
            return self._perform(req)

        return self._execute(request_id, approvals, perform)

    def restore_backup(self, request_id: str, approvals: Sequence[Approval], backup: bytes,
                       shares: Sequence[str]) -> OfficerOutcome:
        """Restore ``backup`` into this empty HSM: the request (``restore``, naming the
        backup's digest) approved by this HSM's officers, and the backup's shares."""
        def perform(req: OfficerRequest) -> tuple[dict[str, Any], dict[str, Any]]:
            if req.action is not OfficerAction.RESTORE:
                raise InvalidInput(f"officer request {req.id} is a {req.action.value}, not "
                                   "a restore")
            if not isinstance(backup, bytes) or hashlib.sha256(backup).hexdigest() != (
                    req.arguments["backupDigest"]):
                raise BackupInvalid("this is not the backup the officers approved (its "
                                    "SHA-256 differs from the request's backupDigest)")
            if len(shares) > MAX_SHARES:
                raise BackupInvalid(f"at most {MAX_SHARES} shares")
            return restore_partition(self._b, backup, list(shares)), {}

        return self._execute(request_id, approvals, perform)

    def _execute(self, request_id: str, approvals: Sequence[Approval],
                 perform: Callable[[OfficerRequest], tuple[dict[str, Any], dict[str, Any]]],
                 ) -> OfficerOutcome:
        event: dict[str, Any] = {"op": "officer.execute", "requestId": str(request_id)[:64]}
        b = self._b

        def run() -> OfficerOutcome:
            req = self._get(request_id)
            event.update(op=OPS[req.action], action=req.action.value,
                         argumentsDigest=arguments_digest(req.action, req.arguments))
            event["officers"] = sorted(self._verified(req, approvals))
            summary, secret = perform(req)
            if req.action is not OfficerAction.RESTORE:  # a restore replaced the records
                self._put(req.executed(summary))
            event["summary"] = summary
            return OfficerOutcome(req.id, req.action, summary, secret)

        with b.locked():
            return b.audited(event, run)

    def _verified(self, req: OfficerRequest, approvals: Sequence[Approval]) -> set[str]:
        """The fingerprints of the distinct officers whose signatures verify, if they
        meet the quorum now; otherwise the refusal that says why."""
        b = self._b
        if not req.is_open:
            raise RequestClosed(f"officer request {req.id} is already {req.status}"
                                + (f": {req.reason}" if req.reason else ""))
        if req.epoch != b.store.counter_value.epoch:
            raise RequestClosed(f"officer request {req.id} was issued in epoch {req.epoch}, "
                                "before a restore from backup: void")
        now = b.clock.now()
        if now > req.expires_at:
            raise RequestExpired(f"officer request {req.id} expired {now - req.expires_at:.0f}s "
                                 "ago: begin a new one and sign its challenge")
        officers = b.officer_set()
        policy = officers.policy
        if policy.digest != req.officers_digest:
            raise RequestClosed("the officer set changed since this request was made")
        if not isinstance(approvals, list | tuple) or len(approvals) > MAX_OFFICER_APPROVALS:
            raise InvalidInput(f"at most {MAX_OFFICER_APPROVALS} officer signatures")
        members = {a.fingerprint for t in policy.rules[0][1].tokens for g in t.groups
                   for a in g.approvers}
        seen: dict[str, str] = {}
        for approval in approvals:
            cred = self._officer(approval, members)
            if cred.identity in seen:
                raise DuplicateApprover(f"officer {cred.fingerprint[:16]} signed twice: a "
                                        "quorum counts distinct officers")
            if not _verifies(cred, req.challenge, approval):
                raise ApprovalRefused(f"officer {cred.fingerprint[:16]}: the signature does "
                                      "not verify over this request's challenge")
            seen[cred.identity] = cred.fingerprint
        fingerprints = frozenset(seen.values())
        ev = evaluate(policy, Action.USE, None, fingerprints, req.created_at, now)
        if not ev.released:
            raise PolicyNotMet(f"the officers' quorum ({officers.threshold} of "
                               f"{len(officers.officers)}) is not met: {len(fingerprints)} "
                               "valid signature(s)", ev.missing())
        return set(fingerprints)

    @staticmethod
    def _officer(approval: Approval, members: set[str]) -> Credential:
        if not isinstance(approval, Approval):
            raise InvalidInput("officer signatures must be Approvals")
        try:
            cred = parse_credential(approval.credential_type, approval.credential)
        except CredentialInvalid as exc:
            raise ApprovalRefused(f"officer credential: {exc.reason}") from None
        if cred.fingerprint not in members:
            raise ApprovalRefused(f"{cred.fingerprint[:16]} is not an officer of this "
                                  "partition")
        return cred

    # -- what each action does ----------------------------------------------------------

    def _perform(self, req: OfficerRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(summary, secret)`` of an authorised request, done in its transaction."""
        steps: dict[OfficerAction, Callable[[OfficerRequest], _Done]] = {
            OfficerAction.INVALIDATE_KEY: lambda r: _key(self._keyring.invalidate, r),
            OfficerAction.RESTORE_KEY: lambda r: _key(self._keyring.restore, r),
            OfficerAction.DESTROY_KEY: lambda r: _key(self._keyring.destroy, r),
            OfficerAction.EXPORT_KEY: self._export,
            OfficerAction.SET_PARTITION: self._settings,
            OfficerAction.SET_OFFICERS: self._officers,
            OfficerAction.LIFT_FREEZE: self._unfreeze,
            OfficerAction.BACKUP: self._backup,
        }
        return steps[req.action](req)

    def _export(self, req: OfficerRequest) -> _Done:
        secret = self._keyring.export_secret_unsafe(req.arguments["label"])
        return {"label": req.arguments["label"]}, {"privateKey": secret.hex()}

    def _settings(self, req: OfficerRequest) -> _Done:
        self._b.save_partition({**self._b.partition, **req.arguments})
        return dict(req.arguments), {}

    def _officers(self, req: OfficerRequest) -> _Done:
        new = OfficerSet(tuple(dict(o) for o in req.arguments["officers"]),
                         req.arguments["threshold"])
        self._b.save_partition({**self._b.partition, "officers": new.to_json()})
        return {"officers": len(new.officers), "threshold": new.threshold,
                "officersDigest": new.policy.digest}, {}

    def _unfreeze(self, req: OfficerRequest) -> _Done:
        self._b.save_partition({**self._b.partition, "autoFrozenUntil": 0.0})
        return {"autoFrozenUntil": 0.0}, {}

    def _backup(self, req: OfficerRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        b = self._b
        self._put(req.executed({}))  # the backup holds this request as done, not open
        made = make_backup(snapshot(b.store), {"hsmId": b.hsm_id, "createdAt": b.clock.now()},
                           req.arguments["threshold"], req.arguments["shares"])
        summary = {"backupDigest": hashlib.sha256(made.data).hexdigest(),
                   "threshold": req.arguments["threshold"], "shares": req.arguments["shares"],
                   "counter": b.store.counter_value.count}
        return summary, {"backup": made.data.hex(), "mnemonics": list(made.mnemonics)}

    # -- single-officer demo mode -------------------------------------------------------

    def as_demo_officer(self, passphrase: str, action: OfficerAction,
                        arguments: dict[str, Any]) -> OfficerOutcome:
        """An officer request begun, signed with the officer key derived from the SO
        passphrase, and executed (single-officer demo mode: see :mod:`.officers`). A
        wrong passphrase, or a partition whose officers act by quorum, is refused as
        ``AuthenticationFailed`` (audited)."""
        b = self._b
        with b.locked():
            key = b.audited({"op": "officer.passphrase", "action": action.value},
                            lambda: self._demo_key(passphrase))
            challenge = self.officer_begin(action, arguments)
            approval = Approval("public_key", public_key_b64(key), key.sign(challenge.envelope))
            return self.officer_execute(challenge.request_id, [approval])

    def _demo_key(self, passphrase: str) -> Any:
        b = self._b
        if not isinstance(passphrase, str):
            raise AuthenticationFailed("security officer authentication failed")
        salt = bytes.fromhex(b.partition["soSalt"])
        if "officers" not in b.partition and b.check_legacy_so(passphrase):
            # a store from before officers: its passphrase becomes its one officer
            b.save_partition({**b.partition, "officers": demo_officers(passphrase, salt)
                              .to_json()})
        officers = b.officer_set()
        key = demo_officer_key(passphrase, salt)
        entry = public_key_b64(key)
        if not any(o["value"] == entry for o in officers.officers):
            raise AuthenticationFailed("security officer authentication failed")
        if officers.threshold > 1:
            raise AuthenticationFailed(
                f"this partition's officers act by quorum ({officers.threshold} of "
                f"{len(officers.officers)}): a passphrase alone cannot; use officer_begin "
                "and officer_execute")
        return key


def _key(step: Callable[[str], KeyInfo], req: OfficerRequest) -> _Done:
    return {"key": step(req.arguments["label"]).to_json()}, {}


def _verifies(cred: Credential, challenge: bytes, approval: Approval) -> bool:
    try:
        return verify(cred, challenge, approval.signature, approval.digest)
    except InvalidInput as exc:
        raise ApprovalRefused(f"officer signature: {exc.reason}") from None
