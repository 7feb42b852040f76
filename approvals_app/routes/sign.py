"""``/v1/sign`` and block / unblock / modify: requests that need approvals.

Each takes an optional ``initiation`` (keys whose policy names ``initiators``): the desk's
signature over :func:`hsm_emulator.initiation.initiation_message`, which the HSM verifies
and takes the initiator from. Its ``requestId`` becomes the request's id and is its
idempotency ticket - a retry with the same initiation answers the first request - so an
``Idempotency-Key`` header with it is refused (400): one request, one ticket.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from approvals_app.auth import CurrentPrincipal, require
from approvals_app.schemas import KeyActionBody, SignBody
from custody.autosign import AutoSigner
from custody.broker import Call, Principal
from custody.errors import BadRequest
from custody.idempotency import run_once
from hsm_emulator.model import Action

#: ``Idempotency-Key`` header: a retried creating call returns the first result.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]

router = APIRouter(prefix="/v1", tags=["sign"])


@router.post("/sign", status_code=201)
async def sign(body: SignBody, request: Request, who: CurrentPrincipal,
               idempotency_key: IdempotencyKey = None) -> JSONResponse:
    require(who, "business")
    r = body.signRequest
    meta = r.metaData if isinstance(r.metaData, dict) else (
        None if r.metaData is None else {"value": r.metaData})
    algorithm = r.signatureAlgorithm if r.payloadType == "UNSPECIFIED" else None
    broker = request.app.state.broker
    autosigner: AutoSigner = request.app.state.autosigner
    call = Call(who, r.signKeyName, Action.USE, r.payload_bytes(), r.payloadType, algorithm,
                meta)
    if body.initiation is not None:  # signed one by one: a batch carries no initiations
        initiation = body.initiation
        _no_second_ticket(idempotency_key)
        row = await run_in_threadpool(
            broker.submit, who, call.label, Action.USE, call.payload, call.payload_type,
            algorithm, meta, request_id=initiation.requestId, initiation=initiation.approval())
        return JSONResponse({"signRequestId": row.id}, status_code=201)
    if idempotency_key is None and autosigner.accepts(call.label):
        # a key that signs at once: batched with its neighbours (custody/autosign.py)
        request_id = await asyncio.wrap_future(autosigner.submit(call))
        return JSONResponse({"signRequestId": request_id}, status_code=201)

    def work(ticket: str | None) -> tuple[int, dict[str, Any]]:
        row = broker.submit(who, call.label, Action.USE, call.payload, call.payload_type,
                            algorithm, meta, request_id=ticket)
        return 201, {"signRequestId": row.id}

    status, response = await run_in_threadpool(
        run_once, broker.sessions, f"{who.tenant}/{who.subject}", idempotency_key,
        body.model_dump(exclude={"initiation"}), work)
    return JSONResponse(response, status_code=status)


def _no_second_ticket(idempotency_key: str | None) -> None:
    if idempotency_key is not None:
        raise BadRequest("an initiated request is its own idempotency ticket (the "
                         "initiation's requestId: a retry with it answers the first "
                         "request); send no Idempotency-Key with an initiation")


def _key_action(request: Request, who: Principal, body: KeyActionBody, action: Action,
                key: str | None) -> JSONResponse:
    require(who, "key_admin")
    if (body.policy is None) == (action is Action.MODIFY):
        raise BadRequest("a policy goes with modify, and only with modify")
    broker = request.app.state.broker
    if body.initiation is not None:
        _no_second_ticket(key)
        row = broker.submit(who, body.label, action, b"", "UNSPECIFIED", None, None,
                            new_policy=body.policy, request_id=body.initiation.requestId,
                            initiation=body.initiation.approval())
        return JSONResponse({"requestId": row.id, "status": row.status}, status_code=201)

    def work(ticket: str | None) -> tuple[int, dict[str, Any]]:
        row = broker.submit(who, body.label, action, b"", "UNSPECIFIED", None, None,
                            new_policy=body.policy, request_id=ticket)
        return 201, {"requestId": row.id, "status": row.status}

    status, response = run_once(broker.sessions, f"{who.tenant}/{who.subject}", key,
                                {"action": action.value,
                                 **body.model_dump(exclude={"initiation"})}, work)
    return JSONResponse(response, status_code=status)


@router.post("/block", status_code=201)
def block(body: KeyActionBody, request: Request, who: CurrentPrincipal,
          idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _key_action(request, who, body, Action.BLOCK, idempotency_key)


@router.post("/unblock", status_code=201)
def unblock(body: KeyActionBody, request: Request, who: CurrentPrincipal,
            idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _key_action(request, who, body, Action.UNBLOCK, idempotency_key)


@router.post("/modify", status_code=201)
def modify(body: KeyActionBody, request: Request, who: CurrentPrincipal,
           idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _key_action(request, who, body, Action.MODIFY, idempotency_key)
