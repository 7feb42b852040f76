"""Slow peers before authentication cannot lock authenticated clients out of the HSM.

Finding (high): 64 connections that announce an authentication frame and trickle a byte
every few seconds held every connection slot of ``python -m hsm_emulator.remote``: the
handshake timeout was per ``recv`` and unauthenticated peers counted against the same 64
slots as the broker's connections, so the broker could not reconnect.

The acceptance test keeps 200 such peers open against the HSM process (reopening any the
server closes), while four authenticated clients keep calling, and requires a new client
to complete its handshake and a call within 2 s, four times over 6 s - more than one
handshake deadline, so the server is also cutting and the attacker reopening peers. The other tests run
the server in-process with small limits and measure the overall handshake deadline and
the refusal of unauthenticated connections once their own pool is full. Everything is
loopback (Unix sockets) and bounded in time.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import selectors
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hsm_emulator import Hsm
from hsm_emulator.errors import TransportError
from hsm_emulator.remote import MAX_AUTH_FRAME, RemoteHsmClient, serve
from tests.remote_kit import hsm_process

SECRET = b"0123456789abcdef0123456789abcdef"
#: Seconds between a slow peer's bytes: well inside the old per-recv timeout (10 s).
TRICKLE = 1.0


class SlowPeers:
    """``n`` connections that read nothing, announce a full-size authentication frame and
    send one byte of it every :data:`TRICKLE` seconds; one the server closes is reopened
    at once, so the server faces ``n`` slow peers all the time."""

    def __init__(self, path: str, n: int) -> None:
        self._path, self._n = path, n
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slow-peers")
        self.opened = 0
        self.closed_by_server = 0

    @property
    def open(self) -> int:
        return len(self._sel.get_map())

    def __enter__(self) -> SlowPeers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def wait_opened(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.opened < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.opened >= n

    def _run(self) -> None:
        while not self._stop.is_set():
            self._top_up()
            for key, _ in self._sel.select(0.05):
                self._drain(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for key in list(self._sel.get_map().values()):
                if key.data <= now:
                    self._trickle(key.fileobj, now)  # type: ignore[arg-type]

    def _top_up(self) -> None:
        for _ in range(self._n - self.open):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(1.0)
                sock.connect(self._path)
                sock.sendall(struct.pack(">I", MAX_AUTH_FRAME))  # a frame announced...
                sock.setblocking(False)
            except OSError:
                sock.close()
                time.sleep(0.05)
                return
            self.opened += 1
            self._sel.register(sock, selectors.EVENT_READ, time.monotonic() + TRICKLE)

    def _drain(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return  # the server's hello (or an error frame): ignored
        except BlockingIOError:
            return
        except OSError:
            pass
        self._drop(sock)

    def _trickle(self, sock: socket.socket, now: float) -> None:
        try:
            sock.send(b" ")  # ...and sent one byte at a time
        except OSError:
            self._drop(sock)
            return
        self._sel.modify(sock, selectors.EVENT_READ, now + TRICKLE)

    def _drop(self, sock: socket.socket) -> None:
        self._sel.unregister(sock)
        sock.close()
        self.closed_by_server += 1


class Callers:
    """Authenticated clients connected before the attack, each calling in a loop."""

    def __init__(self, clients: list[RemoteHsmClient]) -> None:
        self._clients = clients
        self._stop = threading.Event()
        self.latencies: list[list[float]] = [[] for _ in clients]
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(len(clients))]

    def __enter__(self) -> Callers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self._clients[i].get_key("k")
            except Exception as exc:
                self.errors.append(exc)
                return
            self.latencies[i].append(time.monotonic() - start)
            time.sleep(0.02)


def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _new_client_gets_in(address: str, secret: bytes) -> float | str:
    """Seconds from connecting to the end of a first call (at most 2 s allowed), or why
    the client did not get in."""
    start = time.monotonic()
    try:
        with RemoteHsmClient(address, secret, timeout=2.0, connect_timeout=2.0) as client:
            assert client.get_key("k").label == "k"
    except TransportError as exc:
        return f"after {time.monotonic() - start:.2f} s: {exc}"
    return time.monotonic() - start


@pytest.mark.timeout(60)
def test_200_slow_peers_do_not_lock_out_authenticated_clients(tmp_path: Path) -> None:
    with hsm_process(tmp_path) as server:
        with server.connect() as admin:
            admin.create_key("k", "SECP256K1")
        existing = [server.connect(timeout=5.0) for _ in range(4)]
        entry_times: list[float | str] = []
        open_then: list[int] = []
        try:
            with Callers(existing) as callers, SlowPeers(str(server.sock), 200) as peers:
                assert peers.wait_opened(200, 10), f"only {peers.opened} slow peers connected"
                time.sleep(0.5)
                for _ in range(4):  # spread over more than one handshake deadline
                    # when the server cuts a cohort at its deadline, the attackers reconnect
                    # at once; measure while they are back (not in that instant's gap)
                    _until(lambda: peers.open >= 150, 2.0)
                    open_then.append(peers.open)
                    entry_times.append(_new_client_gets_in(server.address, server.secret))
                    time.sleep(1.5)
                opened, closed = peers.opened, peers.closed_by_server
        finally:
            for c in existing:
                c.close()
        assert server.alive()
    shown = [round(t, 4) if isinstance(t, float) else t for t in entry_times]
    print(f"new clients got in after {shown} s with {open_then} slow peers open; "
          f"{opened} slow connections opened, {closed} closed by the server; existing "
          f"clients' calls: {[len(c) for c in callers.latencies]}, slowest "
          f"{max(max(c, default=0) for c in callers.latencies):.3f} s")
    assert not callers.errors, callers.errors
    assert all(isinstance(t, float) and t < 2.0 for t in entry_times), entry_times
    assert min(open_then) >= 150, open_then  # the attack was on while they got in
    assert opened >= 200 and closed >= 100  # slow peers were cut at the deadline, reopened
    for calls in callers.latencies:  # existing connections carried on throughout
        assert len(calls) >= 20 and max(calls) < 2.0, (len(calls), max(calls, default=0))


# -- the mechanics, with small limits on an in-process server ----------------------------


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ska-", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving(hsm: Hsm, address: str, **limits: Any) -> Iterator[None]:
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(hsm, address, SECRET), daemon=True,
                              kwargs={"ready": ready, "stop": stop, **limits})
    thread.start()
    try:
        assert ready.wait(10)
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def _read_frame(sock: socket.socket) -> Any:
    header = sock.recv(4, socket.MSG_WAITALL)
    if len(header) < 4:
        raise EOFError
    return json.loads(sock.recv(struct.unpack(">I", header)[0], socket.MSG_WAITALL))


def _slow(path: Path) -> socket.socket:
    """A peer that read the hello and announced its authentication frame."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    assert "nonce" in _read_frame(sock)
    sock.sendall(struct.pack(">I", 200))
    return sock


def _closed_within(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(60)
def test_the_whole_handshake_has_one_deadline(hsm: Hsm, sockdir: Path) -> None:
    path = sockdir / "hsm.sock"
    with serving(hsm, f"unix:{path}", handshake_timeout=1.0):
        start = time.monotonic()
        sock = _slow(path)
        closed_at = None
        while time.monotonic() - start < 5:  # a byte every 0.2 s, far inside any per-recv wait
            try:
                sock.send(b" ")
            except OSError:
                closed_at = time.monotonic() - start
                break
            if _closed_within(sock, 0.2):
                closed_at = time.monotonic() - start
                break
        sock.close()
        assert closed_at is not None and 0.9 <= closed_at < 2.0, closed_at
        with RemoteHsmClient(f"unix:{path}", SECRET) as client:  # honest clients: ms
            assert client.list_keys() == []


@pytest.mark.timeout(60)
def test_a_full_pending_pool_refuses_new_peers_not_sessions(hsm: Hsm, sockdir: Path) -> None:
    path, address = sockdir / "hsm.sock", f"unix:{sockdir / 'hsm.sock'}"
    with serving(hsm, address, max_pending=4, handshake_timeout=2.0):
        session = RemoteHsmClient(address, SECRET)
        slow = [_slow(path) for _ in range(4)]
        try:
            start = time.monotonic()
            extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            extra.settimeout(5)
            extra.connect(str(path))
            busy = _read_frame(extra)  # answered at once, not queued
            assert time.monotonic() - start < 0.5
            assert busy["error"]["code"] == "hsm.transport_error", busy
            assert "busy" in busy["error"]["reason"] and _closed_within(extra, 1.0)
            extra.close()
            assert session.list_keys() == []  # the authenticated session is untouched
            start = time.monotonic()  # a new client retries until a slot is free
            with RemoteHsmClient(address, SECRET, connect_timeout=5.0) as late:
                assert late.list_keys() == []
            assert time.monotonic() - start < 3.0
        finally:
            for s in slow:
                s.close()
            session.close()


@pytest.mark.timeout(60)
def test_failed_authentication_still_answers_and_counts(hsm: Hsm, sockdir: Path) -> None:
    path = sockdir / "hsm.sock"
    with serving(hsm, f"unix:{path}"):
        for _ in range(2):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.connect(str(path))
            nonce = base64.b64decode(_read_frame(sock)["nonce"])
            mac = hmac.new(b"wrong-secret-wrong-secret", b"ska-hsm-auth-v1" + nonce,
                           hashlib.sha256).digest()
            frame = json.dumps({"auth": base64.b64encode(mac).decode(),
                                "nonce": base64.b64encode(os.urandom(32)).decode()}).encode()
            start = time.monotonic()
            sock.sendall(struct.pack(">I", len(frame)) + frame)
            reply = _read_frame(sock)
            assert reply["error"]["code"] == "hsm.authentication_failed"
            assert time.monotonic() - start >= 0.15  # answered late, to slow guessing
            assert _closed_within(sock, 2.0)
            sock.close()
        with RemoteHsmClient(f"unix:{path}", SECRET) as client:
            assert client.list_keys() == []
