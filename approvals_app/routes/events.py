"""``GET /v1/approver/events``: new and changed tasks pushed to an approver (SSE).

Browsers' EventSource cannot send headers or bodies, so the approver proves itself the
same way it lists tasks - a fresh timestamp signed with its approval key - in the query
string; each signed timestamp works once.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from approvals_app.deps import BrokerDep, EventsDep
from approvals_app.schemas import CRED_MAX
from approvals_app.sse import documented, sse, stream_response

router = APIRouter(prefix="/v1", tags=["approvals"])


@router.get("/approver/events", response_class=StreamingResponse, responses=documented(
    "Server-sent events: `tasks`, then `task` per change"))
async def approver_events(
    request: Request,
    broker: BrokerDep,
    hub: EventsDep,
    timestamp: str = Query(max_length=64),
    signature: str = Query(max_length=4096),
    certificate: str = Query(max_length=CRED_MAX),
) -> StreamingResponse:
    cred = await asyncio.to_thread(broker.approvers.authenticate_approver, certificate, timestamp,
                                   signature)
    inbox = hub.subscribe()  # before listing: a change while listing is not lost
    pending = await asyncio.to_thread(broker.approvers.tasks, cred, 0, 100)
    return stream_response(request, hub, inbox, broker, cred,
                           sse("tasks", {"ids": [t.request.id for t in pending]}),
                           lambda event: event)
