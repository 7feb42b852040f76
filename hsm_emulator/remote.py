"""The HSM as a separate process, behind the same :class:`~hsm_emulator.client.HsmClient`.

Run the server with::

    SKA_HSM_PASSPHRASE=... [SKA_HSM_SO_PASSPHRASE=...] \\
        python -m hsm_emulator.remote --store hsm.sqlite --listen unix:/run/ska/hsm.sock \\
        --secret-file client.secret

and reach it with ``RemoteHsmClient("unix:/run/ska/hsm.sock", secret)``.

Wire protocol, version 1 (``ska-hsm-v1``)
-----------------------------------------

Every message is a frame: a 4-byte big-endian length, then that many bytes of UTF-8
JSON. A frame larger than :data:`MAX_FRAME` (4 MiB) gets an error frame, and the server
closes the connection.

1. Server -> client: ``{"protocol": "ska-hsm-v1", "nonce": b64(32 random bytes)}``.
   A server already authenticating :data:`MAX_PENDING` connections sends instead an
   error frame with code ``hsm.transport_error`` ("busy") and closes; the client retries.
2. Client -> server, in at most :data:`MAX_AUTH_FRAME` bytes: ``{"auth":
   b64(HMAC-SHA256(secret, b"ska-hsm-auth-v1" + nonce)), "nonce": b64(32 random bytes of
   the client)}``; complete within :data:`HANDSHAKE_TIMEOUT` seconds of connecting, in
   all - however slowly its bytes arrive - or the server closes the connection.
3. Server -> client: ``{"ok": {"server": b64(HMAC-SHA256(secret, b"ska-hsm-server-v1" +
   nonce + client nonce))}}`` - the server proves it knows the secret too, so a process
   squatting on the socket cannot pose as the HSM - or an error frame, and the server
   closes. After :data:`AUTH_FAILURES` failures from one peer (Unix uid, or IP) within
   :data:`AUTH_WINDOW` seconds the server refuses that peer until the window has passed.
   With :data:`MAX_CONNECTIONS` clients connected, the answer is a "busy" error instead.
4. Requests ``{"id": n, "call": name, "args": {...}}`` and replies ``{"id": n, "ok":
   result}`` or ``{"id": n, "error": {"code", "reason", "field"?, "missing"?}}``. Only the
   names in :data:`hsm_emulator.client.CALLS` (which has no ``close``: that closes the client's
   own connection) are callable; argument names are the Python parameter names. Bytes
   travel as base64 strings, enums as their values, approvals (``approval``,
   ``approvals[]``, ``initiation``) as :meth:`~hsm_emulator.flow.Approval.to_json`
   objects, results as their ``to_json`` forms.
   ``audit_entries`` returns as many of the entries asked for as fit in one reply frame.

Connections still authenticating and authenticated ones are held apart (see
:class:`_Server`): peers that never finish a handshake fill only a pool of their own,
without a thread each, so they cannot take an authenticated client's slot or delay its
calls. A new client gets in at once while fewer than :data:`MAX_PENDING` peers are
authenticating; past that it is told "busy" and retries as their deadlines free slots.

The channel is authenticated but not encrypted: the server only listens on a Unix socket
(created mode 0600) or on a loopback TCP address.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from . import errors
from .addresses import AddressKind, Network
from .audit import AuditEntry, SignedHead
from .challenge import Challenge
from .client import CALLS, HsmClient
from .clock import Clock, SystemClock
from .errors import (
    AuditFailure,
    AuthenticationFailed,
    HsmError,
    InvalidInput,
    TransportError,
)
from .evaluate import Evaluation
from .flow import Approval, Hsm
from .model import Action, KeyAlgorithm, KeyAttributes, SignScheme
from .results import (
    Attestation,
    Execution,
    KeyInfo,
    evaluation_from_json,
    evaluation_to_json,
)
from .store import SCRYPT_N, Passphrase

__all__ = ["MAX_FRAME", "PROTOCOL", "FileClock", "RemoteHsmClient", "main", "serve"]

log = logging.getLogger("hsm_emulator.remote")

PROTOCOL = "ska-hsm-v1"
CLIENT_AUTH_CONTEXT = b"ska-hsm-auth-v1"
SERVER_AUTH_CONTEXT = b"ska-hsm-server-v1"
MAX_FRAME = 4 * 1024 * 1024
#: Before authentication a peer may send one small frame only.
MAX_AUTH_FRAME = 4096
NONCE_BYTES = 32
MIN_SECRET = 16
#: Failed authentications allowed per peer within :data:`AUTH_WINDOW` seconds.
AUTH_FAILURES = 5
AUTH_WINDOW = 60.0
#: Every failed authentication is answered this late, to slow guessing further.
AUTH_FAILURE_DELAY = 0.2
#: Seconds from accepting a connection to its authentication frame being complete, in
#: all: a peer trickling bytes gets no more time than a silent one.
HANDSHAKE_TIMEOUT = 5.0
#: Authenticated clients connected at once (a thread each).
MAX_CONNECTIONS = 64
#: Connections authenticating at once (no thread each); beyond, a new one is refused.
MAX_PENDING = 256
#: Entries asked for per ``audit_entries`` round trip; the server returns fewer if they
#: would not fit in one reply frame.
AUDIT_PAGE = 1000
#: Bytes of a reply frame besides its result: ``{"id":<up to 2**53>,"ok":}``.
_REPLY_ENVELOPE = 64
#: The HSM's own cap on ``audit_entries``' limit (see ``HsmCore.audit_entries``).
AUDIT_MAX = 10_000
_HEADER = struct.Struct(">I")
_INT64 = 2**63


# -- addresses --------------------------------------------------------------------------


def parse_address(address: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``unix:/path`` or ``tcp:HOST:PORT`` (HOST a loopback address) -> family, target."""
    if not isinstance(address, str):
        raise InvalidInput("address: a string, unix:/path/to/sock or tcp:127.0.0.1:PORT")
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not path or "\0" in path:
            raise InvalidInput("address: unix: needs a socket path")
        if len(os.fsencode(path)) > 100:  # sun_path holds 104-108 bytes depending on the OS
            raise InvalidInput("address: Unix socket path longer than 100 bytes")
        return socket.AF_UNIX, path
    if address.startswith("tcp:"):
        host, sep, port_text = address[len("tcp:"):].rpartition(":")
        if not sep or not port_text.isascii() or not port_text.isdigit():
            raise InvalidInput("address: tcp:HOST:PORT with a numeric port")
        port = int(port_text)
        if port > 65535:
            raise InvalidInput("address: port out of range")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidInput("address: the TCP host must be a loopback IP address "
                               "(127.0.0.1, ::1) or localhost") from None
        if not ip.is_loopback:
            raise InvalidInput(f"address: refusing non-loopback host {host}: the HSM "
                               "protocol is authenticated but not encrypted")
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return family, (str(ip), port)
    raise InvalidInput("address: unix:/path/to/sock or tcp:127.0.0.1:PORT")


# -- framing ----------------------------------------------------------------------------


class _Closed(Exception):
    """The peer closed the connection."""


class _FrameTooLarge(Exception):
    """A frame header announced more than MAX_FRAME bytes."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise _Closed("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket, limit: int = MAX_FRAME) -> bytes:
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if length > limit:
        raise _FrameTooLarge(f"frame of {length} bytes exceeds {limit}")
    return _recv_exact(sock, length)


def _encode(obj: Any) -> bytes:
    """JSON bytes of ``obj``; ValueError/TypeError if it is not plain finite JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _send_raw(sock: socket.socket, data: bytes) -> None:
    if len(data) > MAX_FRAME:
        raise _FrameTooLarge(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _send_frame(sock: socket.socket, obj: Any) -> None:
    _send_raw(sock, _encode(obj))


def _frame_bytes(obj: Any) -> bytes:
    """``obj`` as a whole frame, header included (a small frame of the server's own)."""
    data = _encode(obj)
    return _HEADER.pack(len(data)) + data


def _error_frame(exc: HsmError) -> bytes:
    return _frame_bytes({"id": None, "error": _error_json(exc)})


def _refuse(conn: socket.socket, answer: bytes) -> None:
    """Send ``answer`` as far as the socket takes it at once, and close: never wait on
    a peer that has not authenticated."""
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(data: bytes) -> Any:
    """Parse a frame; InvalidInput for anything but UTF-8 JSON (NaN, Infinity refused)."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidInput("frame is not UTF-8 JSON") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{what}: must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what}: not valid base64") from None


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


# -- errors across the wire -------------------------------------------------------------


def _error_json(exc: HsmError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": exc.code, "reason": exc.reason}
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        out["field"] = field
    missing = getattr(exc, "missing", None)
    if isinstance(missing, tuple):
        out["missing"] = [str(m) for m in missing]
    return out


_ERROR_CLASSES: dict[str, type[HsmError]] = {
    obj.code: obj for obj in vars(errors).values()
    if isinstance(obj, type) and issubclass(obj, HsmError)
}


def _error_from_json(doc: Any) -> HsmError:
    """Rebuild the server's error as the same class, with reason, field and missing."""
    if not isinstance(doc, dict) or not isinstance(doc.get("code"), str) or not isinstance(
            doc.get("reason"), str):
        return TransportError("the HSM answered with a malformed error")
    code, reason = doc["code"], doc["reason"]
    cls = _ERROR_CLASSES.get(code, HsmError)
    exc = cls.__new__(cls)
    HsmError.__init__(exc, reason)  # bypass subclass constructors: reason is already final
    if cls is HsmError and code != HsmError.code:
        exc.code = code  # an unknown code: keep it, on the instance
    field = doc.get("field")
    if isinstance(field, str) or cls is errors.PolicyInvalid:
        exc.field = field if isinstance(field, str) else ""  # type: ignore[attr-defined]
    missing = doc.get("missing")
    if isinstance(missing, list) or cls is errors.PolicyNotMet:
        exc.missing = tuple(  # type: ignore[attr-defined]
            str(m) for m in (missing if isinstance(missing, list) else ()))
    return exc


# -- server: arguments ------------------------------------------------------------------


_MISSING: Any = object()


class _Args:
    """A request's ``args`` object, read with strict types; unknown names are refused."""

    def __init__(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise InvalidInput("args: must be an object")
        self._raw: dict[str, Any] = raw
        self._read: set[str] = set()

    def _get(self, name: str, default: Any) -> Any:
        self._read.add(name)
        if name in self._raw:
            return self._raw[name]
        if default is _MISSING:
            raise InvalidInput(f"{name}: missing")
        return default

    def done(self) -> None:
        unknown = set(self._raw) - self._read
        if unknown:
            names = sorted(str(n)[:64] for n in unknown)[:5]
            raise InvalidInput(f"unknown argument(s) {names}")

    def text(self, name: str, default: Any = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise InvalidInput(f"{name}: must be a string")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{name}: must be a string or null")
        return value

    def integer(self, name: str, default: Any = _MISSING, *, bound: int | None = None) -> int:
        value = self._get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidInput(f"{name}: must be an integer")
        if bound is not None and not -bound <= value < bound:
            raise InvalidInput(f"{name}: out of range")
        return value

    def opt_integer(self, name: str) -> int | None:
        if self._get(name, None) is None:
            return None
        return self.integer(name)

    def number(self, name: str, default: Any = _MISSING) -> float:
        value = self._get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(
                value):
            raise InvalidInput(f"{name}: must be a finite number")
        return float(value)

    def data(self, name: str, default: Any = _MISSING) -> bytes:
        return _unb64(self._get(name, default), name)

    def opt_data(self, name: str) -> bytes | None:
        if self._get(name, None) is None:
            return None
        return self.data(name)

    def opt_object(self, name: str) -> dict[str, Any] | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, dict):
            raise InvalidInput(f"{name}: must be an object or null")
        return value

    def _list(self, name: str) -> list[Any]:
        value = self._get(name, [])
        if not isinstance(value, list):
            raise InvalidInput(f"{name}: must be a list")
        return value

    def texts(self, name: str) -> list[str]:
        values = self._list(name)
        if not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"{name}: must be a list of strings")
        return values

    def datas(self, name: str) -> list[bytes]:
        return [_unb64(v, f"{name}[{i}]") for i, v in enumerate(self._list(name))]

    def approval(self, name: str) -> Approval:
        return _approval(self._get(name, _MISSING), name)

    def opt_approval(self, name: str) -> Approval | None:
        value = self._get(name, None)
        return None if value is None else _approval(value, name)

    def approvals(self, name: str) -> list[Approval]:
        return [_approval(v, f"{name}[{i}]") for i, v in enumerate(self._list(name))]


def _approval(doc: Any, what: str) -> Approval:
    if not isinstance(doc, dict) or set(doc) - {"credentialType", "credential", "signature",
                                                "digest"}:
        raise InvalidInput(f"{what}: an approval object (credentialType, credential, "
                           "signature, digest)")
    ctype, cred, digest = doc.get("credentialType"), doc.get("credential"), doc.get(
        "digest", "SHA-256")
    if not (isinstance(ctype, str) and isinstance(cred, str) and isinstance(digest, str)):
        raise InvalidInput(f"{what}: credentialType, credential and digest must be strings")
    return Approval(ctype, cred, _unb64(doc.get("signature"), f"{what}.signature"), digest)


def _address_kind(value: str) -> AddressKind:
    try:
        return AddressKind(value)
    except ValueError:
        raise InvalidInput(f"kind: one of {[k.value for k in AddressKind]}") from None


def _network(value: str) -> Network:
    try:
        return Network(value)
    except ValueError:
        raise InvalidInput(f"network: one of {[n.value for n in Network]}") from None


# -- server: one handler per call (no getattr on names from the wire) -------------------


def _create_key(hsm: Hsm, a: _Args) -> Any:
    label, algorithm = a.text("label"), a.text("algorithm")
    key_size = a.opt_integer("key_size")
    attributes, policy = a.opt_object("attributes"), a.opt_object("policy")
    a.done()
    return hsm.create_key(label, algorithm, key_size=key_size, attributes=attributes,
                          policy=policy).to_json()


def _derive_key(hsm: Hsm, a: _Args) -> Any:
    parent, path, label = a.text("parent"), a.text("path"), a.text("label")
    policy = a.opt_object("policy")
    a.done()
    return hsm.derive_key(parent, path, label, policy).to_json()


def _get_key(hsm: Hsm, a: _Args) -> Any:
    label = a.text("label")
    a.done()
    return hsm.get_key(label).to_json()


def _list_keys(hsm: Hsm, a: _Args) -> Any:
    a.done()
    return hsm.list_keys()


def _public_key(hsm: Hsm, a: _Args) -> Any:
    label, path = a.text("label"), a.text("path", "")
    a.done()
    return _b64(hsm.public_key(label, path))


def _address(hsm: Hsm, a: _Args) -> Any:
    label, kind, network = a.text("label"), a.text("kind"), a.text("network")
    path = a.text("path", "")
    a.done()
    return hsm.address(label, _address_kind(kind), _network(network), path)


def _invalidate_key(hsm: Hsm, a: _Args) -> Any:
    label = a.text("label")
    a.done()
    return hsm.invalidate_key(label).to_json()


def _restore_key(hsm: Hsm, a: _Args) -> Any:
    label, so = a.text("label"), a.text("so_passphrase")
    a.done()
    return hsm.restore_key(label, so).to_json()


def _destroy_key(hsm: Hsm, a: _Args) -> Any:
    label, so = a.text("label"), a.text("so_passphrase")
    a.done()
    return hsm.destroy_key(label, so).to_json()


def _export_private_key_unsafe(hsm: Hsm, a: _Args) -> Any:
    label, so = a.text("label"), a.text("so_passphrase")
    a.done()
    return _b64(hsm.export_private_key_unsafe(label, so))


def _attest(hsm: Hsm, a: _Args) -> Any:
    label = a.text("label")
    a.done()
    return hsm.attest(label).to_json()


def _identity_public_key(hsm: Hsm, a: _Args) -> Any:
    a.done()
    return _b64(hsm.identity_public_key())


def _begin(hsm: Hsm, a: _Args) -> Any:
    label, action = a.text("label"), a.text("action", Action.USE.value)
    payload, payload_type = a.data("payload", ""), a.text("payload_type", "UNSPECIFIED")
    scheme, fee_cap = a.opt_text("scheme"), a.opt_integer("fee_cap")
    new_policy, initiator = a.opt_object("new_policy"), a.text("initiator", "")
    request_id, initiation = a.opt_text("request_id"), a.opt_approval("initiation")
    a.done()
    return hsm.begin(label, action, payload, payload_type, scheme, fee_cap=fee_cap,
                     new_policy=new_policy, initiator=initiator, request_id=request_id,
                     initiation=initiation).to_json()


def _check_approval(hsm: Hsm, a: _Args) -> Any:
    request_id, approval = a.text("request_id"), a.approval("approval")
    a.done()
    return hsm.check_approval(request_id, approval)


def _execute(hsm: Hsm, a: _Args) -> Any:
    request_id, approvals = a.text("request_id"), a.approvals("approvals")
    payload = a.opt_data("payload")
    a.done()
    return hsm.execute(request_id, approvals, payload=payload).to_json()


def _sign_now(hsm: Hsm, a: _Args) -> Any:
    label, payload = a.text("label"), a.data("payload")
    payload_type, scheme = a.text("payload_type", "UNSPECIFIED"), a.opt_text("scheme")
    request_id, initiation = a.opt_text("request_id"), a.opt_approval("initiation")
    a.done()
    return hsm.sign_now(label, payload, payload_type, scheme, request_id=request_id,
                        initiation=initiation).to_json()


def _sign_batch(hsm: Hsm, a: _Args) -> Any:
    label, payloads = a.text("label"), a.datas("payloads")
    payload_type, scheme = a.text("payload_type", "UNSPECIFIED"), a.opt_text("scheme")
    a.done()
    return [e.to_json() for e in hsm.sign_batch(label, payloads, payload_type, scheme)]


def _dry_run(hsm: Hsm, a: _Args) -> Any:
    label, payload = a.text("label"), a.data("payload", "")
    payload_type, action = a.text("payload_type", "UNSPECIFIED"), a.text("action", "use")
    approvers, elapsed = a.texts("approvers"), a.number("elapsed", 0.0)
    a.done()
    return evaluation_to_json(hsm.dry_run(label, payload, payload_type, action,
                                          approvers=approvers, elapsed=elapsed))


def _request_status(hsm: Hsm, a: _Args) -> Any:
    request_id, approvals = a.text("request_id"), a.approvals("approvals")
    rejected = a.texts("rejected")
    a.done()
    return evaluation_to_json(hsm.request_status(request_id, approvals, rejected))


def _cancel(hsm: Hsm, a: _Args) -> Any:
    request_id, reason = a.text("request_id"), a.text("reason", "")
    a.done()
    hsm.cancel(request_id, reason)
    return None


def _request_result(hsm: Hsm, a: _Args) -> Any:
    request_id = a.text("request_id")
    a.done()
    return hsm.request_result(request_id).to_json()


def _request_challenge(hsm: Hsm, a: _Args) -> Any:
    request_id = a.text("request_id")
    a.done()
    return hsm.request_challenge(request_id).to_json()


def _audit_entries(hsm: Hsm, a: _Args) -> Any:
    start = a.integer("start", 1, bound=_INT64)
    limit = a.integer("limit", 1000, bound=_INT64)
    a.done()
    return _fitting([e.to_json() for e in hsm.audit_entries(start, limit)])


def _fitting(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first entries whose reply fits in a frame: as many as fit, never an error for
    asking too many, so the log stays pageable whatever it holds (the client asks again
    from where a page ends). Entries are bounded when written (see ``audit.bounded``),
    so one always fits - unless it was written before that, which is then said."""
    room = MAX_FRAME - _REPLY_ENVELOPE
    for n, entry in enumerate(entries):
        room -= len(_encode(entry)) + 1  # the entry and its comma
        if room < 0:
            if n == 0:
                raise AuditFailure(f"audit entry {entry['seq']} alone exceeds the "
                                   f"{MAX_FRAME}-byte reply frame (it was written before "
                                   "caller strings were bounded); read it from the store")
            return entries[:n]
    return entries


def _audit_head(hsm: Hsm, a: _Args) -> Any:
    a.done()
    return hsm.audit_head().to_json()


def _audit_checkpoints(hsm: Hsm, a: _Args) -> Any:
    a.done()
    return [h.to_json() for h in hsm.audit_checkpoints()]


_Handler = Callable[[Hsm, _Args], Any]

#: Every HsmClient call but ``close`` (a client closes its connection, never the HSM).
HANDLERS: dict[str, _Handler] = {
    "create_key": _create_key, "derive_key": _derive_key, "get_key": _get_key,
    "list_keys": _list_keys, "public_key": _public_key, "address": _address,
    "invalidate_key": _invalidate_key, "restore_key": _restore_key,
    "destroy_key": _destroy_key, "export_private_key_unsafe": _export_private_key_unsafe,
    "attest": _attest, "identity_public_key": _identity_public_key, "begin": _begin,
    "check_approval": _check_approval, "execute": _execute, "sign_now": _sign_now,
    "sign_batch": _sign_batch, "dry_run": _dry_run, "request_status": _request_status,
    "cancel": _cancel, "request_result": _request_result,
    "request_challenge": _request_challenge, "audit_entries": _audit_entries,
    "audit_head": _audit_head, "audit_checkpoints": _audit_checkpoints,
}
_CALLABLE: dict[str, _Handler] = {n: h for n, h in HANDLERS.items() if n in CALLS}


# -- server -----------------------------------------------------------------------------


class _RateLimiter:
    """Failed authentications per peer in a sliding window (monotonic time)."""

    def __init__(self, limit: int = AUTH_FAILURES, window: float = AUTH_WINDOW) -> None:
        self._limit, self._window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, peer: str, now: float) -> deque[float]:
        q = self._failures.setdefault(peer, deque())
        while q and q[0] <= now - self._window:
            q.popleft()
        return q

    def blocked(self, peer: str) -> bool:
        with self._lock:
            return len(self._recent(peer, time.monotonic())) >= self._limit

    def failure(self, peer: str) -> None:
        with self._lock:
            now = time.monotonic()
            if len(self._failures) > 4096:  # forget idle peers; keep the table bounded
                for p in [p for p, q in self._failures.items()
                          if not q or q[-1] <= now - self._window]:
                    del self._failures[p]
            self._recent(peer, now).append(now)


def _peer(conn: socket.socket) -> str:
    """Whom to rate-limit: the Unix uid of the peer process, or its IP address."""
    if conn.family == socket.AF_UNIX:
        peercred = getattr(socket, "SO_PEERCRED", None)
        if peercred is not None:
            with contextlib.suppress(OSError, struct.error):
                _pid, uid, _gid = struct.unpack(
                    "3i", conn.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
                return f"uid:{uid}"
        return "unix"
    try:
        return f"ip:{conn.getpeername()[0]}"
    except OSError:
        return "unknown"


class _Handshake:
    """A connection still authenticating, read and written without blocking by the
    accepting thread: the hello it is owed, the authentication frame so far, and the
    one deadline by which that frame must be complete."""

    def __init__(self, conn: socket.socket, peer: str, deadline: float) -> None:
        self.conn, self.peer, self.deadline = conn, peer, deadline
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self.outbox = bytearray(_frame_bytes({"protocol": PROTOCOL, "nonce": _b64(self.nonce)}))
        self.writing = False
        self._inbox = bytearray()
        self._length: int | None = None  # the frame's, once its header is in

    def wanted(self) -> int:
        """Bytes still missing from the header, or then from the frame."""
        return (_HEADER.size if self._length is None else self._length) - len(self._inbox)

    def feed(self, data: bytes) -> bytes | None:
        """Take bytes read; the authentication frame once complete. _FrameTooLarge as
        soon as its header announces more than MAX_AUTH_FRAME bytes."""
        self._inbox += data
        if self._length is None and not self.wanted():
            (self._length,) = _HEADER.unpack(self._inbox)
            self._inbox.clear()
            if self._length > MAX_AUTH_FRAME:
                raise _FrameTooLarge(f"frame of {self._length} bytes exceeds {MAX_AUTH_FRAME}")
        return None if self._length is None or self.wanted() else bytes(self._inbox)

    def flush(self) -> bool:
        """Send what the outbox holds as far as the socket takes it; True once empty."""
        if self.outbox:
            with contextlib.suppress(BlockingIOError):
                del self.outbox[:self.conn.send(self.outbox)]
        return not self.outbox


class _Server:
    """Authenticated clients get a thread each, from :data:`MAX_CONNECTIONS` session
    slots. Connections still authenticating get no thread and no session slot: the
    accepting thread handles them together, without blocking, in a pool of their own
    (:data:`MAX_PENDING`), and closes each that has not authenticated within
    :data:`HANDSHAKE_TIMEOUT` seconds of being accepted, however slowly its bytes come.
    A peer cap could not tell an attacker from the broker on one host; these pools
    need not: slow peers can fill only their own pool, and once it is full a new
    connection is answered "busy" and closed at once (the client retries), while
    authenticated sessions carry on untouched."""

    def __init__(self, hsm: Hsm, secret: bytes, *, max_pending: int = MAX_PENDING,
                 max_sessions: int = MAX_CONNECTIONS,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.hsm = hsm
        self._secret = secret
        self._limiter = _RateLimiter()
        self._sessions = threading.BoundedSemaphore(max_sessions)
        self._max_sessions, self._max_pending = max_sessions, max_pending
        self._timeout = handshake_timeout
        self._sel = selectors.DefaultSelector()
        #: Oldest first, so deadlines are in order (a dict keeps insertion order).
        self._pending: dict[socket.socket, _Handshake] = {}
        #: Failed handshakes, answered AUTH_FAILURE_DELAY late; they keep their pool slot.
        self._failing: deque[tuple[float, socket.socket, bytes]] = deque()
        self._busy_refusals, self._busy_logged = 0, 0.0

    def run(self, listener: socket.socket, stop: threading.Event | None) -> None:
        """Accept and authenticate until ``stop`` is set; sessions run in threads."""
        listener.setblocking(False)
        self._sel.register(listener, selectors.EVENT_READ, None)
        try:
            while stop is None or not stop.is_set():
                for key, mask in self._sel.select(self._wait()):
                    if key.data is None:
                        self._accept(listener)
                    else:
                        self._step(key.data, mask)
                self._expire()
        finally:
            for conn in [*self._pending, *(c for _, c, _ in self._failing)]:
                conn.close()
            self._sel.close()

    def _wait(self) -> float:
        """Seconds until the next deadline or late answer (at most 0.25, to see stop)."""
        now = time.monotonic()
        due = now + 0.25
        if self._pending:
            due = min(due, next(iter(self._pending.values())).deadline)
        if self._failing:
            due = min(due, self._failing[0][0])
        return max(0.0, due - now)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # a burst at a time, then the handshakes' turn
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. out of file descriptors: wait, do not spin
                log.warning("accept failed: %s", exc)
                time.sleep(0.1)
                return
            try:
                self._admit(conn)
            except Exception:  # one connection must not stop the accepting thread
                log.exception("admitting a connection failed")
                self._pending.pop(conn, None)
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(conn)
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if len(self._pending) + len(self._failing) >= self._max_pending:
            self._note_busy()
            _refuse(conn, _error_frame(TransportError(
                f"the HSM is busy: {self._max_pending} connections are authenticating; "
                "retry shortly")))
            return
        peer = _peer(conn)
        if self._limiter.blocked(peer):
            log.warning("refusing %s: too many failed authentications", peer)
            _refuse(conn, _error_frame(AuthenticationFailed(
                "too many failed authentications from this peer; retry later")))
            return
        hs = _Handshake(conn, peer, time.monotonic() + self._timeout)
        self._pending[conn] = hs
        self._sel.register(conn, selectors.EVENT_READ, hs)
        self._send(hs)

    def _note_busy(self) -> None:
        """Log refusals for a full pool at most every 10 s: an attack must not flood logs."""
        self._busy_refusals += 1
        if time.monotonic() - self._busy_logged >= 10.0:
            log.warning("refused %d connection(s): %d connections are authenticating",
                        self._busy_refusals, self._max_pending)
            self._busy_refusals, self._busy_logged = 0, time.monotonic()

    def _step(self, hs: _Handshake, mask: int) -> None:
        if self._pending.get(hs.conn) is not hs:
            return  # dropped earlier in this round
        try:
            if mask & selectors.EVENT_WRITE:
                self._send(hs)
            if mask & selectors.EVENT_READ and self._pending.get(hs.conn) is hs:
                self._read(hs)
        except Exception:  # one connection must not stop the accepting thread
            log.exception("handshake failed")
            if self._pending.get(hs.conn) is hs:
                self._drop(hs)

    def _send(self, hs: _Handshake) -> None:
        try:
            done = hs.flush()
        except OSError:
            self._drop(hs)
            return
        if hs.writing == done:  # wait for the socket to take the rest, or stop waiting
            hs.writing = not done
            self._sel.modify(hs.conn, selectors.EVENT_READ | (
                selectors.EVENT_WRITE if hs.writing else 0), hs)

    def _read(self, hs: _Handshake) -> None:
        try:
            data = hs.conn.recv(hs.wanted())  # never past the frame: nothing is lost
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(hs)  # the peer closed
            return
        try:
            frame = hs.feed(data)
        except _FrameTooLarge:
            self._fail(hs)
            return
        if frame is not None:
            self._finish(hs, frame)

    def _finish(self, hs: _Handshake, frame: bytes) -> None:
        client_nonce = self._check(hs.nonce, frame)
        if client_nonce is None:
            self._fail(hs)
            return
        self._forget(hs)
        proof = _mac(self._secret, SERVER_AUTH_CONTEXT, hs.nonce, client_nonce)
        if not self._sessions.acquire(blocking=False):
            log.warning("refusing a client: %d clients connected", self._max_sessions)
            _refuse(hs.conn, _error_frame(TransportError(
                f"the HSM is busy: {self._max_sessions} clients are connected; retry shortly")))
            return
        greeting = bytes(hs.outbox) + _frame_bytes({"ok": {"server": _b64(proof)}})
        hs.conn.setblocking(True)  # a session's thread waits for requests as long as it likes
        try:
            threading.Thread(target=self._session, args=(hs.conn, greeting), daemon=True,
                             name="hsm-connection").start()
        except RuntimeError:
            self._sessions.release()
            hs.conn.close()

    def _check(self, nonce: bytes, frame: bytes) -> bytes | None:
        """The client's nonce if ``frame`` proves it holds the secret, else None."""
        try:
            msg = _decode(frame)
            if not isinstance(msg, dict):
                raise InvalidInput("an authentication frame is an object")
            mac = _unb64(msg.get("auth"), "auth")
            client_nonce = _unb64(msg.get("nonce"), "nonce")
        except InvalidInput:
            return None
        ok = len(client_nonce) == NONCE_BYTES and hmac.compare_digest(
            _mac(self._secret, CLIENT_AUTH_CONTEXT, nonce), mac)
        return client_nonce if ok else None

    def _fail(self, hs: _Handshake) -> None:
        """Count the failure against the peer and answer it AUTH_FAILURE_DELAY late, to
        slow guessing - without holding up the other handshakes meanwhile."""
        self._forget(hs)
        self._limiter.failure(hs.peer)
        log.warning("client authentication failed (%s)", hs.peer)
        answer = bytes(hs.outbox) + _error_frame(
            AuthenticationFailed("client authentication failed"))
        self._failing.append((time.monotonic() + AUTH_FAILURE_DELAY, hs.conn, answer))

    def _expire(self) -> None:
        """Close handshakes past their deadline (without a word, as a timeout always
        was) and send the failures' late answers that are due."""
        now = time.monotonic()
        while self._pending:
            hs = next(iter(self._pending.values()))
            if hs.deadline > now:
                break
            self._drop(hs)
        while self._failing and self._failing[0][0] <= now:
            _, conn, answer = self._failing.popleft()
            _refuse(conn, answer)

    def _forget(self, hs: _Handshake) -> None:
        del self._pending[hs.conn]
        self._sel.unregister(hs.conn)

    def _drop(self, hs: _Handshake) -> None:
        self._forget(hs)
        hs.conn.close()

    def _session(self, conn: socket.socket, greeting: bytes) -> None:
        try:
            conn.sendall(greeting)
            self._serve_requests(conn)
        except (_Closed, OSError):
            pass
        except Exception:  # never let one connection take anything else down
            log.exception("connection handler failed")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._sessions.release()

    @staticmethod
    def _send_error(conn: socket.socket, req_id: int | None, exc: HsmError) -> None:
        with contextlib.suppress(OSError):
            _send_frame(conn, {"id": req_id, "error": _error_json(exc)})

    def _serve_requests(self, conn: socket.socket) -> None:
        while True:
            try:
                frame = _recv_frame(conn)
            except _FrameTooLarge:
                self._send_error(conn, None, InvalidInput(
                    f"frame larger than {MAX_FRAME} bytes; closing the connection"))
                return
            reply = self.handle(frame)
            try:
                data = _encode(reply)
            except (TypeError, ValueError):
                log.exception("unencodable reply")
                data = _encode({"id": reply.get("id"), "error": {
                    "code": HsmError.code, "reason": "internal error in the HSM server"}})
            if len(data) > MAX_FRAME:
                data = _encode({"id": reply.get("id"), "error": _error_json(InvalidInput(
                    f"the reply exceeds the {MAX_FRAME}-byte frame limit; ask for less"))})
            _send_raw(conn, data)

    def handle(self, frame: bytes) -> dict[str, Any]:
        """One request frame -> one reply object. Never raises."""
        req_id: int | None = None
        try:
            msg = _decode(frame)
            if not isinstance(msg, dict):
                raise InvalidInput("a request is an object {id, call, args}")
            raw_id = msg.get("id")
            if isinstance(raw_id, int) and not isinstance(raw_id, bool) and 0 <= raw_id < 2**53:
                req_id = raw_id
            else:
                raise InvalidInput("id: must be an integer from 0 to 2**53-1")
            if set(msg) - {"id", "call", "args"}:
                raise InvalidInput("a request has only id, call and args")
            call = msg.get("call")
            handler = _CALLABLE.get(call) if isinstance(call, str) else None
            if handler is None:
                shown = call[:64] if isinstance(call, str) else call
                raise InvalidInput(f"call: {shown!r} is not a remote HSM call")
            return {"id": req_id, "ok": handler(self.hsm, _Args(msg.get("args", {})))}
        except HsmError as exc:
            return {"id": req_id, "error": _error_json(exc)}
        except Exception:
            log.exception("request failed inside the HSM")  # logged here, never sent
            return {"id": req_id, "error": {"code": HsmError.code,
                                            "reason": "internal error in the HSM server"}}


def _listen(family: socket.AddressFamily, target: str | tuple[str, int]) -> socket.socket:
    if isinstance(target, str):
        _clear_stale_socket(target)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(target)
            os.chmod(target, 0o600)  # before listen(): nobody could connect in between
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


def _clear_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidInput(f"address: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left behind by a server that is gone
        return
    except OSError:
        pass
    finally:
        probe.close()
    raise InvalidInput(f"address: another server is listening on {path}")


def serve(hsm: Hsm, address: str, secret: bytes, *, ready: threading.Event | None = None,
          stop: threading.Event | None = None, max_pending: int = MAX_PENDING,
          max_sessions: int = MAX_CONNECTIONS,
          handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Serve ``hsm`` on ``address`` until ``stop`` is set (or forever), a thread per client.

    ``address`` is ``unix:/path/sock`` (created mode 0600, removed on return) or
    ``tcp:127.0.0.1:PORT`` (loopback only). Clients authenticate with an HMAC over a
    fresh nonce, keyed by ``secret``. ``ready`` is set once clients can connect. The
    caller keeps ownership of ``hsm`` (serve does not close it). ``max_pending``
    connections may be authenticating at once, each for at most ``handshake_timeout``
    seconds, and ``max_sessions`` authenticated clients connected (see :class:`_Server`).
    """
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET:
        raise InvalidInput(f"secret: at least {MIN_SECRET} bytes")
    family, target = parse_address(address)
    try:
        listener = _listen(family, target)
    except OSError as exc:
        raise TransportError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    ident = os.stat(target)[stat.ST_INO] if isinstance(target, str) else None
    server = _Server(hsm, secret, max_pending=max_pending, max_sessions=max_sessions,
                     handshake_timeout=handshake_timeout)
    try:
        if ready is not None:
            ready.set()
        server.run(listener, stop)
    finally:
        listener.close()
        if isinstance(target, str):
            with contextlib.suppress(OSError):
                if os.lstat(target).st_ino == ident:
                    os.unlink(target)


# -- client -----------------------------------------------------------------------------


def _value(v: Enum | str | None) -> Any:
    return v.value if isinstance(v, Enum) else v


class _Busy(Exception):
    """The HSM refused a connection for now (its pools are full): worth retrying."""

    def __init__(self, error: HsmError) -> None:
        super().__init__(error.reason)
        self.error = error


def _refusal(doc: Any) -> Exception:
    """The server's error frame in a handshake: a transport error means it is busy."""
    exc = _error_from_json(doc)
    busy = isinstance(doc, dict) and doc.get("code") == TransportError.code
    return _Busy(exc) if busy else exc


def _bytes_arg(value: Any, name: str) -> str:
    if not isinstance(value, bytes):
        raise InvalidInput(f"{name} must be bytes")
    return _b64(value)


def _approval_arg(value: Approval | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Approval) or not isinstance(value.signature, bytes):
        raise InvalidInput("initiation must be an Approval")
    return value.to_json()


class RemoteHsmClient:
    """An :class:`~hsm_emulator.client.HsmClient` talking to ``python -m
    hsm_emulator.remote`` over a Unix socket or loopback TCP.

    The server's refusals are re-raised as the same :class:`HsmError` subclass with the
    same ``reason`` (and ``field`` / ``missing``); transport failures raise
    :class:`TransportError`. One connection, used under a lock; a connection found
    broken is re-established once. A call whose reply was lost is retried only if it
    changes nothing; otherwise the TransportError says its outcome is unknown (an
    ``execute`` can be looked up with :meth:`request_result`).
    """

    #: Calls that change no state: safe to send again after a lost reply.
    _READ_ONLY = frozenset({
        "get_key", "list_keys", "public_key", "address", "attest", "identity_public_key",
        "check_approval", "dry_run", "request_status", "request_result",
        "request_challenge", "audit_entries", "audit_head", "audit_checkpoints",
    })

    def __init__(self, address: str, secret: bytes, *, timeout: float = 120.0,
                 connect_timeout: float = 10.0) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise InvalidInput("secret: bytes")
        self._address = address
        self._family, self._target = parse_address(address)
        self._secret = secret
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._next_id = 0
        self._closed = False
        with self._lock:
            self._sock = self._connect()

    # -- connection -------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        """Connect and authenticate. An HSM busy with other handshakes or clients says so
        and closes; that is retried, backing off, until ``connect_timeout`` has passed -
        its handshake slots free up within HANDSHAKE_TIMEOUT."""
        deadline = time.monotonic() + self._connect_timeout
        pause = 0.02
        while True:
            try:
                return self._open(max(deadline - time.monotonic(), 0.05))
            except _Busy as busy:
                if time.monotonic() + pause >= deadline:
                    raise busy.error from None
            time.sleep(pause)
            pause = min(2 * pause, 0.5)

    def _open(self, timeout: float) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self._target)
            hello = self._frame(sock)
            if "error" in hello:
                raise _refusal(hello["error"])
            if hello.get("protocol") != PROTOCOL:
                raise TransportError(f"the server at {self._address} does not speak {PROTOCOL}")
            nonce = _unb64(hello.get("nonce"), "nonce")
            if len(nonce) != NONCE_BYTES:
                raise TransportError("the server sent a malformed nonce")
            mine = secrets.token_bytes(NONCE_BYTES)
            _send_frame(sock, {"auth": _b64(_mac(self._secret, CLIENT_AUTH_CONTEXT, nonce)),
                               "nonce": _b64(mine)})
            reply = self._frame(sock)
            if "error" in reply:
                raise _refusal(reply["error"])
            ok = reply.get("ok")
            proof = _unb64(ok.get("server") if isinstance(ok, dict) else None, "server")
            if not hmac.compare_digest(_mac(self._secret, SERVER_AUTH_CONTEXT, nonce, mine),
                                       proof):
                raise TransportError(f"the server at {self._address} did not prove it holds "
                                     "the shared secret")
            sock.settimeout(self._timeout)
            return sock
        except HsmError as exc:
            sock.close()
            if isinstance(exc, InvalidInput):  # a malformed handshake from the server
                raise TransportError(f"HSM handshake failed: {exc.reason}") from None
            raise
        except (OSError, _Closed, _FrameTooLarge) as exc:
            sock.close()
            raise TransportError(f"cannot reach the HSM at {self._address}: {exc}") from None
        except _Busy:
            sock.close()
            raise

    @staticmethod
    def _frame(sock: socket.socket) -> dict[str, Any]:
        msg = _decode(_recv_frame(sock))
        if not isinstance(msg, dict):
            raise TransportError("the HSM sent a frame that is not an object")
        return msg

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _usable(self) -> socket.socket:
        """The connection, re-established if the server has closed it meanwhile."""
        sock = self._sock
        if sock is not None:
            try:
                sock.setblocking(False)
                try:
                    sock.recv(1, socket.MSG_PEEK)  # EOF or stray bytes: not usable
                finally:
                    sock.settimeout(self._timeout)
            except BlockingIOError:
                return sock  # nothing to read: the usual, healthy case
            except OSError:
                pass
            self._drop()
        self._sock = self._connect()
        return self._sock

    def _call(self, call: str, args: dict[str, Any]) -> Any:
        with self._lock:
            if self._closed:
                raise TransportError("this HSM client is closed")
            self._next_id += 1
            req_id = self._next_id
            try:
                frame = _encode({"id": req_id, "call": call, "args": args})
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"{call}: arguments are not JSON-serialisable: {exc}"
                                   ) from None
            if len(frame) > MAX_FRAME:
                raise InvalidInput(f"{call}: request exceeds the remote HSM's "
                                   f"{MAX_FRAME}-byte frame limit")
            reply = self._exchange(call, req_id, frame)
        if "error" in reply:
            raise _error_from_json(reply["error"])
        if "ok" not in reply:
            raise TransportError("the HSM's reply has neither ok nor error")
        return reply["ok"]

    def _exchange(self, call: str, req_id: int, frame: bytes) -> dict[str, Any]:
        for attempt in (1, 2):
            sock = self._usable()
            try:
                _send_raw(sock, frame)
            except OSError as exc:
                # sendall failed, so the frame is incomplete and the server never acts on it
                self._drop()
                if attempt == 1:
                    continue
                raise TransportError(f"{call}: cannot send to the HSM: {exc}") from None
            try:
                reply = self._frame(sock)
            except (OSError, _Closed, _FrameTooLarge, InvalidInput) as exc:
                self._drop()
                if attempt == 1 and call in self._READ_ONLY and not isinstance(
                        exc, TimeoutError):
                    continue
                unknown = "" if call in self._READ_ONLY else (
                    "; it may or may not have been performed")
                raise TransportError(f"{call}: no reply from the HSM ({exc}){unknown}"
                                     ) from None
            if reply.get("id") != req_id and not (reply.get("id") is None and "error" in reply):
                self._drop()
                raise TransportError(f"{call}: the HSM answered another request")
            return reply
        raise TransportError(f"{call}: cannot reach the HSM")  # pragma: no cover

    def close(self) -> None:
        """Close this client's connection (the HSM process keeps running)."""
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> RemoteHsmClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @staticmethod
    def _decoded(build: Callable[[], Any]) -> Any:
        try:
            return build()
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise TransportError(f"the HSM sent a malformed result: {exc!r}") from None

    def _key_info(self, call: str, args: dict[str, Any]) -> KeyInfo:
        doc = self._call(call, args)
        result: KeyInfo = self._decoded(lambda: KeyInfo.from_json(doc))
        return result

    def _bytes(self, call: str, args: dict[str, Any]) -> bytes:
        doc = self._call(call, args)
        result: bytes = self._decoded(lambda: base64.b64decode(doc, validate=True))
        return result

    def _execution(self, call: str, args: dict[str, Any]) -> Execution:
        doc = self._call(call, args)
        result: Execution = self._decoded(lambda: Execution.from_json(doc))
        return result

    def _evaluation(self, call: str, args: dict[str, Any]) -> Evaluation:
        doc = self._call(call, args)
        result: Evaluation = self._decoded(lambda: evaluation_from_json(doc))
        return result

    def _text(self, call: str, args: dict[str, Any]) -> str:
        doc = self._call(call, args)
        if not isinstance(doc, str):
            raise TransportError(f"{call}: the HSM sent a malformed result")
        return doc

    # -- the HsmClient calls ----------------------------------------------------------

    def create_key(self, label: str, algorithm: KeyAlgorithm | str, *,
                   key_size: int | None = None,
                   attributes: KeyAttributes | dict[str, Any] | None = None,
                   policy: dict[str, Any] | None = None) -> KeyInfo:
        attrs = attributes.to_json() if isinstance(attributes, KeyAttributes) else attributes
        return self._key_info("create_key", {
            "label": label, "algorithm": _value(algorithm), "key_size": key_size,
            "attributes": attrs, "policy": policy})

    def derive_key(self, parent: str, path: str, label: str,
                   policy: dict[str, Any] | None = None) -> KeyInfo:
        return self._key_info("derive_key", {"parent": parent, "path": path, "label": label,
                                             "policy": policy})

    def get_key(self, label: str) -> KeyInfo:
        return self._key_info("get_key", {"label": label})

    def list_keys(self) -> list[str]:
        doc = self._call("list_keys", {})
        if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
            raise TransportError("list_keys: the HSM sent a malformed result")
        return doc

    def public_key(self, label: str, path: str = "") -> bytes:
        return self._bytes("public_key", {"label": label, "path": path})

    def address(self, label: str, kind: AddressKind | str, network: Network | str,
                path: str = "") -> str:
        return self._text("address", {"label": label, "kind": _value(kind),
                                      "network": _value(network), "path": path})

    def invalidate_key(self, label: str) -> KeyInfo:
        return self._key_info("invalidate_key", {"label": label})

    def restore_key(self, label: str, so_passphrase: str) -> KeyInfo:
        return self._key_info("restore_key", {"label": label, "so_passphrase": so_passphrase})

    def destroy_key(self, label: str, so_passphrase: str) -> KeyInfo:
        return self._key_info("destroy_key", {"label": label, "so_passphrase": so_passphrase})

    def export_private_key_unsafe(self, label: str, so_passphrase: str) -> bytes:
        return self._bytes("export_private_key_unsafe",
                           {"label": label, "so_passphrase": so_passphrase})

    def attest(self, label: str) -> Attestation:
        doc = self._call("attest", {"label": label})
        result: Attestation = self._decoded(lambda: Attestation.from_json(doc))
        return result

    def identity_public_key(self) -> bytes:
        return self._bytes("identity_public_key", {})

    def begin(self, label: str, action: Action | str = Action.USE, payload: bytes = b"",
              payload_type: str = "UNSPECIFIED", scheme: SignScheme | str | None = None, *,
              fee_cap: int | None = None, new_policy: dict[str, Any] | None = None,
              initiator: str = "", request_id: str | None = None,
              initiation: Approval | None = None) -> Challenge:
        doc = self._call("begin", {
            "label": label, "action": _value(action), "payload": _bytes_arg(payload, "payload"),
            "payload_type": payload_type, "scheme": _value(scheme), "fee_cap": fee_cap,
            "new_policy": new_policy, "initiator": initiator, "request_id": request_id,
            "initiation": _approval_arg(initiation)})
        result: Challenge = self._decoded(lambda: Challenge.from_json(doc))
        return result

    def check_approval(self, request_id: str, approval: Approval) -> str:
        return self._text("check_approval", {"request_id": request_id,
                                             "approval": approval.to_json()})

    def execute(self, request_id: str, approvals: Sequence[Approval] = (), *,
                payload: bytes | None = None) -> Execution:
        return self._execution("execute", {
            "request_id": request_id, "approvals": [a.to_json() for a in approvals],
            "payload": None if payload is None else _bytes_arg(payload, "payload")})

    def sign_now(self, label: str, payload: bytes, payload_type: str = "UNSPECIFIED",
                 scheme: SignScheme | str | None = None, *,
                 request_id: str | None = None,
                 initiation: Approval | None = None) -> Execution:
        return self._execution("sign_now", {
            "label": label, "payload": _bytes_arg(payload, "payload"),
            "payload_type": payload_type, "scheme": _value(scheme), "request_id": request_id,
            "initiation": _approval_arg(initiation)})

    def sign_batch(self, label: str, payloads: Sequence[bytes],
                   payload_type: str = "UNSPECIFIED", scheme: SignScheme | str | None = None,
                   ) -> list[Execution]:
        doc = self._call("sign_batch", {
            "label": label,
            "payloads": [_bytes_arg(p, f"payloads[{i}]") for i, p in enumerate(payloads)],
            "payload_type": payload_type, "scheme": _value(scheme)})
        result: list[Execution] = self._decoded(lambda: [Execution.from_json(d) for d in doc])
        return result

    def dry_run(self, label: str, payload: bytes = b"", payload_type: str = "UNSPECIFIED",
                action: Action | str = Action.USE, *, approvers: Sequence[str] = (),
                elapsed: float = 0.0) -> Evaluation:
        return self._evaluation("dry_run", {
            "label": label, "payload": _bytes_arg(payload, "payload"),
            "payload_type": payload_type, "action": _value(action),
            "approvers": list(approvers), "elapsed": elapsed})

    def request_status(self, request_id: str, approvals: Sequence[Approval] = (),
                       rejected: Sequence[str] = ()) -> Evaluation:
        return self._evaluation("request_status", {
            "request_id": request_id, "approvals": [a.to_json() for a in approvals],
            "rejected": list(rejected)})

    def cancel(self, request_id: str, reason: str = "") -> None:
        self._call("cancel", {"request_id": request_id, "reason": reason})

    def request_result(self, request_id: str) -> Execution:
        return self._execution("request_result", {"request_id": request_id})

    def request_challenge(self, request_id: str) -> Challenge:
        doc = self._call("request_challenge", {"request_id": request_id})
        result: Challenge = self._decoded(lambda: Challenge.from_json(doc))
        return result

    def audit_entries(self, start: int = 1, limit: int = 1000) -> list[AuditEntry]:
        """Fetched in pages of up to :data:`AUDIT_PAGE`; the log is append-only, so the
        pages join up exactly as one call's result would. The HSM returns fewer entries
        than asked when no more fit in a reply frame, so only an empty page ends the log
        before ``limit``."""
        if not isinstance(start, int) or not isinstance(limit, int) or limit <= 0:
            return self._audit_page(start, limit)  # the HSM's own answer, in one call
        out: list[AuditEntry] = []
        remaining = min(limit, AUDIT_MAX)
        while remaining > 0:
            page = self._audit_page(start, min(remaining, AUDIT_PAGE))
            if not page:
                break
            out.extend(page)
            remaining -= len(page)
            start = page[-1].seq + 1
        return out

    def _audit_page(self, start: int, limit: int) -> list[AuditEntry]:
        doc = self._call("audit_entries", {"start": start, "limit": limit})
        result: list[AuditEntry] = self._decoded(lambda: [AuditEntry.from_json(d) for d in doc])
        return result

    def audit_head(self) -> SignedHead:
        doc = self._call("audit_head", {})
        result: SignedHead = self._decoded(lambda: SignedHead.from_json(doc))
        return result

    def audit_checkpoints(self) -> list[SignedHead]:
        doc = self._call("audit_checkpoints", {})
        result: list[SignedHead] = self._decoded(lambda: [SignedHead.from_json(d) for d in doc])
        return result


if TYPE_CHECKING:
    def _conforms(client: RemoteHsmClient) -> HsmClient:
        return client  # mypy: RemoteHsmClient implements the whole HsmClient protocol


# -- test clock -------------------------------------------------------------------------


class FileClock:
    """TEST ONLY: a clock read from a file of epoch seconds on every :meth:`now`, so a
    test process can move the time of an HSM running in another process."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._last: float | None = None
        self.now()

    def now(self) -> float:
        try:
            value = float(self._path.read_text(encoding="ascii").strip())
            if not math.isfinite(value):
                raise ValueError("not finite")
        except (OSError, ValueError, UnicodeDecodeError):
            if self._last is None:
                raise InvalidInput(f"clock file {self._path} holds no epoch seconds") from None
            return self._last  # caught mid-rewrite: the last time read stands
        self._last = value
        return value


# -- process entry ----------------------------------------------------------------------


def read_secret_file(path: Path) -> bytes:
    """The shared socket secret, as both ends read it: the file's bytes with surrounding
    white space (a trailing newline) removed, private to its owner, long enough."""
    st = path.stat()
    if os.name == "posix" and st.st_mode & 0o077:
        raise InvalidInput(f"secret file {path} is readable by group or others; chmod 600 it")
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET:
        raise InvalidInput(f"secret file {path}: at least {MIN_SECRET} bytes")
    return secret


def _power_of_two(text: str) -> int:
    n = int(text)
    if n < 2 or n & (n - 1):
        raise argparse.ArgumentTypeError("a power of two")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hsm_emulator.remote",
        description="Run the emulated HSM as its own process, serving HsmClient calls. The "
                    "store passphrase comes from SKA_HSM_PASSPHRASE; the security officer "
                    "passphrase from SKA_HSM_SO_PASSPHRASE, needed only to initialise a new "
                    "store. Both are removed from the environment once read.")
    p.add_argument("--store", required=True, type=Path, help="the HSM's SQLite store")
    p.add_argument("--listen", required=True, metavar="ADDRESS",
                   help="unix:/path/to/sock (created mode 0600) or tcp:127.0.0.1:PORT "
                        "(loopback hosts only)")
    p.add_argument("--secret-file", required=True, type=Path, metavar="FILE",
                   help="the clients' shared authentication secret (at least 16 bytes, "
                        "surrounding whitespace ignored; must not be group/other-readable)")
    p.add_argument("--allow-export", action="store_true",
                   help="when initialising a new store only: allow exporting keys that are "
                        "marked exportable (needs the security officer)")
    test = p.add_argument_group("test-only options", "for automated tests; never with real keys")
    test.add_argument("--clock-file", type=Path, metavar="PATH",
                      help="TEST ONLY: read the HSM's time (float epoch seconds) from PATH on "
                           "every use instead of the system clock, so a test can advance it")
    test.add_argument("--scrypt-n", type=_power_of_two, default=SCRYPT_N, metavar="N",
                      help=f"TEST ONLY: scrypt cost for a new store's passphrase (default "
                           f"{SCRYPT_N}); a cheap value makes a stolen store easy to open")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    passphrase = os.environ.pop("SKA_HSM_PASSPHRASE", "")
    so_passphrase = os.environ.pop("SKA_HSM_SO_PASSPHRASE", "") or None
    if not passphrase:
        parser.error("set SKA_HSM_PASSPHRASE to the store passphrase")
    try:
        parse_address(args.listen)
        secret = read_secret_file(args.secret_file)
        clock: Clock = FileClock(args.clock_file) if args.clock_file else SystemClock()
        # The chains' pure decoders (networks from CUSTODY_NETWORKS): the HSM decodes
        # every payload it signs itself.
        from chains.registry import registry

        hsm = Hsm.open(args.store, Passphrase(passphrase, scrypt_n=args.scrypt_n),
                       so_passphrase=so_passphrase, allow_export=args.allow_export,
                       clock=clock, decoders=registry())
    except (HsmError, OSError) as exc:
        print(f"hsm-server: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="hsm-server: %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = threading.Event()

    def announce() -> None:
        if ready.wait():
            log.info("HSM %s listening on %s", hsm.hsm_id, args.listen)

    threading.Thread(target=announce, daemon=True).start()
    try:
        serve(hsm, args.listen, secret, ready=ready, stop=stop)
    except HsmError as exc:
        print(f"hsm-server: {exc}", file=sys.stderr)
        return 1
    finally:
        with hsm.locked():
            hsm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
