"""Approver endpoints: list tasks by a signed timestamp, approve, reject (seed 003)."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter

from approvals_app.deps import BrokerDep, TreasuryDep
from approvals_app.responses import Decision, GroupMissing, TaskList, TierProgress
from approvals_app.schemas import ApprovalBody, TaskFilter
from approvals_app.services.approvals import reject_shown
from custody.broker import Broker, Task
from custody.db import FINAL, SignRequest
from hsm_emulator.errors import HsmError
from hsm_emulator.flow import Approval

router = APIRouter(prefix="/v1", tags=["approvals"])


def task_json(task: Task, level: str, earlier: list[dict[str, object]]) -> dict[str, Any]:
    """A task at TSB's detail level; from level 2 on, beside TSB's fields, the transfer's
    earlier attempts when it is being signed again (the broker's record: its earlier
    transactions expired unlanded), so an approver is not shown the same transfer twice
    without a word."""
    r = task.request
    out: dict[str, Any] = {"detailLevel": level, "id": r.id,
                           "approvalToBeSigned": r.challenge_b64}
    if level in ("level2", "level3"):
        out.update(keyLabel=r.key_label, action=r.action, payloadType=r.payload_type,
                   intent=r.intent, status=r.status)
        if earlier:
            out["earlierAttempts"] = earlier_attempts(earlier)
    if level == "level3":
        out.update(payload=r.payload_b64, metaData=r.meta_data, initiator=r.initiator)
    return out


@router.post("/filteredSignApprovalTask", response_model=TaskList,
             response_model_exclude_unset=True)
def tasks(body: TaskFilter, broker: BrokerDep, treasury: TreasuryDep) -> dict[str, Any]:
    cred = broker.approvers.authenticate_approver(body.approverCertificate, body.timestamp,
                                        body.timestampSignature, body.timestampDigestAlgorithm)
    found = broker.approvers.tasks(cred, body.paging.pageNumber, body.paging.pageSize,
                         body.paging.sortOrder == "CREATION_DATE_DESC")
    # the HSM's head after the listing: approvers' witnesses refuse one that goes back
    again = treasury.ledger.earlier_attempts([t.request.id for t in found])
    return {"tasks": [task_json(t, body.detailLevel, again.get(t.request.id, []))
                      for t in found],
            "auditHead": broker.hsm.audit_head().to_json()}


@router.post("/approval")
def approve(body: ApprovalBody, broker: BrokerDep) -> Decision:
    row = broker.approvers.approve(body.id, body.approverCertificate, body.signature_bytes(),
                         body.approvalDigestAlgorithm, body.approvalToBeSigned)
    return Decision(id=row.id, status=row.status, tiers=tier_progress(broker, row))


def earlier_attempts(earlier: list[dict[str, object]]) -> list[dict[str, str]]:
    """``{txid, reason}`` of each earlier attempt of a transfer signed again, as an
    approver is shown them (the reason bounded)."""
    return [{"txid": str(a.get("txid")), "reason": str(a.get("reason"))[:300]}
            for a in earlier]


def tier_progress(broker: Broker, r: SignRequest) -> list[TierProgress]:
    """Per tier that can still release an open request: what each group lacks, and its
    hold - so an approver learns what their answer left to do."""
    if r.status in FINAL:
        return []
    records = broker.approvals(r.id)
    approvals = [Approval(a.credential_type, a.credential, base64.b64decode(a.signature_b64),
                          a.digest) for a in records if not a.rejected]
    try:
        ev = broker.hsm.request_status(r.id, approvals,
                                       [a.approver for a in records if a.rejected])
        policy = broker.hsm.get_key(r.key_label).policy
    except HsmError:
        return []
    rule = policy.get({"use": "ruleUse", "block": "ruleBlock", "unblock": "ruleUnblock",
                       "modify": "ruleModify"}.get(r.action, ""), {}) or {}
    holds = {t.get("name"): int(t.get("timelock", 0)) for t in rule.get("tokens", [])}
    return [TierProgress(name=t.name, hold=holds.get(t.name, 0),
                         holdRemaining=t.hold_remaining,
                         groups=[GroupMissing(name=g.name, quorum=g.quorum, missing=g.missing)
                                 for g in t.groups])
            for t in ev.tokens if t.attainable]


@router.post("/rejection")
def reject(body: ApprovalBody, broker: BrokerDep) -> Decision:
    """Like ``/v1/approval``, the signature over ``ska-reject-v1:`` + the challenge bytes."""
    row = reject_shown(broker, body.id, body.approvalToBeSigned, body.approverCertificate,
                       body.signature_bytes(), body.approvalDigestAlgorithm)
    return Decision(id=row.id, status=row.status, tiers=tier_progress(broker, row))
