"""``GET /v1/approver/events``: new and changed tasks pushed to an approver (SSE).

Browsers' EventSource cannot send headers or bodies, so the approver proves itself the
same way it lists tasks - a fresh timestamp signed with its approval key - in the query
string; each signed timestamp works once.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

router = APIRouter(prefix="/v1", tags=["approvals"])
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.5


@router.get("/approver/events", response_class=StreamingResponse, responses={
    200: {"description": "Server-sent events: `tasks`, then `task` per change",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def approver_events(
    request: Request,
    timestamp: str = Query(max_length=64),
    signature: str = Query(max_length=4096),
    certificate: str = Query(max_length=16_384),
) -> StreamingResponse:
    broker = request.app.state.broker
    cred = await asyncio.to_thread(broker.approvers.authenticate_approver, certificate, timestamp,
                                   signature)
    hub = request.app.state.events
    inbox = hub.subscribe()
    pending = await asyncio.to_thread(broker.approvers.tasks, cred, 0, 100)

    async def stream() -> AsyncIterator[str]:
        try:
            yield _sse("tasks", {"ids": [t.request.id for t in pending]})
            idle = 0.0
            while not await request.is_disconnected():
                try:  # short waits, so a closed stream is noticed within a second
                    event = await asyncio.to_thread(inbox.get, True, POLL_SECONDS)
                except queue.Empty:
                    idle += POLL_SECONDS
                    if idle >= KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield ": keep-alive\n\n"
                    continue
                idle = 0.0
                members = await asyncio.to_thread(broker.rules.rule_members, event["keyLabel"],
                                                  event["action"])
                if cred.fingerprint in members:
                    yield _sse("task", event)
        finally:
            hub.unsubscribe(inbox)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
