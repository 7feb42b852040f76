"""The partition's security officers: who they are, how many must agree, what they sign.

Seed 001: a Partition Security Officer role "activated by one or two-out-of-m persons";
backups "following the six-eyes principle". Officers are registered public keys of the
credential types the HSM already verifies for key approvals (:mod:`.credentials`). The
officer set is kept as a **pseudo-policy**: one ``ruleUse`` token whose one group is the
officers with quorum M and whose timeout is the challenge's lifetime, so the policy
parser (one key is one officer, credentials checked) and :func:`~.evaluate.evaluate`
(distinct approvers, quorum, timeout) decide an officer request exactly as a key's policy
decides a key request - there is no second copy of that logic.

An officer action is a request (:class:`OfficerRequest`): the HSM issues a challenge
signed by its identity (:func:`~.challenge.seal_challenge`) binding the action, its exact
arguments and their digest, a fresh request id, the epoch and an expiry; it executes once,
with M valid signatures of distinct officers over those bytes.

**Single-officer demo mode.** A partition initialised with a security officer
*passphrase* (and no officer keys) has one officer: an Ed25519 key derived from that
passphrase (:func:`demo_officer_key`), quorum 1. The passphrase calls
(``restore_key(label, so_passphrase)`` ...) derive it, sign the challenge inside the HSM
and execute - the same request path, audited the same way. It is for the demo and the
tests: the passphrase reaches the HSM, so it is one factor, one person.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .canonical import canonical_json
from .errors import InvalidInput, PolicyInvalid
from .policy import Policy, parse_policy
from .records import LABEL_RE

#: Seconds an officer challenge stays valid: a ceremony gathers its signatures in that time.
OFFICER_TTL = 3600
#: Most officers a partition registers (the policy parser's group limit is 64).
MAX_OFFICERS = 16
#: Most shares a backup key is split into (SLIP-39 allows 16 per group).
MAX_SHARES = 16


class OfficerAction(StrEnum):
    """What officers may do, by quorum."""

    INVALIDATE_KEY = "invalidate_key"  #: take a key out of service (recoverably)
    RESTORE_KEY = "restore_key"  #: bring an invalidated key back
    DESTROY_KEY = "destroy_key"  #: destroy an invalidated key's material
    EXPORT_KEY = "export_key"  #: DANGEROUS: hand out a key's secret (where allowed)
    SET_PARTITION = "set_partition"  #: partition settings (export, restore freeze)
    SET_OFFICERS = "set_officers"  #: replace the officer set and its threshold
    BACKUP = "backup"  #: an encrypted backup, its key split into SLIP-39 shares
    RESTORE = "restore"  #: restore a backup into this (empty) HSM
    LIFT_FREEZE = "lift_freeze"  #: end the auto tier's freeze after a restore early


_LABELLED = {OfficerAction.INVALIDATE_KEY, OfficerAction.RESTORE_KEY,
             OfficerAction.DESTROY_KEY, OfficerAction.EXPORT_KEY}


def check_arguments(action: OfficerAction, args: Any) -> dict[str, Any]:
    """The arguments of ``action``, checked (unknown names refused): exactly what the
    challenge binds and the execution uses."""
    if not isinstance(args, dict):
        raise InvalidInput("arguments: must be an object")
    if action in _LABELLED:
        out = _only(args, {"label": str}, required={"label"})
        if not LABEL_RE.match(out["label"]):
            raise InvalidInput("label: 1-128 characters of A-Z a-z 0-9 _ . : @ + - /")
        return out
    if action is OfficerAction.SET_PARTITION:
        out = _only(args, {"allowExport": bool, "restoreFreezeSeconds": int})
        if not out:
            raise InvalidInput("set_partition: name allowExport and/or restoreFreezeSeconds")
        if not 0 <= out.get("restoreFreezeSeconds", 0) <= 365 * 86400:
            raise InvalidInput("restoreFreezeSeconds: 0 to one year")
        return out
    if action is OfficerAction.SET_OFFICERS:
        out = _only(args, {"officers": list, "threshold": int},
                    required={"officers", "threshold"})
        officer_policy(out["officers"], out["threshold"])  # refused here, before a challenge
        return out
    if action is OfficerAction.BACKUP:
        out = _only(args, {"shares": int, "threshold": int}, required={"shares", "threshold"})
        if not 1 <= out["threshold"] <= out["shares"] <= MAX_SHARES:
            raise InvalidInput(f"backup: 1 <= threshold <= shares <= {MAX_SHARES}")
        return out
    if action is OfficerAction.RESTORE:
        out = _only(args, {"backupDigest": str}, required={"backupDigest"})
        digest = out["backupDigest"]
        if len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise InvalidInput("backupDigest: the backup file's SHA-256, 64 lowercase hex")
        return out
    return _only(args, {})


def _only(args: dict[str, Any], types: dict[str, type],
          required: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    unknown = set(args) - set(types)
    if unknown:
        raise InvalidInput(f"unknown argument(s) {sorted(str(u)[:64] for u in unknown)[:5]}")
    for name in required:
        if name not in args:
            raise InvalidInput(f"{name}: missing")
    for name, value in args.items():
        kind = types[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidInput(f"{name}: must be a {kind.__name__}")
    return dict(args)


def parse_action(value: OfficerAction | str) -> OfficerAction:
    try:
        return OfficerAction(value)
    except ValueError:
        raise InvalidInput(f"officer action: one of {[a.value for a in OfficerAction]}") \
            from None


def arguments_digest(action: OfficerAction, args: dict[str, Any]) -> str:
    """SHA-256 of the canonical action and arguments: what a ceremony's log names."""
    return hashlib.sha256(canonical_json({"action": action.value, "arguments": args})
                          ).hexdigest()


# -- the officer set ----------------------------------------------------------------------


def officer_policy_doc(officers: list[Any], threshold: int) -> dict[str, Any]:
    """The pseudo-policy of an officer set (see the module docstring)."""
    return {"ruleUse": {"tokens": [{
        "name": "officers", "timeout": OFFICER_TTL,
        "groups": [{"name": "officers", "quorum": threshold, "approvals": officers}]}]}}


def officer_policy(officers: list[Any], threshold: int) -> Policy:
    """The parsed officer set; :class:`InvalidInput` names what is wrong with it."""
    if not isinstance(officers, list) or not 1 <= len(officers) <= MAX_OFFICERS:
        raise InvalidInput(f"officers: a list of 1 to {MAX_OFFICERS} officer credentials")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not (
            1 <= threshold <= len(officers)):
        raise InvalidInput(f"officer threshold: 1 to {len(officers)} (the number of officers)")
    try:
        return parse_policy(officer_policy_doc(officers, threshold))
    except PolicyInvalid as exc:
        where = exc.field.replace("policy.ruleUse.tokens[0].groups[0].approvals", "officers")
        raise InvalidInput(f"{where}: {exc.reason}") from None


@dataclass(frozen=True)
class OfficerSet:
    """The officers of a partition (their credentials as registered) and the threshold."""

    officers: tuple[dict[str, str], ...]
    threshold: int
    demo: bool = False  #: the single officer derived from the SO passphrase

    def to_json(self) -> dict[str, Any]:
        return {"officers": [dict(o) for o in self.officers], "threshold": self.threshold,
                "demo": self.demo}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> OfficerSet:
        return cls(tuple(dict(o) for o in doc["officers"]), int(doc["threshold"]),
                   bool(doc.get("demo", False)))

    @property
    def policy(self) -> Policy:
        return officer_policy(list(self.officers), self.threshold)


def demo_officer_key(passphrase: str, salt: bytes) -> ed25519.Ed25519PrivateKey:
    """The single demo officer's key, derived from the SO passphrase (scrypt, then HKDF
    to a seed with its own purpose), so the passphrase stands for one officer key."""
    stretched = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"ska-demo-officer-v1").derive(stretched)
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def public_key_b64(key: ed25519.Ed25519PrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def demo_officers(passphrase: str, salt: bytes) -> OfficerSet:
    key = demo_officer_key(passphrase, salt)
    entry = {"type": "public_key", "value": public_key_b64(key), "name": "so-passphrase"}
    return OfficerSet((entry,), 1, demo=True)


# -- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OfficerRequest:
    """An officer request as the HSM keeps it (kind ``officer-request``). Its ``summary``
    is what the execution may record: never a secret (export bytes, backup shares)."""

    id: str
    action: OfficerAction
    arguments: dict[str, Any]
    created_at: float
    expires_at: float
    epoch: int  #: the counter's epoch when issued: a restore voids what came before
    officers_digest: str  #: the officer set it was issued under
    challenge: bytes
    status: str = "open"  #: open, executed, cancelled
    summary: dict[str, Any] | None = None
    reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def executed(self, summary: dict[str, Any]) -> OfficerRequest:
        return replace(self, status="executed", summary=summary)

    def cancelled(self, reason: str) -> OfficerRequest:
        return replace(self, status="cancelled", reason=reason)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action.value, "arguments": self.arguments,
                "createdAt": self.created_at, "expiresAt": self.expires_at,
                "epoch": self.epoch, "officersDigest": self.officers_digest,
                "challenge": self.challenge.hex(), "status": self.status,
                "summary": self.summary, "reason": self.reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OfficerRequest:
        return cls(d["id"], OfficerAction(d["action"]), d["arguments"], d["createdAt"],
                   d["expiresAt"], int(d["epoch"]), d["officersDigest"],
                   bytes.fromhex(d["challenge"]), d["status"], d.get("summary"),
                   d.get("reason") or "")


@dataclass(frozen=True)
class OfficerOutcome:
    """What an executed officer request returns: its ``summary`` as recorded, and
    ``secret`` data handed out once and never stored (the exported key's bytes, the
    backup file and its share mnemonics)."""

    request_id: str
    action: OfficerAction
    summary: dict[str, Any]
    secret: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "action": self.action.value,
                "summary": self.summary, "secret": self.secret}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OfficerOutcome:
        return cls(d["requestId"], OfficerAction(d["action"]), dict(d["summary"]),
                   dict(d["secret"]))
