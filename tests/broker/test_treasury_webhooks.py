"""Webhooks: an outbox written with each state change, HMAC-signed, retried with backoff."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from custody.db import make_engine, make_sessions
from custody.errors import BadRequest, NotFound
from custody.treasury import webhooks
from custody.treasury.models import WebhookDelivery


class Receiver:
    """A business application's endpoint: answers with the queued status codes."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.seen: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    made: sessionmaker[Session] = make_sessions(make_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    return made


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _event(sessions: sessionmaker[Session], tenant: str, state: str, now: float) -> None:
    with sessions.begin() as s:
        webhooks.enqueue(s, tenant, "t-1", {"type": "transfer.state",
                                            "transfer": {"id": "t-1", "state": state}}, now)


def test_signed_delivery_retried_with_backoff(sessions: sessionmaker[Session],
                                              receiver: Receiver) -> None:
    clock = Clock()
    endpoint, secret = webhooks.register(sessions, "desk", receiver.url)
    webhooks.register(sessions, "other-desk", receiver.url)  # another tenant's: not called
    _event(sessions, "desk", "signed", clock.now)
    dispatcher = webhooks.Dispatcher(sessions, clock)
    receiver.codes = [500, 503]
    assert dispatcher.deliver_due() == 0  # HTTP 500: recorded, retried after 1 s
    assert dispatcher.deliver_due() == 0  # not due yet
    clock.now += 1
    assert dispatcher.deliver_due() == 0  # 503; next after 2 s more
    clock.now += 1.5
    assert dispatcher.deliver_due() == 0
    clock.now += 0.5
    assert dispatcher.deliver_due() == 1
    [d] = webhooks.deliveries(sessions, "desk", endpoint.id)
    assert (d.status, d.attempts, d.last_status_code) == ("delivered", 3, 200)
    assert len(receiver.seen) == 3
    headers, body = receiver.seen[-1]
    assert json.loads(body)["transfer"]["state"] == "signed"
    assert webhooks.verify(secret, headers["x-custody-signature"], body, clock.now)
    assert not webhooks.verify(secret, headers["x-custody-signature"], body + b" ", clock.now)
    assert not webhooks.verify("another secret", headers["x-custody-signature"], body,
                               clock.now)
    assert not webhooks.verify(secret, headers["x-custody-signature"], body, clock.now + 3600)
    assert not webhooks.verify(secret, "garbage", body, clock.now)
    assert headers["x-custody-event-id"] == d.event_id
    with pytest.raises(NotFound):  # another tenant cannot read this endpoint's deliveries
        webhooks.deliveries(sessions, "other-desk", endpoint.id)


def test_gives_up_after_max_attempts(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    webhooks.register(sessions, "desk", "http://127.0.0.1:9/nobody-listens")
    _event(sessions, "desk", "broadcast", clock.now)
    dispatcher = webhooks.Dispatcher(sessions, clock)
    for _ in range(webhooks.MAX_ATTEMPTS + 3):
        dispatcher.deliver_due()
        clock.now += webhooks.MAX_BACKOFF
    with sessions() as s:
        d = s.scalars(select(WebhookDelivery)).one()
    assert (d.status, d.attempts) == ("failed", webhooks.MAX_ATTEMPTS)
    assert d.last_error and "Connect" in d.last_error


@pytest.mark.parametrize("url", ["ftp://x/y", "http://", "javascript:alert(1)", "not a url",
                                 "http://" + "a" * 2100])
def test_bad_urls_are_refused(sessions: sessionmaker[Session], url: str) -> None:
    with pytest.raises(BadRequest):
        webhooks.register(sessions, "desk", url)
