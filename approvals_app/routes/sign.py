"""``/v1/sign`` and block / unblock / modify: requests that need approvals.

Each takes an optional ``initiation`` (keys whose policy names ``initiators``): the desk's
signature over :func:`hsm_emulator.initiation.initiation_message`, which the HSM verifies
and takes the initiator from. Its ``requestId`` becomes the request's id and is its
idempotency ticket - a retry with the same initiation answers the first request - so an
``Idempotency-Key`` header with it is refused (400): one request, one ticket. How a
request is submitted is :mod:`approvals_app.services.signing`'s.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from approvals_app.deps import AutoSignerDep, BrokerDep, Business, IdempotencyKey, KeyAdmin
from approvals_app.responses import RequestCreated, SignCreated
from approvals_app.schemas import InitiationBody, KeyActionBody, SignBody
from approvals_app.services.signing import submit_key_action, submit_sign
from custody.broker import Broker, Call, Principal
from hsm_emulator.flow import Approval
from hsm_emulator.model import Action

router = APIRouter(prefix="/v1", tags=["sign"])


def _initiation(body: InitiationBody | None) -> tuple[str, Approval] | None:
    return None if body is None else (body.requestId, body.approval())


@router.post("/sign", status_code=201, response_model=SignCreated)
async def sign(body: SignBody, broker: BrokerDep, autosigner: AutoSignerDep, who: Business,
               idempotency_key: IdempotencyKey = None) -> JSONResponse:
    r = body.signRequest
    meta = r.metaData if isinstance(r.metaData, dict) else (
        None if r.metaData is None else {"value": r.metaData})
    algorithm = r.signatureAlgorithm if r.payloadType == "UNSPECIFIED" else None
    call = Call(who, r.signKeyName, Action.USE, r.payload_bytes(), r.payloadType, algorithm,
                meta)
    status, response = await submit_sign(
        broker, autosigner, call, _initiation(body.initiation), idempotency_key,
        body.model_dump(exclude={"initiation"}))
    return JSONResponse(response, status_code=status)


def _key_action(broker: Broker, who: Principal, body: KeyActionBody, action: Action,
                key: str | None) -> JSONResponse:
    status, response = submit_key_action(
        broker, who, action, body.label, body.policy, _initiation(body.initiation), key,
        {"action": action.value, **body.model_dump(exclude={"initiation"})})
    return JSONResponse(response, status_code=status)


@router.post("/block", status_code=201, response_model=RequestCreated)
def block(body: KeyActionBody, broker: BrokerDep, who: KeyAdmin,
          idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _key_action(broker, who, body, Action.BLOCK, idempotency_key)


@router.post("/unblock", status_code=201, response_model=RequestCreated)
def unblock(body: KeyActionBody, broker: BrokerDep, who: KeyAdmin,
            idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _key_action(broker, who, body, Action.UNBLOCK, idempotency_key)


@router.post("/modify", status_code=201, response_model=RequestCreated)
def modify(body: KeyActionBody, broker: BrokerDep, who: KeyAdmin,
           idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _key_action(broker, who, body, Action.MODIFY, idempotency_key)
