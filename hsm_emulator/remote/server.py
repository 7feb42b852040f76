"""The HSM's side of the socket: accepting, handshakes, sessions, rate limiting, dispatch.

Connections still authenticating and authenticated ones are held apart (see
:class:`_Server`): peers that never finish a handshake fill only a pool of their own,
without a thread each, so they cannot take an authenticated client's slot or delay its
calls. A new client gets in at once while fewer than :data:`MAX_PENDING` peers are
authenticating; past that it is told "busy" and retries as their deadlines free slots.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..client import CALLS
from ..errors import AuthenticationFailed, HsmError, InvalidInput, TransportError
from ..hsm import Hsm
from .calls import TABLE, Call, _Args
from .wire import (
    _HEADER,
    AUTH_FAILURE_DELAY,
    AUTH_FAILURES,
    AUTH_WINDOW,
    CLIENT_AUTH_CONTEXT,
    HANDSHAKE_TIMEOUT,
    MAX_AUTH_FRAME,
    MAX_CONNECTIONS,
    MAX_FRAME,
    MAX_PENDING,
    MIN_SECRET,
    NONCE_BYTES,
    PROTOCOL,
    SERVER_AUTH_CONTEXT,
    _b64,
    _Closed,
    _decode,
    _encode,
    _error_frame,
    _error_json,
    _frame_bytes,
    _FrameTooLarge,
    _mac,
    _recv_frame,
    _refuse,
    _send_frame,
    _send_raw,
    _unb64,
    parse_address,
)

log = logging.getLogger("hsm_emulator.remote")


# -- one handler per call (no getattr on names from the wire) ---------------------------


_Handler = Callable[[Hsm, _Args], Any]


def _handler(call: Call) -> _Handler:
    """The server side of ``call``, driven by its table entry: read every argument with
    its strict check, refuse unknown ones, convert, call the HSM, encode the result."""
    params, positional = call.params, call.positional
    keywords = tuple(p.name for p in params[positional:])
    converts = tuple((i, p.kind.convert) for i, p in enumerate(params) if p.kind.convert)
    encode, name = call.result.encode, call.name

    def handle(hsm: Hsm, a: _Args) -> Any:
        values = [p.kind.read(a, p.name, p.default) for p in params]
        a.done()
        for i, convert in converts:
            values[i] = convert(values[i])
        method = getattr(hsm, name)  # a name from the table, never from the wire
        return encode(method(*values[:positional],
                             **dict(zip(keywords, values[positional:], strict=True))))

    handle.__name__ = handle.__qualname__ = f"_{name}"
    return handle


#: Every HsmClient call but ``close`` (a client closes its connection, never the HSM).
HANDLERS: dict[str, _Handler] = {name: _handler(call) for name, call in TABLE.items()}
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
