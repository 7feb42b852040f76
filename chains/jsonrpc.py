"""A JSON-RPC 2.0 endpoint over HTTP keep-alive connections, one per thread.

The broker asks a node several things per transfer (nonce, fees, broadcast, receipt,
height). Through web3 and ``requests`` each call cost about a millisecond of the
service's CPU and most of it was the HTTP machinery, not the node; ``http.client`` on a
kept connection does the same exchange for a fraction of it. Errors are the project's:
an unreachable node or an overloaded one (HTTP 429 / 5xx) is
:class:`~chains.errors.NodeUnavailable`, an error object in the answer is
:class:`RpcFault` (a :class:`~chains.errors.ChainError` carrying the node's message and
code), an answer that is not JSON-RPC is a :class:`~chains.errors.ChainError`.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from .errors import ChainError, NodeUnavailable

#: The largest answer read by default (a receipt or a fee history is a few KiB).
MAX_RESPONSE = 8 * 1024 * 1024
#: What a kept connection the node has closed meanwhile raises on its next use: the call
#: is made once more on a new connection (any JSON-RPC call the broker makes may be:
#: reads, and a broadcast of the same bytes, which is the same transaction).
_STALE = (http.client.RemoteDisconnected, http.client.CannotSendRequest,
          ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class RpcFault(ChainError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, reason: str, rpc_code: int = 0) -> None:
        super().__init__(reason)
        self.rpc_code = rpc_code


class HttpJsonRpc:
    def __init__(self, url: str, *, timeout: float = 10.0,
                 max_response: int = MAX_RESPONSE, auth: tuple[str, str] | None = None,
                 parse_float: Callable[[str], Any] = float) -> None:
        """``auth``: basic-auth credentials (else those in the URL, if any);
        ``parse_float``: how numbers with a point are read (Bitcoin Core's amounts are
        read as :class:`~decimal.Decimal`, exactly)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ChainError(f"RPC URL must be http:// or https://, not {url!r}")
        self.url = url
        self.timeout = timeout
        self.max_response = max_response
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json"}
        self._parse_float = parse_float
        if auth is None and parts.username is not None:
            auth = (urllib.parse.unquote(parts.username),
                    urllib.parse.unquote(parts.password or ""))
        if auth is not None:
            user, password = auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._local = threading.local()
        self._ids = itertools.count(1)

    def call(self, method: str, params: list[Any]) -> Any:
        """The call's ``result``; :class:`RpcFault` for an error answer."""
        request_id = next(self._ids)
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method,
                           "params": params}).encode()
        status, raw = self._post(method, body)
        if status in (401, 403):
            raise ChainError(f"{method}: RPC authentication failed")
        try:
            doc = json.loads(raw, parse_float=self._parse_float)
        except ValueError:
            if status == 429 or status >= 500:  # a proxy's busy or down page
                raise NodeUnavailable(f"{method}: HTTP {status}") from None
            raise ChainError(f"{method}: the node's answer is not JSON") from None
        if not isinstance(doc, dict):
            raise ChainError(f"{method}: malformed JSON-RPC answer")
        error = doc.get("error")
        if error is not None:
            err = error if isinstance(error, dict) else {}
            code = err.get("code", 0)
            raise RpcFault(str(err.get("message", error)), code if isinstance(code, int) else 0)
        if doc.get("id") != request_id:
            raise ChainError(f"{method}: answer id {doc.get('id')!r}, asked {request_id}")
        return doc.get("result")

    def _post(self, method: str, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            fresh = conn is None
            if conn is None:
                conn = self._connect()
                self._local.conn = conn
            try:
                conn.request("POST", self._path, body, self._headers)
                response = conn.getresponse()
                raw = response.read(self.max_response + 1)
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 0 and not fresh and isinstance(exc, _STALE):
                    continue
                raise NodeUnavailable(f"{method}: node unreachable: {exc!r}") from None
            if response.will_close:
                conn.close()
                self._local.conn = None
            if len(raw) > self.max_response:  # the rest is unread: the connection is spent
                conn.close()
                self._local.conn = None
                raise ChainError(f"{method}: answer too large")
            return response.status, raw
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def close(self) -> None:
        """This thread's connection (others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
