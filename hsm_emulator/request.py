"""A request as the HSM keeps it: what was asked, under which policy, and what became of it.

One shape for the approval flow's requests (:meth:`Hsm.begin`) and for auto-signed ones
kept under a caller's id (:meth:`Hsm.sign_now` with ``request_id``), since the same calls
read both. Frozen: a state change is a new record (:meth:`HsmRequest.executed`,
:meth:`HsmRequest.cancelled`) written in the transaction that makes it. ``to_json`` and
``from_json`` are symmetric and keep the stored document's field names, so stores
written before this type existed read unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .model import Action, Intent, SignScheme
from .results import Execution


class RequestStatus(StrEnum):
    OPEN = "open"
    EXECUTED = "executed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class HsmRequest:
    id: str
    label: str
    action: Action
    payload_type: str
    payload: bytes  #: for ``modify``: the canonical JSON of the new policy
    scheme: SignScheme | None  #: for UNSPECIFIED payloads; chain payloads sign as they must
    intent: Intent | None  #: as decoded at request time: what approvals bind to
    fee_cap: int | None  #: the most a rebuilt payload may pay
    created_at: float  #: the HSM's time of the request: holds and timeouts count from it
    status: RequestStatus
    initiator: str  #: the broker's claim, or ``key:<identity>`` when proven
    policy_digest: str  #: the key's policy when asked: a changed policy closes the request
    challenge: bytes  #: the HSM-signed envelope approvers sign (empty when auto-signed)
    initiator_proven: bool = False
    initiator_name: str = ""
    executed_at: float | None = None
    result: Execution | None = None
    reason: str = ""  #: why it was cancelled, as the caller of ``cancel`` gave it
    #: the counter's epoch when asked: a request of an earlier epoch (before a restore from
    #: backup) is void (0: before any restore, and every request stored before epochs)
    epoch: int = 0

    @property
    def is_open(self) -> bool:
        return self.status is RequestStatus.OPEN

    def executed(self, result: Execution) -> HsmRequest:
        return replace(self, status=RequestStatus.EXECUTED, executed_at=result.executed_at,
                       result=result)

    def cancelled(self, reason: str = "") -> HsmRequest:
        return replace(self, status=RequestStatus.CANCELLED, reason=reason)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id, "label": self.label, "action": self.action.value,
            "payloadType": self.payload_type, "payload": self.payload.hex(),
            "scheme": None if self.scheme is None else self.scheme.value,
            "intent": None if self.intent is None else self.intent.to_json(),
            "feeCap": None if self.fee_cap is None else str(self.fee_cap),
            "createdAt": self.created_at, "status": self.status.value,
            "initiator": self.initiator, "policyDigest": self.policy_digest,
            "challenge": self.challenge.hex()}
        if self.initiator_proven:
            doc.update(initiatorProven=True, initiatorName=self.initiator_name)
        if self.reason:
            doc["reason"] = self.reason
        if self.epoch:
            doc["epoch"] = self.epoch
        if self.result is not None:
            doc.update(executedAt=self.executed_at, result=self.result.to_json())
        return doc

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HsmRequest:
        result = d.get("result")
        return cls(
            id=d["id"], label=d["label"], action=Action(d["action"]),
            payload_type=d["payloadType"], payload=bytes.fromhex(d["payload"]),
            scheme=None if d["scheme"] is None else SignScheme(d["scheme"]),
            intent=None if d["intent"] is None else Intent.from_json(d["intent"]),
            fee_cap=None if d["feeCap"] is None else int(d["feeCap"]),
            created_at=d["createdAt"], status=RequestStatus(d["status"]),
            initiator=d["initiator"], policy_digest=d["policyDigest"],
            challenge=bytes.fromhex(d["challenge"]),
            initiator_proven=bool(d.get("initiatorProven", False)),
            initiator_name=d.get("initiatorName") or "",
            executed_at=d.get("executedAt"), reason=d.get("reason") or "",
            epoch=int(d.get("epoch", 0)),
            result=None if result is None else Execution.from_json(result))
