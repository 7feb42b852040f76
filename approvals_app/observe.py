"""Request ids, metrics and the access log, as a plain ASGI middleware.

A plain ASGI wrapper rather than ``@app.middleware("http")`` (Starlette's
``BaseHTTPMiddleware``), which runs every response through an extra task and memory
stream - a measurable share of a small request's cost - and buffers streaming bodies.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .metrics import Metrics

log = logging.getLogger("custody.api")


class Observe:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = logs.choose_request_id(header.decode("latin-1") if header is not None else None)
        token = logs.request_id.set(rid)
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()),
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "-")
            self.metrics.http.labels(method, path, str(status)).inc()
            client: Any = scope.get("client")
            log.info("request", extra={
                "method": method, "path": path, "status": status,
                "ms": round((time.perf_counter() - start) * 1000, 2),
                "client": client[0] if client else "-"})
            logs.request_id.reset(token)
