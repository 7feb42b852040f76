"""The caller's side of the socket: :class:`RemoteHsmClient`.

Its HsmClient methods are stubs made from the call table (:mod:`.calls`): each takes the
``HsmClient`` method's own signature, encodes its arguments by their kinds, sends the
call and decodes the result as the table says.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import inspect
import secrets
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ..audit import AuditEntry
from ..client import HsmClient
from ..errors import HsmError, InvalidInput, TransportError
from .calls import _MISSING, TABLE
from .wire import (
    AUDIT_MAX,
    AUDIT_PAGE,
    CLIENT_AUTH_CONTEXT,
    MAX_FRAME,
    NONCE_BYTES,
    PROTOCOL,
    SERVER_AUTH_CONTEXT,
    _b64,
    _Closed,
    _decode,
    _encode,
    _error_from_json,
    _FrameTooLarge,
    _mac,
    _recv_frame,
    _send_frame,
    _send_raw,
    _unb64,
    parse_address,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")


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



def _stub(method: Callable[Concatenate[Any, _P], _R]
          ) -> Callable[Concatenate[RemoteHsmClient, _P], _R]:
    """The client method for the HsmClient ``method``: its signature, its table entry
    (arguments encoded by their kinds, in order, every one sent; the result decoded)."""
    call = TABLE[method.__name__]
    signature = inspect.signature(method)
    params, positional = call.params, call.positional
    names = frozenset(p.name for p in params)
    decode, name = call.result.decode, call.name

    def stub(self: RemoteHsmClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if len(args) > positional or not kwargs.keys() <= names:
            signature.bind(self, *args, **kwargs)  # raises the TypeError Python would
        wire: dict[str, Any] = {}
        for i, p in enumerate(params):
            if i < len(args):
                if p.name in kwargs:
                    signature.bind(self, *args, **kwargs)
                value = args[i]
            else:
                value = kwargs.get(p.name, p.client_default)
                if value is _MISSING:
                    signature.bind(self, *args, **kwargs)
            wire[p.name] = p.kind.encode(value, p.name)
        result: _R = decode(name, self._call(name, wire))
        return result

    functools.update_wrapper(stub, method)
    stub.__qualname__ = f"RemoteHsmClient.{name}"
    return stub


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
    #: Calls that change no state: safe to send again after a lost reply.
    _READ_ONLY = frozenset(name for name, call in TABLE.items() if call.read_only)

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

    # -- the HsmClient calls (see the call table) -------------------------------------

    create_key = _stub(HsmClient.create_key)
    derive_key = _stub(HsmClient.derive_key)
    get_key = _stub(HsmClient.get_key)
    list_keys = _stub(HsmClient.list_keys)
    public_key = _stub(HsmClient.public_key)
    address = _stub(HsmClient.address)
    officer_set = _stub(HsmClient.officer_set)
    officer_begin = _stub(HsmClient.officer_begin)
    officer_challenge = _stub(HsmClient.officer_challenge)
    officer_execute = _stub(HsmClient.officer_execute)
    restore_backup = _stub(HsmClient.restore_backup)
    invalidate_key = _stub(HsmClient.invalidate_key)
    restore_key = _stub(HsmClient.restore_key)
    destroy_key = _stub(HsmClient.destroy_key)
    export_private_key_unsafe = _stub(HsmClient.export_private_key_unsafe)
    attest = _stub(HsmClient.attest)
    identity_public_key = _stub(HsmClient.identity_public_key)
    begin = _stub(HsmClient.begin)
    check_approval = _stub(HsmClient.check_approval)
    execute = _stub(HsmClient.execute)
    approve = _stub(HsmClient.approve)
    sign_now = _stub(HsmClient.sign_now)
    sign_batch = _stub(HsmClient.sign_batch)
    dry_run = _stub(HsmClient.dry_run)
    request_status = _stub(HsmClient.request_status)
    cancel = _stub(HsmClient.cancel)
    request_result = _stub(HsmClient.request_result)
    request_challenge = _stub(HsmClient.request_challenge)
    audit_head = _stub(HsmClient.audit_head)
    audit_checkpoints = _stub(HsmClient.audit_checkpoints)
    address_list_begin = _stub(HsmClient.address_list_begin)
    address_list_add = _stub(HsmClient.address_list_add)
    address_list_finish = _stub(HsmClient.address_list_finish)
    address_list_discard = _stub(HsmClient.address_list_discard)
    address_list_info = _stub(HsmClient.address_list_info)

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
        call = TABLE["audit_entries"]
        result: list[AuditEntry] = call.result.decode(
            call.name, self._call(call.name, {"start": start, "limit": limit}))
        return result


if TYPE_CHECKING:
    def _conforms(client: RemoteHsmClient) -> HsmClient:
        return client  # mypy: RemoteHsmClient implements the whole HsmClient protocol
