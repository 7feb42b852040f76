"""A creating call whose process dies half way, retried with its Idempotency-Key.

Before, the key stayed "in progress" for ever: nothing was done twice, but the client
could never learn the outcome (the kill loop counted 16-17 such creates per 50
iterations, one of them an auto-tier signature with no broker row). Now the reservation
holds a ticket that becomes the HSM request id; once its lease runs out, the next retry
takes over and adopts what the HSM did. Each case kills the app at a chosen point (an
exception nothing catches), opens a fresh app on the same files, retries, and checks the
HSM's own audit log: one signature per request, and the retry answers that request.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from approvals_app.auth import issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody import idempotency
from custody.db import IdempotencyRecord, make_engine, make_sessions
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import TransportError
from tests.api.test_api_tutorial import SECRET
from tests.helpers import Approver, tiered_policy
from tests.treasury_kit import answer


class Crash(BaseException):
    """The process dies here (no ``except Exception`` in the code under test sees it)."""


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(SECRET, f"{role}-user", "desk-1", [role])}


class App:
    """The API process on files that outlive it: started, killed, started again."""

    def __init__(self, tmp: Path) -> None:
        self.settings = Settings(database_url=f"sqlite:///{tmp / 'broker.sqlite'}",
                                 hsm_store=tmp / "hsm.sqlite", hsm_passphrase="idem test",
                                 hsm_so_passphrase="idempotency so", jwt_secret=SECRET)
        self.client = self._start()

    def _start(self) -> TestClient:
        client = TestClient(create_app(self.settings, scheduler=False))
        client.__enter__()
        return client

    @property
    def state(self) -> Any:
        return self.client.app.state  # type: ignore[attr-defined]

    def kill_and_restart(self) -> None:
        hsm = self.state.hsm
        with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
            self.client.__exit__(None, None, None)
        hsm.close()
        self.client = self._start()

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    def signatures(self, request_id: str) -> int:
        """Successful signing operations the HSM logged for this request id."""
        return sum(1 for e in self.state.hsm.audit_entries(1, 100_000)
                   if e.event.get("op") in ("sign.now", "request.execute")
                   and e.event.get("requestId") == request_id and e.event.get("result") == "ok")

    def count(self, table: str) -> int:
        with self.state.broker.sessions() as s:
            return int(s.execute(text(f"SELECT count(*) FROM {table}")).scalar())


class Clock:
    """The idempotency leases' clock, moved by the test (no sleeping, no timing races)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def lease_runs_out(self) -> None:
        self.t += idempotency.LEASE_SECONDS + 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(idempotency, "now", c)
    return c


@pytest.fixture
def app(tmp_path: Path, people: dict[str, Approver], clock: Clock) -> Iterator[App]:
    a = App(tmp_path)
    r = a.client.post("/v1/key", json={
        "label": "treasury", "algorithm": "EC", "curveOid": "1.3.132.0.10",
        "policy": tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]])},
        headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    yield a
    a.close()


def sign_body(amount: int, nonce: int) -> dict[str, Any]:
    payload = base64.b64encode(transfer_payload("TST", amount, "bob", 1, nonce)).decode()
    return {"signRequest": {"payload": payload, "payloadType": "TEST_TRANSFER",
                            "signKeyName": "treasury"}}


def post_sign(app: App, body: dict[str, Any], key: str) -> Any:
    return app.client.post("/v1/sign", json=body,
                           headers=bearer("business") | {"Idempotency-Key": key})


def die_once(target: Any, name: str, exc: BaseException | None = None,
             after: bool = True) -> list[bool]:
    """Make ``target.name`` die once: after doing its work (default) or before."""
    original: Callable[..., Any] = getattr(target, name)
    fired: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if fired:
            return original(*args, **kwargs)
        fired.append(True)
        if after:
            original(*args, **kwargs)
        raise exc if exc is not None else Crash(name)

    setattr(target, name, wrapper)
    return fired


def crash(app: App, body: dict[str, Any], key: str, fired: list[bool]) -> None:
    """Post and die at the armed point. The test client's event-loop portal reports the
    death either as the ``Crash`` itself or, when the uncaught BaseException tears the
    portal down first, as its cancellation (about 1 run in 8): both are the process dying,
    and ``fired`` proves it died where the test put the crash."""
    with pytest.raises((Crash, concurrent.futures.CancelledError)):
        post_sign(app, body, key)
    assert fired == [True]


@pytest.mark.parametrize("tier, amount", [("auto", 50), ("medium", 1000)])
def test_a_create_cut_short_after_the_hsm_acted_is_finished_by_the_retry(
        app: App, clock: Clock, people: dict[str, Approver], tier: str, amount: int) -> None:
    body = sign_body(amount, 1)
    # the HSM signed (auto) or opened the request (medium); the broker never recorded it
    fired = die_once(app.state.hsm, "sign_now" if tier == "auto" else "begin")
    crash(app, body, "crash-1", fired)
    app.kill_and_restart()
    assert app.count("sign_requests") == 0  # the HSM acted; the broker knows nothing

    early = post_sign(app, body, "crash-1")  # the dead attempt's lease still runs
    assert early.status_code == 409 and "in progress" in early.json()["detail"]
    clock.lease_runs_out()
    retry = post_sign(app, body, "crash-1")
    assert retry.status_code == 201, retry.text
    request_id = retry.json()["signRequestId"]
    assert post_sign(app, body, "crash-1").json() == retry.json()  # answered from now on
    assert app.count("sign_requests") == 1

    status = app.client.get(f"/v1/request/{request_id}", headers=bearer("business")).json()
    if tier == "auto":
        assert status["status"] == "EXECUTED" and status["result"]
    else:
        assert status["status"] == "PENDING"
        answer(app.client, people["t1"], request_id)
        answer(app.client, people["t2"], request_id)
        status = app.client.get(f"/v1/request/{request_id}", headers=bearer("business")).json()
        assert status["status"] == "EXECUTED"
    assert app.signatures(request_id) == 1
    signed = [e for e in app.state.hsm.audit_entries(1, 100_000)
              if e.event.get("op") in ("sign.now", "request.execute")
              and e.event.get("result") == "ok"]
    assert len(signed) == 1  # and nothing else was signed: no second request made


def test_a_create_cut_short_before_the_hsm_acted_is_done_once_by_the_retry(
        app: App, clock: Clock) -> None:
    body = sign_body(50, 2)
    crash(app, body, "crash-2", die_once(app.state.hsm, "sign_now", after=False))
    app.kill_and_restart()
    clock.lease_runs_out()
    retry = post_sign(app, body, "crash-2")
    assert retry.status_code == 201, retry.text
    assert app.signatures(retry.json()["signRequestId"]) == 1


def test_an_hsm_outage_mid_call_is_a_503_and_the_retry_adopts_the_signature(app: App) -> None:
    """The HSM signed but its answer was lost: the key is not forgotten (a new ticket
    would sign again) but handed straight to the retry."""
    body = sign_body(50, 3)
    die_once(app.state.hsm, "sign_now", TransportError("connection reset"))
    lost = post_sign(app, body, "outage-1")
    assert lost.status_code == 503, lost.text
    retry = post_sign(app, body, "outage-1")  # at once: the failed attempt ended its lease
    assert retry.status_code == 201, retry.text
    assert app.signatures(retry.json()["signRequestId"]) == 1
    assert app.count("sign_requests") == 1


def test_a_refusal_frees_the_key(app: App) -> None:
    body = sign_body(50, 4)
    body["signRequest"]["signKeyName"] = "no-such-key"
    assert post_sign(app, body, "refused-1").status_code == 404
    assert app.count("idempotency") == 0
    assert post_sign(app, body, "refused-1").status_code == 404  # not 409 "in progress"


def test_only_one_retry_takes_over(tmp_path: Path) -> None:
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}"))
    now = [1000.0]
    with sessions.begin() as s:
        s.add(IdempotencyRecord(principal="p", key="k", fingerprint=idempotency.body_fingerprint({}),
                                status_code=idempotency.IN_PROGRESS, response={},
                                ticket="t" * 32, lease_until=now[0] - 1))
    ticket, answer_ = idempotency._existing(sessions, "p", "k", idempotency.body_fingerprint({}),
                                            lambda: now[0])
    assert ticket == "t" * 32 and answer_ is None
    with pytest.raises(idempotency.Conflict, match="in progress"):  # the lease is renewed
        idempotency._existing(sessions, "p", "k", idempotency.body_fingerprint({}), lambda: now[0])
    now[0] += 2 * idempotency.LEASE_SECONDS  # ... until it too runs out
    ticket, answer_ = idempotency._existing(sessions, "p", "k", idempotency.body_fingerprint({}),
                                            lambda: now[0])
    assert ticket == "t" * 32 and answer_ is None


def test_a_reservation_from_before_tickets_is_never_redone(tmp_path: Path) -> None:
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}"))
    with sessions.begin() as s:
        s.add(IdempotencyRecord(principal="p", key="old", fingerprint=idempotency.body_fingerprint({}),
                                status_code=idempotency.IN_PROGRESS, response={}))
    calls: list[str | None] = []
    with pytest.raises(idempotency.Conflict, match="in progress"):
        idempotency.run_once(sessions, "p", "old", {},
                             lambda t: (calls.append(t), (201, {}))[1])
    assert calls == []
