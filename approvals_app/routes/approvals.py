"""Approver endpoints: list tasks by a signed timestamp, approve, reject (seed 003)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from approvals_app.schemas import ApprovalBody, TaskFilter
from custody.broker import Task
from hsm_emulator.errors import ApprovalRefused

router = APIRouter(prefix="/v1", tags=["approvals"])


def task_json(task: Task, level: str) -> dict[str, Any]:
    r = task.request
    out: dict[str, Any] = {"detailLevel": level, "id": r.id,
                           "approvalToBeSigned": r.challenge_b64}
    if level in ("level2", "level3"):
        out.update(keyLabel=r.key_label, action=r.action, payloadType=r.payload_type,
                   intent=r.intent, status=r.status)
    if level == "level3":
        out.update(payload=r.payload_b64, metaData=r.meta_data, initiator=r.initiator)
    return out


@router.post("/filteredSignApprovalTask")
def tasks(body: TaskFilter, request: Request) -> dict[str, Any]:
    broker = request.app.state.broker
    cred = broker.approvers.authenticate_approver(body.approverCertificate, body.timestamp,
                                        body.timestampSignature, body.timestampDigestAlgorithm)
    found = broker.approvers.tasks(cred, body.paging.pageNumber, body.paging.pageSize,
                         body.paging.sortOrder == "CREATION_DATE_DESC")
    return {"tasks": [task_json(t, body.detailLevel) for t in found]}


@router.post("/approval")
def approve(body: ApprovalBody, request: Request) -> dict[str, Any]:
    row = request.app.state.broker.approvers.approve(body.id, body.approverCertificate,
                                           body.signature_bytes(), body.approvalDigestAlgorithm,
                                           body.approvalToBeSigned)
    return {"id": row.id, "status": row.status}


@router.post("/rejection")
def reject(body: ApprovalBody, request: Request) -> dict[str, Any]:
    """Like ``/v1/approval``, the signature over ``ska-reject-v1:`` + the challenge bytes."""
    broker = request.app.state.broker
    row = broker.get(body.id)
    if body.approvalToBeSigned != row.challenge_b64:
        raise ApprovalRefused("approvalToBeSigned does not match this task's challenge")
    row = broker.approvers.reject(body.id, body.approverCertificate, body.signature_bytes(),
                        body.approvalDigestAlgorithm)
    return {"id": row.id, "status": row.status}
