"""Request bodies over ``CUSTODY_MAX_BODY_BYTES`` are answered 413 before anyone reads them.

A plain ASGI middleware outside everything else, so a large body costs neither parsing nor
an authentication: a declared ``Content-Length`` over the limit is refused at once, and a
body without one (chunked) is counted as it streams in and refused the moment it passes
the limit. Every API body is JSON of a few kilobytes; 1 MiB is the default.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import PROBLEM_JSON, problem

CODE = "custody.body_too_large"


class BodyTooLarge(HTTPException):
    """Raised into the app when a streamed body passes the limit: the route reading it
    stops there, and the app's handler answers 413 like the declared case."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body is larger than {max_bytes} bytes")


def install(app: FastAPI, max_bytes: int) -> None:
    """The middleware (outermost of the app's own) and the handler of a streamed refusal."""

    async def _too_large(_req: Request, exc: Exception) -> JSONResponse:
        return problem(413, CODE, str(getattr(exc, "detail", "")))

    app.add_exception_handler(BodyTooLarge, _too_large)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        detail = BodyTooLarge(self.max_bytes).detail
        body = json.dumps({"type": f"urn:ska-custody:problem:{CODE}", "title": CODE,
                           "status": 413, "detail": detail, "code": CODE}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
