"""``/v1/request/{id}``: status, approvers, the signature; cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter

from approvals_app.auth import Role
from approvals_app.deps import BrokerDep, RequireRole
from approvals_app.responses import RequestPublic
from custody.broker import Broker, Principal
from custody.db import SignRequest

router = APIRouter(prefix="/v1", tags=["requests"])
Reader = Annotated[Principal, RequireRole(Role.BUSINESS, Role.KEY_ADMIN, Role.AUDITOR)]
Canceller = Annotated[Principal, RequireRole(Role.BUSINESS, Role.KEY_ADMIN)]


def request_json(broker: Broker, row: SignRequest) -> dict[str, Any]:
    records = broker.approvals(row.id)
    approved = [r.approver_key_b64 for r in records if not r.rejected]
    rejected = [r.approver_key_b64 for r in records if r.rejected]
    members = broker.rules.members_of(row.key_label, row.action) if row.status in (
        "PENDING", "APPROVED") else []
    signatures = row.result or []
    return {
        "id": row.id, "status": row.status,
        "executionTime": row.execution_time.isoformat() if row.execution_time else None,
        "approvedBy": row.approved_by if row.approved_by is not None else approved,
        "notYetApprovedBy": [m for m in members if m not in approved and m not in rejected],
        "rejectedBy": rejected, "result": signatures[0] if signatures else None,
        "signatures": signatures, "keyLabel": row.key_label, "action": row.action,
        "payloadType": row.payload_type, "intent": row.intent, "metaData": row.meta_data,
        "error": row.error,
    }


@router.get("/request/{request_id}", response_model=RequestPublic)
def get_request(request_id: str, broker: BrokerDep, who: Reader) -> dict[str, Any]:
    return request_json(broker, broker.get(request_id, who.tenant))


@router.delete("/request/{request_id}", response_model=RequestPublic)
def cancel_request(request_id: str, broker: BrokerDep, who: Canceller) -> dict[str, Any]:
    return request_json(broker, broker.cancel(who, request_id))
