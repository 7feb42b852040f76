"""What the HSM returns across the ``HsmClient`` boundary. Immutable, JSON-serialisable.

None of these ever carries private key material.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from .evaluate import Evaluation, GroupStatus, TokenStatus
from .model import Action, Intent, KeyAlgorithm, KeyAttributes

#: ``base64.b64decode`` of a ``str`` without its wrapper (one call per signature of a
#: remote batch): the same lenient decoding, a ValueError for non-ASCII text.
_unb64 = binascii.a2b_base64


def _b64(data: bytes) -> str:
    """``base64.b64encode(data).decode()``, without the wrapper."""
    return binascii.b2a_base64(data, newline=False).decode()


@dataclass(frozen=True)
class KeyInfo:
    label: str
    algorithm: KeyAlgorithm
    public_key: bytes  #: compressed secp256k1 / raw Ed25519 / SPKI DER
    public_key_spki: bytes
    attributes: KeyAttributes
    policy: dict[str, Any]  #: the effective policy document, keyStatus included
    policy_digest: str
    blocked: bool
    invalidated: bool
    parent: str | None
    path: str
    created_at: float
    key_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "algorithm": self.algorithm.value,
            "publicKey": _b64(self.public_key), "publicKeySpki": _b64(self.public_key_spki),
            "attributes": self.attributes.to_json(), "policy": self.policy,
            "policyDigest": self.policy_digest, "blocked": self.blocked,
            "invalidated": self.invalidated, "parent": self.parent, "path": self.path,
            "createdAt": self.created_at, "keySize": self.key_size,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyInfo:
        return cls(
            d["label"], KeyAlgorithm(d["algorithm"]), base64.b64decode(d["publicKey"]),
            base64.b64decode(d["publicKeySpki"]), KeyAttributes.from_json(d["attributes"]),
            d["policy"], d["policyDigest"], d["blocked"], d["invalidated"], d["parent"],
            d["path"], d["createdAt"], d.get("keySize"),
        )


@dataclass(frozen=True)
class Execution:
    """A released request: the signatures (for USE) and who released it."""

    request_id: str
    label: str
    action: Action
    signatures: tuple[bytes, ...]
    token: str | None  #: the token that released it (None when the action is open)
    approved_by: tuple[str, ...]  #: approver SPKI, base64, as seed 003's ``approvedBy``
    executed_at: float
    intent: Intent | None

    def to_json(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id, "label": self.label, "action": self.action.value,
            "signatures": [_b64(s) for s in self.signatures], "token": self.token,
            "approvedBy": list(self.approved_by), "executedAt": self.executed_at,
            "intent": None if self.intent is None else self.intent.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Execution:
        return cls(
            d["requestId"], d["label"], Action(d["action"]),
            tuple([_unb64(s) for s in d["signatures"]]), d["token"],
            tuple(d["approvedBy"]), d["executedAt"],
            None if d["intent"] is None else Intent.from_json(d["intent"]),
        )


@dataclass(frozen=True)
class ApprovalOutcome:
    """What :meth:`~hsm_emulator.client.HsmSigning.approve` did with one approval: it
    verified it (``approver``: its SPKI, base64, as ``check_approval`` returns) and, if
    with it the policy was met, executed the request in the same transaction
    (``execution``; None: the approval was only checked, the request stays open)."""

    request_id: str
    approver: str
    execution: Execution | None

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "approver": self.approver,
                "execution": None if self.execution is None else self.execution.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApprovalOutcome:
        execution = d["execution"]
        return cls(d["requestId"], d["approver"],
                   None if execution is None else Execution.from_json(execution))


@dataclass(frozen=True)
class Attestation:
    """The HSM identity's signed statement about one key; verify with
    :func:`hsm_emulator.attestation.verify_attestation`."""

    statement: bytes  #: canonical JSON
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"statement": self.statement.decode(), "signature": _b64(self.signature)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attestation:
        return cls(d["statement"].encode(), base64.b64decode(d["signature"]))


def evaluation_to_json(ev: Evaluation) -> dict[str, Any]:
    return {
        "action": ev.action.value, "releasedBy": ev.released_by, "openAction": ev.open_action,
        "noRule": ev.no_rule, "released": ev.released, "attainable": ev.attainable,
        "missing": list(ev.missing()),
        "tokens": [
            {"name": t.name, "conditionFailures": list(t.condition_failures),
             "holdRemaining": t.hold_remaining, "expired": t.expired,
             "satisfied": t.satisfied,
             "groups": [{"name": g.name, "quorum": g.quorum, "approved": list(g.approved),
                         "waiting": list(g.waiting), "rejected": list(g.rejected)}
                        for g in t.groups]}
            for t in ev.tokens
        ],
    }


def evaluation_from_json(d: dict[str, Any]) -> Evaluation:
    tokens = tuple(
        TokenStatus(
            t["name"], tuple(t["conditionFailures"]),
            tuple(GroupStatus(g["name"], g["quorum"], tuple(g["approved"]), tuple(g["waiting"]),
                              tuple(g["rejected"])) for g in t["groups"]),
            t["holdRemaining"], t["expired"],
        )
        for t in d["tokens"]
    )
    return Evaluation(Action(d["action"]), d["releasedBy"], tokens, d["openAction"], d["noRule"])
