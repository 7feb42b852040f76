"""``/v1/sign`` and block / unblock / modify: requests that need approvals."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from approvals_app.auth import CurrentPrincipal, require
from approvals_app.schemas import KeyActionBody, SignBody
from custody.errors import BadRequest
from hsm_emulator.model import Action

router = APIRouter(prefix="/v1", tags=["sign"])


@router.post("/sign", status_code=201)
def sign(body: SignBody, request: Request, who: CurrentPrincipal) -> dict[str, str]:
    require(who, "business")
    r = body.signRequest
    meta = r.metaData if isinstance(r.metaData, dict) else (
        None if r.metaData is None else {"value": r.metaData})
    algorithm = r.signatureAlgorithm if r.payloadType == "UNSPECIFIED" else None
    row = request.app.state.broker.submit(who, r.signKeyName, Action.USE, r.payload_bytes(),
                                          r.payloadType, algorithm, meta)
    return {"signRequestId": row.id}


def _key_action(request: Request, who: Any, body: KeyActionBody, action: Action) -> dict[str, str]:
    require(who, "key_admin")
    if (body.policy is None) == (action is Action.MODIFY):
        raise BadRequest("a policy goes with modify, and only with modify")
    row = request.app.state.broker.submit(who, body.label, action, b"", "UNSPECIFIED", None,
                                          None, new_policy=body.policy)
    return {"requestId": row.id, "status": row.status}


@router.post("/block", status_code=201)
def block(body: KeyActionBody, request: Request, who: CurrentPrincipal) -> dict[str, str]:
    return _key_action(request, who, body, Action.BLOCK)


@router.post("/unblock", status_code=201)
def unblock(body: KeyActionBody, request: Request, who: CurrentPrincipal) -> dict[str, str]:
    return _key_action(request, who, body, Action.UNBLOCK)


@router.post("/modify", status_code=201)
def modify(body: KeyActionBody, request: Request, who: CurrentPrincipal) -> dict[str, str]:
    return _key_action(request, who, body, Action.MODIFY)
