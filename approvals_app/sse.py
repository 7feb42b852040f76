"""Server-Sent Events to approvers: one keep-alive loop for both streams.

``/v1/approver/events`` (the command-line and TSB clients) and ``/approver/api/events``
(the web page) differ only in their first event and in what a ``task`` event carries;
the loop - short waits on the hub so a closed stream is noticed within a second, a
comment line when nothing was written for a while (proxies close silent streams), and
only events about keys this approver's credential can approve - is this one.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from custody.broker import Broker
from hsm_emulator.credentials import Credential

from .events import EventHub

KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.5


def sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def documented(description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a stream route (a success that is not JSON)."""
    return {200: {"description": description,
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def stream_response(request: Request, hub: EventHub, inbox: queue.Queue[dict[str, Any]],
                    broker: Broker, cred: Credential, first: str,
                    shape: Callable[[dict[str, Any]], dict[str, Any]]) -> StreamingResponse:
    """``first``, then a ``task`` event (``shape(event)``) per change this approver may
    act on, until the client goes; ``inbox`` (already subscribed) is released then."""

    async def stream() -> AsyncIterator[str]:
        try:
            yield first
            idle = 0.0
            while not await request.is_disconnected():
                try:
                    event = await asyncio.to_thread(inbox.get, True, POLL_SECONDS)
                except queue.Empty:
                    idle += POLL_SECONDS
                    if idle >= KEEPALIVE_SECONDS:
                        idle = 0.0
                        yield ": keep-alive\n\n"
                    continue
                members = await asyncio.to_thread(broker.rules.rule_members, event["keyLabel"],
                                                  event["action"])
                if cred.fingerprint in members:
                    idle = 0.0
                    yield sse("task", shape(event))
        finally:
            hub.unsubscribe(inbox)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
