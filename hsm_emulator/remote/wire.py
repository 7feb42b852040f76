"""What travels on the socket: addresses, frames, limits, base64, MACs, errors as JSON.

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
   objects, results as their ``to_json`` forms (each call's arguments and result are
   declared once, in :mod:`hsm_emulator.remote.calls`).
   ``audit_entries`` returns as many of the entries asked for as fit in one reply frame.

The channel is authenticated but not encrypted: the server only listens on a Unix socket
(created mode 0600) or on a loopback TCP address.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import HsmError, InvalidInput, TransportError

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
#: The HSM's own cap on ``audit_entries``' limit (see ``hsm_emulator.auditing.MAX_PAGE``).
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



# -- the shared secret ------------------------------------------------------------------


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

