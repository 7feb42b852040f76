"""bitcoind's JSON-RPC over HTTP, on loopback only, with HTTP basic auth.

As in Core (src/httprpc.cpp): a legacy (JSON-RPC 1.0) request gets ``result``,
``error`` and ``id`` with HTTP 500 on error (400 for an invalid request, 404 for an
unknown method); a ``"jsonrpc": "2.0"`` request gets HTTP 200 and either ``result``
or ``error``, and a notification (no ``id``) gets 204. Batches are answered with an
array. Without ``--rpcpassword`` the node writes a ``.cookie`` file
(``__cookie__:<random hex>``) in its datadir, like bitcoind's cookie auth.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from chains.bitcoin.node import dispatch, rpc_chain, rpc_mempool, rpc_tx  # noqa: F401  (registers)
from chains.bitcoin.node.jsonrpc import (
    RPC_INTERNAL_ERROR,
    RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND,
    RPC_PARSE_ERROR,
    RpcError,
    dumps,
)
from chains.bitcoin.node.node import RegtestNode

LOOPBACK = "127.0.0.1"
MAX_BODY = 32 * 1024 * 1024
COOKIE_USER = "__cookie__"
_NO_ID = object()


def write_cookie(datadir: Path) -> tuple[str, str]:
    password = secrets.token_hex(32)
    path = datadir / ".cookie"
    path.write_text(f"{COOKIE_USER}:{password}")
    path.chmod(0o600)
    return COOKIE_USER, password


def handle_one(node: RegtestNode, request: Any) -> tuple[dict[str, Any] | None, int]:
    """One request object to (reply or None for a 2.0 notification, legacy HTTP status)."""
    if not isinstance(request, dict):
        return _reply(
            None, None, RpcError(RPC_INVALID_REQUEST, "Invalid Request object"), False
        ), 400
    version = request.get("jsonrpc")
    v2 = version == "2.0"
    req_id = request.get("id", _NO_ID)
    try:
        if version not in (None, "1.0", "1.1", "2.0"):
            raise RpcError(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
        if "method" not in request:
            raise RpcError(RPC_INVALID_REQUEST, "Missing method")
        result = dispatch.call(node, request["method"], request.get("params"))
        error = None
    except RpcError as exc:
        result, error = None, exc
    except Exception as exc:  # a handler bug must answer, never kill the server
        result, error = None, RpcError(RPC_INTERNAL_ERROR, f"Internal error: {type(exc).__name__}")
    if v2 and req_id is _NO_ID:
        return None, 204
    status = (
        200
        if error is None
        else {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(error.code, 500)
    )
    return _reply(None if req_id is _NO_ID else req_id, result, error, v2), status


def _reply(req_id: Any, result: Any, error: RpcError | None, v2: bool) -> dict[str, Any]:
    if not v2:
        return {"result": result, "error": error.to_json() if error else None, "id": req_id}
    body = {"error": error.to_json()} if error else {"result": result}
    return {"jsonrpc": "2.0", **body, "id": req_id}


class _Handler(BaseHTTPRequestHandler):
    server: RpcServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: str = "", extra: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(extra or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(405, "JSONRPC server handles only POST requests")

    def do_POST(self) -> None:
        if not self.server.authorized(self.headers.get("Authorization", "")):
            self._send(401, "", {"WWW-Authenticate": 'Basic realm="jsonrpc"'})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._send(413 if length > MAX_BODY else 400)
            return
        try:
            request = json.loads(self.rfile.read(length), parse_float=Decimal)
        except ValueError:
            error = RpcError(RPC_PARSE_ERROR, "Parse error")
            self._send(500, dumps(_reply(None, None, error, False)))
            return
        self._answer(request)

    def _answer(self, request: Any) -> None:
        node = self.server.node
        if isinstance(request, list):
            replies = [handle_one(node, r)[0] for r in request]
            self._send(200, dumps([r for r in replies if r is not None]))
            return
        reply, status = handle_one(node, request)
        if reply is None:
            self._send(204)
        else:
            self._send(200 if reply.get("jsonrpc") == "2.0" else status, dumps(reply))


class RpcServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, node: RegtestNode, port: int, user: str, password: str) -> None:
        super().__init__((LOOPBACK, port), _Handler)
        self.node = node
        self._expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def authorized(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), self._expected.encode())

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="rpc", daemon=True)
        thread.start()
        return thread
