"""Raising requests: how a sign request is submitted, and block / unblock / modify.

A sign request goes one of three ways: with a desk's initiation (its ``requestId`` is
the request's id and its idempotency ticket), to the auto-signer when the key signs at
once and no ``Idempotency-Key`` asks for a stored answer (batched with its neighbours,
``custody/autosign.py``), or to the broker through the idempotency store. Answers are
(status, body), as :func:`custody.idempotency.run_once` stores them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool

from custody.autosign import AutoSigner
from custody.broker import Broker, Call, Principal
from custody.errors import BadRequest
from custody.idempotency import run_once
from hsm_emulator.flow import Approval
from hsm_emulator.model import Action

Answer = tuple[int, dict[str, Any]]


def no_second_ticket(idempotency_key: str | None) -> None:
    if idempotency_key is not None:
        raise BadRequest("an initiated request is its own idempotency ticket (the "
                         "initiation's requestId: a retry with it answers the first "
                         "request); send no Idempotency-Key with an initiation")


def _owner(who: Principal) -> str:
    return f"{who.tenant}/{who.subject}"


async def submit_sign(broker: Broker, autosigner: AutoSigner, call: Call,
                      initiation: tuple[str, Approval] | None, idempotency_key: str | None,
                      fingerprint: dict[str, Any]) -> Answer:
    """Submit ``call`` (a ``use``); ``initiation`` is (requestId, the desk's approval)."""
    if initiation is not None:  # signed one by one: a batch carries no initiations
        no_second_ticket(idempotency_key)
        request_id, approval = initiation
        row = await run_in_threadpool(
            broker.submit, call.principal, call.label, Action.USE, call.payload,
            call.payload_type, call.algorithm, call.meta, request_id=request_id,
            initiation=approval)
        return 201, {"signRequestId": row.id}
    if idempotency_key is None and autosigner.accepts(call.label):
        return 201, {"signRequestId": await asyncio.wrap_future(autosigner.submit(call))}

    def work(ticket: str | None) -> Answer:
        row = broker.submit(call.principal, call.label, Action.USE, call.payload,
                            call.payload_type, call.algorithm, call.meta, request_id=ticket)
        return 201, {"signRequestId": row.id}

    return await run_in_threadpool(run_once, broker.sessions, _owner(call.principal),
                                   idempotency_key, fingerprint, work)


def submit_key_action(broker: Broker, who: Principal, action: Action, label: str,
                      policy: dict[str, Any] | None, initiation: tuple[str, Approval] | None,
                      idempotency_key: str | None, fingerprint: dict[str, Any]) -> Answer:
    """Block, unblock or modify (with the new ``policy``, and only modify) a key: a
    request its rule's approvers must approve."""
    if (policy is None) == (action is Action.MODIFY):
        raise BadRequest("a policy goes with modify, and only with modify")
    if initiation is not None:
        no_second_ticket(idempotency_key)
        row = broker.submit(who, label, action, b"", "UNSPECIFIED", None, None,
                            new_policy=policy, request_id=initiation[0],
                            initiation=initiation[1])
        return 201, {"requestId": row.id, "status": row.status}

    def work(ticket: str | None) -> Answer:
        row = broker.submit(who, label, action, b"", "UNSPECIFIED", None, None,
                            new_policy=policy, request_id=ticket)
        return 201, {"requestId": row.id, "status": row.status}

    return run_once(broker.sessions, _owner(who), idempotency_key, fingerprint, work)
